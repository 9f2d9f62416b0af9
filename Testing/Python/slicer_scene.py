"""A headless MRML scene set up as the Slicer application sets up its own, for tests on ``slicer-core``.

``slicer-core`` (Slicer's Qt-free libraries) gives real scenes and nodes but no application: nothing registers
the segmentation converters, the default colour tables, ``slicer.mrmlScene`` or ``slicer.modules``. This does
it by hand (as ``KitwareMedical/trame-slicer``'s tests do) and undoes it afterwards, so the module logic and
code written for the application (``slicer.util`` helpers) run unchanged.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import slicer


@contextlib.contextmanager
def headless_scene() -> Iterator[slicer.vtkMRMLScene]:
    """A fresh scene with the segmentations, volumes and colours logic registered, as ``slicer.mrmlScene``."""
    scene = slicer.vtkMRMLScene()
    colors = slicer.vtkMRMLColorLogic()  # default colour tables: labelmap display nodes look them up
    colors.SetMRMLScene(scene)
    segmentations = slicer.vtkSlicerSegmentationsModuleLogic()  # registers the representation converters
    segmentations.SetMRMLScene(scene)
    volumes = slicer.vtkSlicerVolumesLogic()
    volumes.SetMRMLScene(scene)
    saved = {name: getattr(slicer, name) for name in ("mrmlScene", "modules") if hasattr(slicer, name)}
    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace(segmentations=types.SimpleNamespace(logic=lambda: segmentations),
                                           volumes=types.SimpleNamespace(logic=lambda: volumes))
    try:
        yield scene
    finally:
        scene.Clear(True)
        for name in ("mrmlScene", "modules"):
            if name in saved:
                setattr(slicer, name, saved[name])
            else:
                delattr(slicer, name)
