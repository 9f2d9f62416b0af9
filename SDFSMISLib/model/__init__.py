"""The SD-FSMIS network: configuration, the UNet with support injection and query enhancement, the visual-to-
textual condition, and the VAE codec of images and masks.
"""
