"""Cancel a running propagation within a fraction of a second, from another thread.

Why: the progress callback of :func:`SDFSMISLib.inference.propagation.propagate` is called after each batch,
and one batch of SD-1.5 on a CPU takes tens of seconds, while a user who presses Cancel expects the run to
stop at once. :func:`cancel_inside` adds a forward pre-hook to every submodule of the network for the
duration of a run; each hook checks a :class:`~SDFSMISLib.progress.CancelToken`, which raises
:class:`~SDFSMISLib.progress.Cancelled` once it is set, so a run stops at the next layer (milliseconds to a
few hundred on a CPU), even in the middle of a batch. The hooks are removed when the run ends, so a model
used elsewhere pays nothing.

No torch at import: the Slicer module imports this before PyTorch is installed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ..progress import CancelToken


@contextlib.contextmanager
def cancel_inside(model: Any, token: CancelToken) -> Iterator[None]:
    """While inside, every forward call of any submodule of ``model`` (a ``torch.nn.Module``) first checks
    ``token``: a cancel lands at the next layer, not at the end of the batch."""
    def check(_module: Any, _inputs: Any) -> None:
        token.check()

    handles = [module.register_forward_pre_hook(check) for module in model.modules()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
