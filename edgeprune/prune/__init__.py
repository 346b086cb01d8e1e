"""Structured pruning: SeReNe and the L1-magnitude baseline.

Python API::

    from edgeprune.prune.pruner import PruneOptions, prune_model
    result = prune_model(model, example_input, data, PruneOptions(method="serene", epochs=40))
    # model now has whole channels at zero; edgeprune.simplify.simplify() removes them exactly

Modules: ``sensitivity`` (SeReNe neuron sensitivity), ``regularizer`` (the decoupled shrink),
``masks`` (one keep-mask per coupled channel group, on weights and optimizer state), ``schedule``
(plateau detector and threshold search), ``pruner`` (the run), ``train`` (the training loop, also
under torchrun/DDP), ``stage`` (the pipeline stage and the library call behind ``edgeprune prune``).
"""

from edgeprune.prune.train import TrainConfig, fit

__all__ = ["TrainConfig", "fit"]
