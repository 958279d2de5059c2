"""Is the model right: numbers vs the traced modules, sherpa-ncnn decoding, agreement, doctor."""
