"""Errors a user can act on: each message names the problem and the fix."""


class SDFSMISError(Exception):
    """Base class of the errors SDFSMIS raises on purpose."""


class InputError(SDFSMISError, ValueError):
    """Bad input: a file, path, option or array the user gave. The CLI exits with status 2."""


class WeightsError(InputError):
    """A weight file that cannot be used: missing, corrupt, wrong model or wrong architecture."""
