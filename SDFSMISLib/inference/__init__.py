"""From annotated support slices to a segmented query volume: options, slice prediction, propagation through a
volume, the query range, support assignment and cancellation.
"""
