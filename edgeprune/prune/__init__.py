"""Structured pruning: SeReNe and the L1-magnitude baseline."""
