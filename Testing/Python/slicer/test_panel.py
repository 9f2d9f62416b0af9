"""The real panel code (``SDFSMISLib.slicer.widget``) driven as a user would, against real MRML, with stand-ins
for Qt and Slicer's widget classes (``panel_stand_ins``): set-up, choosing nodes, Run, progress, Cancel, the
result, an error dialog, and an unsupported Slicer version."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed")

from panel_stand_ins import slicer_application  # noqa: E402
from test_slicer_logic import painted, small_volume  # noqa: E402


def panel(app):  # noqa: ANN001, ANN201 - the widget, set up as Slicer does when the module is opened
    from SDFSMISLib.slicer.widget import SDFSMISWidget

    widget = SDFSMISWidget()
    widget.setup()
    widget.refreshTimer.fire()  # the segment list, as after the user painted
    return widget


def poll_until_done(widget) -> None:  # noqa: ANN001
    deadline = time.monotonic() + 120
    while widget._running is not None and time.monotonic() < deadline:
        widget.pollTimer.fire()
        time.sleep(0.1)


def test_run_from_the_panel_writes_the_result(mrml_scene, monkeypatch) -> None:
    with slicer_application(monkeypatch) as app:
        node, segmentation, ids = painted(mrml_scene, small_volume(slices=16), {1: [4, 8, 12]})
        widget = panel(app)
        parameters = widget._parameterNode
        assert parameters.queryVolume is node and parameters.supportSegmentation is segmentation
        [row] = app.ui.segmentsListWidget.items
        assert row.text.startswith("liver: slices 4, 8, 12") and row.checkState() == 2
        assert parameters.selectedSegmentIds == [ids[1]]
        assert app.ui.runButton.enabled and app.ui.runButton.text == "Run"
        app.ui.runButton.clicked.emit()
        assert app.ui.runButton.text == "Cancel" and not app.ui.inputsCollapsibleButton.enabled
        widget.pollTimer.fire()
        assert app.ui.statusLabel.text  # stage, slices and seconds while it runs
        poll_until_done(widget)
        assert not app.errors, app.errors
        assert app.ui.statusLabel.text.startswith("1 segment(s) propagated")
        output = parameters.outputSegmentation
        assert output is not None and output.GetSegmentation().GetNumberOfSegments() == 1
        assert app.ui.runButton.text == "Run" and app.ui.exportSegNrrdButton.enabled
        widget.cleanup()


def test_cancel_from_the_panel_writes_nothing(mrml_scene, monkeypatch) -> None:
    with slicer_application(monkeypatch) as app:
        painted(mrml_scene, small_volume(slices=16), {1: [4, 8, 12]})
        widget = panel(app)
        segmentations = mrml_scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
        app.ui.runButton.clicked.emit()
        app.ui.runButton.clicked.emit()  # the button reads Cancel now
        poll_until_done(widget)
        assert app.ui.statusLabel.text == "Cancelled; nothing was written."
        assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == segmentations
        widget.cleanup()


def test_a_failed_run_is_a_dialog_with_the_cause(mrml_scene, monkeypatch) -> None:
    with slicer_application(monkeypatch) as app:
        painted(mrml_scene, small_volume(slices=16), {1: [4, 8, 12]})
        widget = panel(app)
        parameters = widget._parameterNode
        parameters.rangeMode, parameters.firstSlice, parameters.lastSlice = "slices", 40, 50  # beyond the volume
        app.ui.runButton.clicked.emit()
        poll_until_done(widget)
        [(text, options)] = app.errors
        assert "outside the query's 16 slices" in text and options["windowTitle"] == "Cannot run SD-FSMIS"
        assert app.ui.runButton.text == "Run" and app.ui.statusLabel.text == "Failed."
        widget.cleanup()


def test_an_unsupported_slicer_shows_why_instead_of_the_panel(mrml_scene, monkeypatch) -> None:
    with slicer_application(monkeypatch, major=5, minor=8):
        from SDFSMISLib.slicer.widget import SDFSMISWidget

        widget = SDFSMISWidget()
        widget.setup()
        [label] = widget.layout.added
        assert "5.10 or newer (this is 5.8" in label.text and widget.logic is None
        widget.cleanup()  # nothing to clean, and no error


def test_leaving_the_module_stops_following_edits_and_a_closed_scene_keeps_the_module_name(
        mrml_scene, monkeypatch) -> None:
    with slicer_application(monkeypatch) as app:
        _node, segmentation, _ids = painted(mrml_scene, small_volume(slices=16), {1: [4, 8, 12]})
        widget = panel(app)
        assert widget._listedSegmentation is segmentation
        widget.exit()
        assert widget._listedSegmentation is None and not widget.refreshTimer.active
        module_node = widget._scriptedModuleNode()
        module_node.RemoveAttribute("ModuleName")  # what closing the scene does to the singleton
        widget.enter()
        assert module_node.GetAttribute("ModuleName") == "SDFSMIS"
        widget.cleanup()


def test_a_failing_poll_ends_the_run_with_a_dialog(mrml_scene, monkeypatch) -> None:
    with slicer_application(monkeypatch) as app:
        painted(mrml_scene, small_volume(slices=16), {1: [4, 8, 12]})
        widget = panel(app)
        app.ui.runButton.clicked.emit()
        prepared, handle = widget._running

        def broken() -> None:
            raise OSError("disk gone")

        monkeypatch.setattr(handle, "status", broken)
        widget.pollTimer.fire()
        assert widget._running is None and not widget.pollTimer.active
        assert app.errors and app.errors[0][1]["windowTitle"] == "File error" and app.ui.runButton.text == "Run"
        handle.cancel()
        widget.cleanup()
