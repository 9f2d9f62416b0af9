"""What every button slot of the panel shares: a failure becomes a dialog, never a silent failure."""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable

from ..errors import InputError


def reportsErrors(slot: Callable) -> Callable:
    """A button slot whose failure becomes a dialog with the cause and the fix, never a silent failure.

    The signal's own arguments (``clicked(bool)``) are not passed on: the decorated slots take none.
    """
    @functools.wraps(slot)
    def wrapper(self, *_signalArguments):
        try:
            return slot(self)
        except Exception as error:  # noqa: BLE001 - the top of a GUI action: report everything
            self._error(error, "" if isinstance(error, InputError) else traceback.format_exc())
    return wrapper
