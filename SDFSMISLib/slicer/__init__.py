"""The 3D Slicer module: panel, parameter node, logic, MRML bridge, background worker and first-use dependencies.
Imports Slicer; not used by the command line.
"""
