"""What a model is: one module per architecture (and their registry), metadata, tokens, checkpoints, graph-derived values."""
