"""Architectures: the forward passes of the model families qfast runs (one module each)."""
