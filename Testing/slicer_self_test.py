"""SDFSMISTest: the tests a 3D Slicer user runs ("Reload and Test", or Slicer's ctest of the extension).

The workflow test runs :func:`Testing.slicer_workflow.run_demo_workflow`, the same code CI runs against
``slicer-core``, here inside the application on its real scene. The panel test then drives the module widget
itself (the parts CI cannot run: Qt, the parameter node wrapper, the timer that polls the worker).
"""

from __future__ import annotations

import time

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

PANEL_TIMEOUT_SECONDS = 600


class SDFSMISTest(ScriptedLoadableModuleTest):
    """Whole workflow on the bundled phantoms, through the logic and through the panel."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_SDFSMISWorkflow()
        self.setUp()
        self.test_SDFSMISPanel()

    def _requireDependencies(self) -> None:
        from SDFSMISLib.errors import InputError
        from SDFSMISLib.slicer.dependencies import ensure_dependencies

        try:
            installed = ensure_dependencies(ask=True)
        except InputError as error:  # e.g. testing mode, where Slicer installs nothing
            self.skipTest(f"the SD-FSMIS dependencies are not installed: {error}")
        if not installed:
            self.skipTest("the SD-FSMIS dependencies are not installed (installation declined)")

    def test_SDFSMISWorkflow(self) -> None:
        """Annotated phantom -> run -> no silent overwrite -> correction run -> cancel -> .seg.nrrd export."""
        self._requireDependencies()
        from Testing.slicer_workflow import run_demo_workflow

        self.delayDisplay("Running the SD-FSMIS workflow on the bundled phantoms")
        report = run_demo_workflow(slicer.mrmlScene, log=self.delayDisplay)
        self.delayDisplay(f"Workflow passed: Dice {report.dice}, after correction {report.dice_after_correction}")

    def test_SDFSMISPanel(self) -> None:
        """The panel runs the bundled model on the demo scene and writes the result into a new segmentation."""
        self._requireDependencies()
        from Testing.slicer_workflow import load_demo_scene

        demo = load_demo_scene(slicer.mrmlScene)
        slicer.util.selectModule("SDFSMIS")
        widget = slicer.modules.sdfsmis.widgetRepresentation().self()
        parameters = widget._parameterNode
        parameters.supportVolume, parameters.queryVolume = demo.support, demo.query
        parameters.supportSegmentation = demo.supportSegmentation
        parameters.selectedSegmentIds = list(demo.segmentIds.values())
        parameters.outputSegmentation = None
        for pathWidget in (widget.ui.baseModelPathLineEdit, widget.ui.dinoPathLineEdit,
                           widget.ui.checkpointPathLineEdit):
            pathWidget.currentPath = ""  # the bundled model
        widget.ui.deviceComboBox.setCurrentIndex(widget.ui.deviceComboBox.findData("cpu"))
        self.assertTrue(widget.ui.runButton.enabled)
        widget.ui.runButton.click()
        self.assertEqual(widget.ui.runButton.text, "Cancel")
        deadline = time.monotonic() + PANEL_TIMEOUT_SECONDS
        while widget._running is not None and time.monotonic() < deadline:
            slicer.app.processEvents()
            time.sleep(0.02)
        self.assertIsNone(widget._running, "the run did not end in time")
        self.assertEqual(widget.ui.runButton.text, "Run")
        output = parameters.outputSegmentation
        self.assertIsNotNone(output, widget.ui.statusLabel.text)
        self.assertEqual(output.GetSegmentation().GetNumberOfSegments(), len(demo.segmentIds))
        self.delayDisplay(f"Panel run passed: {widget.ui.statusLabel.text}")
