"""Channel-coupling analysis of traced models (see edgeprune.graph.analyze)."""
