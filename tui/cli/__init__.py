"""The Rich command line: one module per command, exit codes in a leaf module."""
