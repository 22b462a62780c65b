"""The transformers engine: the numerical reference (CPU or GPU) and its forward hooks."""
