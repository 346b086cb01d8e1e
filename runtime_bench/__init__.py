"""On-device latency harness: needs only numpy and one runtime (no torch, no edgeprune)."""
