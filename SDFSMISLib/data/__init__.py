"""Training and evaluation data: dataset folders, preprocessing, supervoxel pseudo-labels, episodes,
augmentation, and synthetic phantoms.
"""
