"""Graph rewrites for what sherpa-ncnn's runtime lacks: the driver and each family's rules."""
