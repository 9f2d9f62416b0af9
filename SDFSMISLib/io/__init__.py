"""Files in and out: volumes, segmentation files, DICOM series and DICOM-SEG, label catalogues, placing masks on
a grid, and atomic writes.
"""
