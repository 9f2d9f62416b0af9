"""Write outputs all at once: a failure never leaves a half-written file behind.

Every file SDFSMIS writes for the user (volumes, segmentations, checkpoints, reports) goes
through :func:`atomic_output`: the writer fills a temporary file beside the target, which is
renamed over the target only when the writer has finished without an error. Folders written as
one unit (a model folder) go through :func:`atomic_folder` the same way.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def full_suffix(path: Path) -> str:
    """``.nii.gz`` for ``a.nii.gz``, ``.seg.nrrd`` for ``b.seg.nrrd``: writers pick their format by it."""
    return "".join(path.suffixes[-2:]) if path.suffix == ".gz" or path.name.endswith(".seg.nrrd") else path.suffix


@contextmanager
def atomic_output(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path with the same suffix in the same folder; rename it to ``path`` on success.

    The folder is created when missing. On an exception the temporary file is removed and the
    existing ``path`` (if any) is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part{full_suffix(path)}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@contextmanager
def atomic_folder(path: Path | str) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` (and whatever was there).

    On an exception the temporary folder is removed and an existing ``path`` is left untouched. The
    old folder is moved aside before the new one is renamed in, so ``path`` is never half old, half new.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    temporary, old = path.with_name(f".{path.name}.{tag}.part"), path.with_name(f".{path.name}.{tag}.old")
    temporary.mkdir()
    try:
        yield temporary
        if path.exists():
            os.replace(path, old)
        os.replace(temporary, path)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
