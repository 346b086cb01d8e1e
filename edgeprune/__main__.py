"""``python -m edgeprune`` is the same as the ``edgeprune`` console script."""

from edgeprune.cli import main

main()
