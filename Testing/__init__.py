"""Test-only code shipped with the Slicer module: its self-test and the workflow it drives, and helpers of the
pytest suite (``Testing/Python``) such as the DICOM series writer. Never imported by the library."""
