"""Embedding models: the BLT (primary) and its entropy model; checkpoints; training."""
