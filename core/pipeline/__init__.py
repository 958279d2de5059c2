"""The run: configuration, plans, steps, the runner and its events, progress and manifests."""
