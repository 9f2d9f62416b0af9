"""The ``sdfsmis`` command line: one module per group of sub-commands, assembled in :mod:`SDFSMISLib.cli.main`.
"""
