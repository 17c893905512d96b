"""The runtime: configuration, the composition root, the scheduler, the CLI and channel adapters."""
