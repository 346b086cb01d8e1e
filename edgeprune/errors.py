"""User-facing errors.

Every problem a user can cause (a bad file, bad data, a wrong option, an unreachable device) is
raised as an :class:`EdgepruneError` carrying a one-line message *and* the fix. The CLI prints
``error: <message> (<hint>)`` and exits with status 2 without a traceback; ``--debug`` shows it.
Anything else that escapes is a bug in edgeprune and is shown with its traceback.
"""

from __future__ import annotations


class EdgepruneError(Exception):
    """A user-caused failure with a one-line explanation and a suggested fix."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class CheckpointError(EdgepruneError):
    """The model file cannot be loaded, or does not match the given architecture."""


class DataError(EdgepruneError):
    """The dataset is missing, malformed, or does not fit the model."""


class GraphError(EdgepruneError):
    """The model cannot be traced or contains an operation edgeprune cannot reason about."""


class VerificationError(EdgepruneError):
    """A transformation changed what the model computes beyond the allowed tolerance."""


class BitstreamError(EdgepruneError):
    """An NNR bitstream is corrupt, truncated or uses a feature this decoder does not support."""


class ExportError(EdgepruneError):
    """A model cannot be exported or the exported file does not run correctly."""


class DeviceError(EdgepruneError):
    """A target device is unreachable, misconfigured, or a benchmark on it failed."""


class OutputExistsError(EdgepruneError):
    """The output location already holds results and --force was not given."""


def first_line(exc: BaseException, limit: int = 240) -> str:
    """The first non-empty line of an exception message (library errors are often pages long)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:limit]
