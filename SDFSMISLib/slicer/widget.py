"""The SDFSMIS module panel: annotate, run, review, correct and export.

Only 3D Slicer imports this file (it uses ``qt``, ``ctk`` and the application at module level). It holds no
segmentation logic: every action calls :class:`~SDFSMISLib.slicer.logic.SDFSMISLogic`, which CI tests against
real MRML. The panel's job is the GUI contract:

* inputs, range and advanced options are bound to a typed parameter node (saved with the scene); the model
  paths, device and precision are kept in the application settings (they belong to this computer);
* Run turns into Cancel; the propagation runs on the logic's worker thread while a ``QTimer`` polls its
  progress, so the GUI stays responsive during model loading and inference, and a cancel ends the run at the
  next network layer;
* every failure is a dialog naming the cause and the fix (GPU out of memory offers the CPU or batch size 1);
  existing segments are replaced only after the user confirms.
"""

from __future__ import annotations

import sys
import traceback

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from ..errors import InputError
from .dependencies import ensure_dependencies, slicer_version_problem
from .logic import SDFSMISLogic
from .run_request import RANGE_MODES, OverwriteRequired, RunRequest, compact_ranges
from .model_section import MODEL_PATH_WIDGETS, ModelSection
from .parameters import SDFSMISParameterNode
from .review_section import ReviewSection
from .slots import reportsErrors
from .worker import CANCELLED, FINISHED

MODULE_NAME = "SDFSMIS"
POLL_MILLISECONDS = 100
REFRESH_MILLISECONDS = 300  # segment edits arrive in bursts while painting: list them once it settles
_SEGMENT_EVENTS = ("SegmentAdded", "SegmentRemoved", "SegmentModified", "SourceRepresentationModified",
                   "MasterRepresentationModified")


class SDFSMISWidget(ModelSection, ReviewSection, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel (``Resources/UI/SDFSMIS.ui``) and its connections."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: SDFSMISLogic | None = None
        self._parameterNode: SDFSMISParameterNode | None = None
        self._parameterNodeGuiTag = None
        self._running = None  # (PreparedRun, JobHandle) while a propagation runs
        self._listedSegmentation = None  # the segmentation whose segment events are observed
        self._selectionSegmentation = None  # the segmentation the ticks were last initialised for
        self._dependenciesReady = False

    # ------------------------------------------------------------------------------------------------ set-up

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        problem = slicer_version_problem(slicer.app.majorVersion, slicer.app.minorVersion)
        if problem:  # the panel would fail later in ways a user cannot act on
            label = qt.QLabel(problem)
            label.wordWrap = True
            self.layout.addWidget(label)
            self.logic = None
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SDFSMIS.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SDFSMISLogic()

        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(POLL_MILLISECONDS)
        self.pollTimer.timeout.connect(self.onPoll)
        self.refreshTimer = qt.QTimer()
        self.refreshTimer.setSingleShot(True)
        self.refreshTimer.setInterval(REFRESH_MILLISECONDS)
        self.refreshTimer.timeout.connect(self.refreshSegments)

        self._setupModelControls()
        self.ui.segmentsListWidget.itemChanged.connect(self.onSegmentTicked)
        self.ui.segmentsListWidget.currentItemChanged.connect(lambda *_: self.updateButtons())
        self.ui.annotateButton.clicked.connect(self.onAnnotate)
        self.ui.runButton.clicked.connect(self.onRunButton)
        self.ui.installDependenciesButton.clicked.connect(self.onInstallDependencies)
        self.ui.addCorrectionButton.clicked.connect(self.onAddCorrection)
        self.ui.exportSegNrrdButton.clicked.connect(self.onExportSegNrrd)
        self.ui.exportDicomSegButton.clicked.connect(self.onExportDicomSeg)
        self.ui.progressBar.setValue(0)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.updateDependencyStatus()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Module reload or application exit: stop the run and the worker process, drop observers (once)."""
        if self.logic is None:
            return
        self.pollTimer.stop()
        if self._running is not None:
            self._running[1].cancel()
        self.logic.worker.shutdown(timeout=5)
        self.setParameterNode(None)
        self.refreshTimer.stop()
        self.removeObservers()

    def enter(self) -> None:
        if self.logic is not None:
            self.initializeParameterNode()

    def exit(self) -> None:
        """Leaving the module: stop following segment edits (a running propagation is still polled)."""
        if self.logic is None:
            return
        self.setParameterNode(None)  # also stops observing the segmentation
        self.refreshTimer.stop()

    def onReload(self) -> None:
        """Reload the library too: Slicer's Reload re-runs only the module file (as SlicerNNUnet does)."""
        for name in [name for name in sys.modules if name == "SDFSMISLib" or name.startswith("SDFSMISLib.")]:
            del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)

    def onSceneStartClose(self, caller, event) -> None:
        if self._running is not None:
            self._running[1].cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # ------------------------------------------------------------------------------------------ parameter node

    def initializeParameterNode(self) -> None:
        """Bind the scene's SDFSMIS parameter node (created on first use), with sensible first choices."""
        self.setParameterNode(SDFSMISParameterNode(self._scriptedModuleNode()))
        parameters = self._parameterNode
        if parameters.queryVolume is None:
            parameters.queryVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        if parameters.supportVolume is None:
            parameters.supportVolume = parameters.queryVolume
        if parameters.supportSegmentation is None:
            parameters.supportSegmentation = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSegmentationNode")

    @staticmethod
    def _scriptedModuleNode():
        """The scene's singleton ``vtkMRMLScriptedModuleNode`` of this module (what the logic template gives)."""
        node = slicer.mrmlScene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            node.SetSingletonTag(MODULE_NAME)
            node.SetName(slicer.mrmlScene.GenerateUniqueName(MODULE_NAME))
            node = slicer.mrmlScene.AddNode(node)
        node.SetAttribute("ModuleName", MODULE_NAME)  # every time: closing the scene resets the singleton's attributes
        return node

    def setParameterNode(self, parameterNode: SDFSMISParameterNode | None) -> None:
        if self._parameterNode is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = parameterNode
        if parameterNode is not None:
            self._parameterNodeGuiTag = parameterNode.connectGui(self.ui)
            self.addObserver(parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        parameters = self._parameterNode
        segmentation = parameters.supportSegmentation if parameters else None
        if segmentation is not self._listedSegmentation:
            self._observeSegmentation(segmentation)
        self.refreshTimer.start()
        self.updateButtons()

    def _observeSegmentation(self, segmentation) -> None:
        """Re-list the segments whenever the user paints, adds or removes one."""
        events = [getattr(slicer.vtkSegmentation, name) for name in _SEGMENT_EVENTS
                  if hasattr(slicer.vtkSegmentation, name)]
        if self._listedSegmentation is not None:
            for event in events:
                self.removeObserver(self._listedSegmentation, event, self.onSegmentationEdited)
        self._listedSegmentation = segmentation
        if segmentation is not None:
            for event in events:
                self.addObserver(segmentation, event, self.onSegmentationEdited)

    def onSegmentationEdited(self, caller=None, event=None) -> None:
        self.refreshTimer.start()

    # ---------------------------------------------------------------------------------------------- segments

    def refreshSegments(self) -> None:
        """List the support segments with their annotated and suggested slices; keep the user's ticks."""
        parameters = self._parameterNode
        listWidget = self.ui.segmentsListWidget
        current = listWidget.currentItem().data(qt.Qt.UserRole) if listWidget.currentItem() else None
        segmentation = parameters.supportSegmentation if parameters else None
        rows, warnings = [], []
        if segmentation is None:
            warnings.append("Select or create the support segmentation, then paint each organ on a slice near "
                            "its middle (Annotate in Segment Editor).")
        else:
            try:
                rows = self._segmentRows(segmentation, parameters.supportVolume or parameters.queryVolume)
            except InputError as error:
                warnings.append(str(error))
            if not rows:
                warnings.append("The support segmentation has no segment yet: add one per organ in the Segment "
                                "Editor (Annotate in Segment Editor).")
            if not self._dependenciesReady:
                warnings.append("Annotated slices are listed once the dependencies are installed.")
        selected = self._initialSelection(segmentation, rows)
        listWidget.blockSignals(True)
        listWidget.clear()
        for segmentId, line, unannotated in rows:
            item = qt.QListWidgetItem(line)
            item.setData(qt.Qt.UserRole, segmentId)
            item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
            item.setCheckState(qt.Qt.Checked if segmentId in selected else qt.Qt.Unchecked)
            if unannotated:
                item.setForeground(qt.QBrush(qt.QColor("darkred")))
                warnings.append(f"{line.split(':')[0]} has no annotated slice: paint it, or untick it.")
            listWidget.addItem(item)
            if segmentId == current:
                listWidget.setCurrentItem(item)
        listWidget.blockSignals(False)
        self.ui.annotationStatusLabel.text = "\n".join(warnings)
        self.updateButtons()

    def _segmentRows(self, segmentation, volume) -> list[tuple[str, str, bool]]:
        """(segment ID, line, unannotated) per segment; just the names before the dependencies are installed."""
        if self._dependenciesReady and volume is not None:
            return [(annotation.segmentId, annotation.summary(), not annotation.slices)
                    for annotation in self.logic.segmentAnnotations(segmentation, volume)]
        segments = segmentation.GetSegmentation()
        return [(segments.GetNthSegmentID(n), segments.GetNthSegment(n).GetName(), False)
                for n in range(segments.GetNumberOfSegments())]

    def _initialSelection(self, segmentation, rows: list[tuple[str, str, bool]]) -> set[str]:
        """The ticked segments: the parameter node's, or every annotated one for a newly chosen segmentation."""
        present = {segmentId for segmentId, _line, _unannotated in rows}
        selected = set(self._parameterNode.selectedSegmentIds) & present if self._parameterNode else set()
        if not selected and segmentation is not self._selectionSegmentation and self._parameterNode:
            selected = {segmentId for segmentId, _line, unannotated in rows if not unannotated}
            self._selectionSegmentation = segmentation
            self._parameterNode.selectedSegmentIds = sorted(selected)
        return selected

    def onSegmentTicked(self, item=None) -> None:
        listWidget = self.ui.segmentsListWidget
        self._parameterNode.selectedSegmentIds = [
            listWidget.item(row).data(qt.Qt.UserRole) for row in range(listWidget.count)
            if listWidget.item(row).checkState() == qt.Qt.Checked]

    @reportsErrors
    def onAnnotate(self) -> None:
        """Open the Segment Editor on the support nodes and the chosen segment, at its next suggested slice."""
        parameters = self._parameterNode
        volume = parameters.supportVolume or parameters.queryVolume
        if parameters.supportSegmentation is None or volume is None:
            raise InputError("select the support volume and the support segmentation first")
        item = self.ui.segmentsListWidget.currentItem()
        segmentId = item.data(qt.Qt.UserRole) if item else None
        target = None
        if segmentId and self._dependenciesReady:
            annotation = self.logic.segmentAnnotation(parameters.supportSegmentation, segmentId, volume)
            target = next(iter(annotation.missing.values()), None)
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(parameters.supportSegmentation)
        setSource = getattr(editor, "setSourceVolumeNode", None) or editor.setMasterVolumeNode  # Slicer < 5.2
        setSource(volume)
        if segmentId:
            editor.setCurrentSegmentID(segmentId)
        slicer.util.setSliceViewerLayers(background=volume, fit=True)
        if target is not None:
            slicer.vtkMRMLSliceNode.JumpAllSlices(slicer.mrmlScene, *self.logic.sliceCentreRas(volume, target),
                                                  slicer.vtkMRMLSliceNode.CenteredJumpSlice)

    # ------------------------------------------------------------------------------------------------- model

    @reportsErrors
    def onInstallDependencies(self) -> bool:
        with slicer.util.WaitCursor():
            installed = ensure_dependencies(ask=True)
        self.updateDependencyStatus()
        self.refreshSegments()
        return installed

    # --------------------------------------------------------------------------------------------------- run

    def updateButtons(self) -> None:
        parameters = self._parameterNode
        running = self._running is not None
        ready = parameters is not None and parameters.queryVolume is not None and \
            parameters.supportSegmentation is not None and bool(parameters.selectedSegmentIds)
        self.ui.runButton.enabled = running or ready
        self.ui.runButton.text = "Cancel" if running else "Run"
        for section in (self.ui.inputsCollapsibleButton, self.ui.rangeCollapsibleButton,
                        self.ui.modelCollapsibleButton, self.ui.advancedCollapsibleButton,
                        self.ui.resultsCollapsibleButton):
            section.enabled = not running
        mode = parameters.rangeMode if parameters else RANGE_MODES[0]
        for widget in (self.ui.firstSliceLabel, self.ui.firstSliceSpinBox, self.ui.lastSliceLabel,
                       self.ui.lastSliceSpinBox):
            widget.visible = mode == "slices"
        self.ui.queryRoiLabel.visible = self.ui.queryRoiSelector.visible = mode == "roi"
        output = parameters.outputSegmentation if parameters else None
        corrected = self.logic.correctedSlices(output) if self.logic else ()
        self.ui.correctionsLabel.text = "" if not corrected else (
            f"Corrected slices: {compact_ranges(corrected)}. Run keeps them and re-propagates around them.")
        for button in (self.ui.addCorrectionButton, self.ui.exportSegNrrdButton, self.ui.exportDicomSegButton):
            button.enabled = output is not None

    def runRequest(self, overwrite: bool = False, device: str | None = None) -> RunRequest:
        parameters = self._parameterNode
        paths = {key: getattr(self.ui, name).currentPath for key, name in MODEL_PATH_WIDGETS.items()}
        model = self.logic.modelRequest(paths["checkpoint"], paths["base_model"], paths["dino"],
                                        device or self.ui.deviceComboBox.currentData,
                                        self.ui.precisionComboBox.currentData)
        return RunRequest(parameters.supportVolume, parameters.supportSegmentation,
                          list(parameters.selectedSegmentIds), parameters.queryVolume, model,
                          parameters.outputSegmentation, parameters.rangeMode, parameters.firstSlice,
                          parameters.lastSlice, parameters.queryRoi, parameters.kShot, parameters.threshold,
                          parameters.largestComponent, parameters.batchSize, overwrite)

    @reportsErrors
    def onRunButton(self) -> None:
        """Run, or cancel the run in progress."""
        if self._running is not None:
            self._running[1].cancel()
            self.ui.statusLabel.text = "Cancelling..."
            return
        if not self._dependenciesReady and not self.onInstallDependencies():
            return
        prepared = self._prepare()
        if prepared is None:
            return
        self._running = (prepared, self.logic.startRun(prepared))
        self.ui.statusLabel.text = "Starting..."
        self.updateButtons()
        self.pollTimer.start()

    def _prepare(self):
        """The prepared run, after asking before replacing existing segments (``None`` if the user declines)."""
        try:
            return self.logic.prepareRun(self.runRequest())
        except OverwriteRequired as conflict:
            question = (f"The output segmentation already has {', '.join(conflict.names)}. Replace "
                        f"{'it' if len(conflict.names) == 1 else 'them'} with the new result?")
            corrected = self.logic.correctedSlices(self._parameterNode.outputSegmentation)
            if corrected:
                question += f"\n\nCorrected slices {compact_ranges(corrected)} are kept exactly as you corrected them."
            if not slicer.util.confirmYesNoDisplay(question, windowTitle="Replace segments?"):
                return None
            return self.logic.prepareRun(self.runRequest(overwrite=True))

    def onPoll(self) -> None:
        """Show the worker's progress; when it has ended, write the result or report why not. A failure of
        the poll itself ends the run with a dialog, never a timer raising every 100 ms."""
        try:
            self._poll()
        except Exception as error:  # noqa: BLE001 - the top of a timer slot: report, stop, reset
            self.pollTimer.stop()
            self._running = None
            self.ui.progressBar.setRange(0, 1)
            self._error(error, traceback.format_exc())
            self.updateButtons()

    def _poll(self) -> None:
        prepared, handle = self._running
        status = handle.status()
        if status.total:
            self.ui.progressBar.setRange(0, status.total)
            self.ui.progressBar.setValue(status.done)
            detail = f"{status.done}/{status.total} slice steps"
        else:
            self.ui.progressBar.setRange(0, 0)  # busy: loading the model, preparing the volumes
            detail = ""
        self.ui.statusLabel.text = f"{status.stage.capitalize()} {detail} ({status.seconds:.0f} s)"
        if handle.ended:
            self.pollTimer.stop()
            self._running = None
            self.ui.progressBar.setRange(0, 1)
            self.ui.progressBar.setValue(0)
            self._finish(prepared, handle)
            self.updateButtons()

    def _finish(self, prepared, handle) -> None:
        stage = handle.status().stage
        if stage == CANCELLED:
            self.ui.statusLabel.text = "Cancelled; nothing was written."
            return
        if stage != FINISHED:
            self.ui.statusLabel.text = "Failed."
            if handle.out_of_memory:
                return self._offerSmallerRun(handle)
            return self._error(handle.error, "" if isinstance(handle.error, InputError) else handle.details)
        try:
            summary = self.logic.finishRun(prepared, handle)
        except Exception as error:  # noqa: BLE001 - writing the result failed: say why, never silently
            return self._error(error, "" if isinstance(error, InputError) else traceback.format_exc())
        self._parameterNode.outputSegmentation = summary.segmentation
        summary.segmentation.CreateDefaultDisplayNodes()
        slicer.util.setSliceViewerLayers(background=prepared.request.queryVolume)
        self.ui.statusLabel.text = summary.text()
        self.updateDeviceInfo()

    def _offerSmallerRun(self, handle) -> None:
        """GPU out of memory: offer the CPU or batch size 1, then run again."""
        title, text = self.logic.describeError(handle.error, outOfMemory=True)
        box = qt.QMessageBox(qt.QMessageBox.Warning, title, text, qt.QMessageBox.NoButton, slicer.util.mainWindow())
        onCpu = box.addButton("Run on CPU", qt.QMessageBox.AcceptRole)
        smaller = box.addButton("Batch size 1", qt.QMessageBox.AcceptRole)
        box.addButton(qt.QMessageBox.Close)
        box.setDetailedText(handle.details)
        box.exec_()
        if box.clickedButton() == onCpu:
            self.ui.deviceComboBox.setCurrentIndex(self.ui.deviceComboBox.findData("cpu"))
        elif box.clickedButton() == smaller:
            self._parameterNode.batchSize = 1
        else:
            return
        self.onRunButton()

    def _error(self, error: BaseException, details: str = "") -> None:
        title, text = self.logic.describeError(error)
        extra = {"detailedText": details} if details else {}
        slicer.util.errorDisplay(text, windowTitle=title, **extra)
