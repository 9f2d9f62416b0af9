"""The panel's review and export section: register a corrected slice, export .seg.nrrd or DICOM-SEG.

A mixin of :class:`~SDFSMISLib.slicer.widget.SDFSMISWidget`: it uses the widget's ``ui``, ``logic`` and
parameter node. DICOM-SEG export installs highdicom the first time it is used (after asking).
"""

from __future__ import annotations

from collections.abc import Callable

import qt
import slicer

from .dependencies import ensure_dependencies
from .slots import reportsErrors


class ReviewSection:
    """Corrections and exports of the output segmentation."""

    @reportsErrors
    def onAddCorrection(self) -> None:
        """Register the query slice shown in the red view (after fixing it in the result) as corrected."""
        parameters = self._parameterNode
        sliceToRas = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode().GetSliceToRAS()
        centre = [sliceToRas.GetElement(row, 3) for row in range(3)]
        index = self.logic.sliceIndexAt(parameters.queryVolume, centre)
        self.logic.addCorrectedSlice(parameters.outputSegmentation, parameters.queryVolume, index)
        self.updateButtons()

    @reportsErrors
    def onExportSegNrrd(self) -> None:
        output = self._parameterNode.outputSegmentation
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), "Export segmentation",
                                              f"{output.GetName()}.seg.nrrd", "Segmentation (*.seg.nrrd)")
        if path:
            self._export(lambda: self.logic.exportSegNrrd(output, path))

    @reportsErrors
    def onExportDicomSeg(self) -> None:
        parameters = self._parameterNode
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), "Export DICOM-SEG",
                                              f"{parameters.outputSegmentation.GetName()}.dcm", "DICOM (*.dcm)")
        if path and ensure_dependencies(ask=True, extra="dicom-seg"):
            self._export(lambda: self.logic.exportDicomSeg(parameters.outputSegmentation, parameters.queryVolume,
                                                           path))

    def _export(self, write: Callable) -> None:
        with slicer.util.WaitCursor():
            written = write()
        self.ui.statusLabel.text = f"Wrote {written}"
