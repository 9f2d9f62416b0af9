"""The panel's model section: which weights Run will use, on which device and in which precision.

The paths, device and precision belong to this computer, not to a scene, so they live in the application
settings. A path is checked as soon as it is chosen (:func:`~SDFSMISLib.weights.model_files.layout_problem`),
before PyTorch is installed or the weights are read. A mixin of :class:`~SDFSMISLib.slicer.widget.SDFSMISWidget`:
it uses the widget's ``ui`` and ``logic``.
"""

from __future__ import annotations

import sys

import ctk
import qt

from ..devices import DTYPES
from ..weights.model_files import TORCH_SUFFIXES, layout_problem
from .dependencies import missing_requirements

SETTINGS_PREFIX = "SDFSMIS/"
#: Model weights: settings key (the model part) -> path widget (the order the user fills them in).
MODEL_PATH_WIDGETS = {"base_model": "baseModelPathLineEdit", "dino": "dinoPathLineEdit",
                      "checkpoint": "checkpointPathLineEdit"}
DEVICES = ("auto", "cuda", "cpu")


class ModelSection:
    """Set-up and status of the model, device and dependency controls."""

    def _setupModelControls(self) -> None:
        settings = qt.QSettings()
        self.ui.baseModelPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs  # a diffusers folder (a single file: type it)
        self.ui.dinoPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs
        self.ui.checkpointPathLineEdit.filters = ctk.ctkPathLineEdit.Files
        patterns = " ".join(f"*{suffix}" for suffix in (".safetensors", *TORCH_SUFFIXES))
        self.ui.checkpointPathLineEdit.nameFilters = [f"SD-FSMIS checkpoint ({patterns})"]
        for key, name in MODEL_PATH_WIDGETS.items():
            pathWidget = getattr(self.ui, name)
            pathWidget.currentPath = settings.value(SETTINGS_PREFIX + key, "")
            pathWidget.currentPathChanged.connect(lambda path, key=key: self.onModelPathChanged(key, path))
        for combo, choices, key in ((self.ui.deviceComboBox, DEVICES, "device"),
                                    (self.ui.precisionComboBox, DTYPES, "precision")):
            for choice in choices:
                combo.addItem(choice, choice)
            combo.setCurrentIndex(max(0, combo.findData(settings.value(SETTINGS_PREFIX + key, "auto"))))
            combo.currentIndexChanged.connect(lambda _index, combo=combo, key=key: qt.QSettings().setValue(
                SETTINGS_PREFIX + key, combo.currentData))
        self.updateModelStatus()

    def onModelPathChanged(self, key: str, path: str) -> None:
        qt.QSettings().setValue(SETTINGS_PREFIX + key, path)
        self.updateModelStatus()

    def updateModelStatus(self) -> None:
        """Say which model Run will use, and what is wrong with a chosen path (checked on selection)."""
        paths = {key: getattr(self.ui, name).currentPath.strip() for key, name in MODEL_PATH_WIDGETS.items()}
        problems = [layout_problem(key, path) for key, path in paths.items() if path]
        if not any(paths.values()):
            text = ("No model chosen: the bundled default model (small, trained on abdominal MR and phantoms; "
                    "research use, non-commercial licence CC BY-NC-SA 4.0).")
        elif problems and any(problems):
            text = "\n".join(problem for problem in problems if problem)
        elif not all(paths.values()):
            text = "Set all three: the checkpoint holds only the trained parts of SD-FSMIS."
        else:
            text = "SD-1.5 + DINOv2 + SD-FSMIS checkpoint: ready."
        self.ui.modelStatusLabel.text = text

    def updateDeviceInfo(self) -> None:
        """Name the GPU and its free memory next to the device choice. That needs torch, whose first import
        takes seconds: done here only once something (the first run) has imported it."""
        if "torch" not in sys.modules:
            self.ui.deviceInfoLabel.text = "The GPU and its free memory are shown after the first run."
            return
        described = self.logic.describeDevices()
        for index, choice in enumerate(DEVICES):
            self.ui.deviceComboBox.setItemText(index, f"{choice}: {described[choice]}")
        self.ui.deviceInfoLabel.text = described[self.ui.deviceComboBox.currentData]

    def updateDependencyStatus(self) -> None:
        missing = missing_requirements()
        self._dependenciesReady = not missing
        self.ui.dependenciesLabel.text = "" if not missing else (
            f"Not installed yet: {', '.join(line.split('>')[0] for line in missing)} (installed on first Run, "
            "after asking; PyTorch comes from the PyTorch extension).")
        self.ui.installDependenciesButton.visible = bool(missing)
        self.updateDeviceInfo()
