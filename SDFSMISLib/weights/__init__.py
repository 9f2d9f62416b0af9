"""Weights on disk: weight files, base models (SD-1.5 + DINOv2 or the tiny preset), SD-FSMIS checkpoints, the
released checkpoint format, downloads, the bundled model, and the one entry point that loads a model for
prediction (:func:`SDFSMISLib.weights.loading.load_model`).
"""
