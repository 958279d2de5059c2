"""pnnx: which binary, running it with its graph checked, and the reader of its *.pnnx.param graph."""
