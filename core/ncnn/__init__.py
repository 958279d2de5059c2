"""ncnn itself: the lossless .param model, layer requirements, the runtime's layer list, child processes."""
