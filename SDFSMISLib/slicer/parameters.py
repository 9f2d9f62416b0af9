"""The module's typed parameter node: what the panel shows, saved with the scene.

Only scene state lives here (which volumes and segments, range, advanced options). The model paths, device and
precision belong to the machine, not to the scene, so the widget keeps them in the application settings
instead (a scene opened on another computer must not point at this one's weight files).

Imported only inside 3D Slicer (``slicer.parameterNodeWrapper`` needs the application). Each field is bound
to the widget whose ``SlicerParameterName`` property names it in ``Resources/UI/SDFSMIS.ui``;
``test_slicer_ui.py`` checks that every name exists here with a type the widget can show.
"""

from __future__ import annotations

from typing import Annotated

import slicer
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

from ..inference.postprocess import Threshold
from .run_request import RANGE_MODES

MAX_SLICE_INDEX = 9999
MAX_BATCH_SIZE = 64


@parameterNodeWrapper
class SDFSMISParameterNode:
    """Inputs, query range and advanced options of one propagation.

    supportVolume / supportSegmentation / selectedSegmentIds: the annotated slices (the support volume may be
    the query itself). queryVolume: the volume to segment. outputSegmentation: where results go (none = a new
    segmentation). rangeMode: automatic, slices (firstSlice..lastSlice of the query) or roi (queryRoi).
    kShot, threshold, largestComponent, batchSize (0 = sized for the device): see PropagationOptions.
    """

    supportVolume: slicer.vtkMRMLScalarVolumeNode
    supportSegmentation: slicer.vtkMRMLSegmentationNode
    selectedSegmentIds: list[str]
    queryVolume: slicer.vtkMRMLScalarVolumeNode
    outputSegmentation: slicer.vtkMRMLSegmentationNode
    rangeMode: Annotated[str, Choice(list(RANGE_MODES))] = "automatic"
    firstSlice: Annotated[int, WithinRange(0, MAX_SLICE_INDEX)] = 0
    lastSlice: Annotated[int, WithinRange(0, MAX_SLICE_INDEX)] = 0
    queryRoi: slicer.vtkMRMLMarkupsROINode
    kShot: bool = False
    threshold: Annotated[float, WithinRange(0.0, 1.0)] = Threshold().value
    largestComponent: bool = True
    batchSize: Annotated[int, WithinRange(0, MAX_BATCH_SIZE)] = 0
