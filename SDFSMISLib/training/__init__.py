"""Self-supervised SD-FSMIS training: the training loop, its volumes and validation, and the tiny base model for
tests and the bundled model.
"""
