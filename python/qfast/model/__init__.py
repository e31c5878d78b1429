"""The model level: checkpoints in, forward passes, evaluation (``qfast.load_model``, ...)."""
