"""Function-preserving simplification of pruned models: BN folding, constant folding, channel removal."""
