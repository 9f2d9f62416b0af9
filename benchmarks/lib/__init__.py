"""Code of the benchmark scripts in ``benchmarks/``: never imported by the product.

The scripts run as ``python benchmarks/NAME.py`` from the repository root, which puts this folder's parent on
``sys.path``. Like the ``sdfsmis`` command, a benchmark asks PyTorch for transparent huge pages before torch
loads (:func:`SDFSMISLib.cli.main.request_huge_pages`), so it measures what users run.
"""

from SDFSMISLib.cli.main import request_huge_pages

#: Whether torch was loaded before the request (then it had no effect); the reports record it.
TORCH_LOADED_FIRST = request_huge_pages()
