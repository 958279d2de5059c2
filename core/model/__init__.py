"""What a model is: one spec per architecture, metadata, tokens, checkpoints, graph-derived values."""
