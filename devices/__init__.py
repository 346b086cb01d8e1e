"""Target device profiles (TOML), installed as the package edgeprune.profiles; see edgeprune.devices."""
