"""Where things sit in the Slicer scene: the study of a node, the DICOM files behind a volume, and the
transforms above a node. MRML calls only, for the logic (:mod:`SDFSMISLib.slicer.logic`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import slicer
import vtk

from ..errors import InputError


def place_in_study(node: Any, reference: Any) -> None:
    """Put ``node`` in the subject-hierarchy study of ``reference`` (or beside it when it is in none)."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(node.GetScene())
    reference_item = hierarchy.GetItemByDataNode(reference)
    if not reference_item:
        return
    study = hierarchy.GetItemAncestorAtLevel(reference_item, slicer.vtkMRMLSubjectHierarchyConstants
                                             .GetDICOMLevelStudy())
    parent = study or hierarchy.GetItemParent(reference_item)
    item = hierarchy.GetItemByDataNode(node) or hierarchy.CreateItem(parent, node)
    hierarchy.SetItemParent(item, parent)


def dicom_source_files(volumeNode: Any, fileForInstance: Callable[[str], str] | None = None) -> list[Path]:
    """The DICOM files ``volumeNode`` was loaded from (Slicer's ``DICOM.instanceUIDs`` attribute)."""
    uids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
    if not uids:
        raise InputError(f"{volumeNode.GetName()} was not loaded from the DICOM database, so a DICOM-SEG has no "
                         "series to reference; load the series with the DICOM module, or export .seg.nrrd")
    fileForInstance = fileForInstance or slicer.dicomDatabase.fileForInstance
    files = [Path(fileForInstance(uid)) for uid in uids]
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        raise InputError(f"{len(missing)} DICOM file(s) of {volumeNode.GetName()} are missing (e.g. {missing[0]}); "
                         "re-import the series into the DICOM database")
    return files


def local_to_world(node: Any) -> np.ndarray:
    """4x4 from the node's local RAS to world RAS (its parent transforms; identity when none)."""
    matrix = vtk.vtkMatrix4x4()
    parent = node.GetParentTransformNode()
    if parent is not None and not slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(parent, None, matrix):
        raise InputError(f"{node.GetName()} is under a non-linear transform; harden it first (Data module)")
    return slicer.util.arrayFromVTKMatrix(matrix)
