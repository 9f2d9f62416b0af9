"""Render the module panel's layout from Resources/UI/SDFSMIS.ui with plain Qt, without 3D Slicer.

Why: the panel only runs inside Slicer, which cannot run on a headless build machine. Loading the
.ui with Qt's own loader checks that the file is valid Designer XML and shows its layout; Slicer's
widgets (qMRMLNodeComboBox, ctkCollapsibleButton, ...) are replaced by the Qt widgets they resemble,
and the lists are filled with example entries. The picture is a layout preview, not a screenshot of
Slicer. It needs PySide6 (not a dependency of SDFSMISLib):

    python -m venv /tmp/qt && /tmp/qt/bin/pip install PySide6-Essentials
    QT_QPA_PLATFORM=offscreen /tmp/qt/bin/python Documentation/render_panel_preview.py \
        Resources/UI/SDFSMIS.ui Documentation/panel-layout.png
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from PySide6.QtCore import QFile, QIODevice, Qt
from PySide6.QtUiTools import QUiLoader
from PySide6.QtWidgets import QApplication, QComboBox, QListWidget, QListWidgetItem, QPushButton, QWidget

#: Slicer widget class -> the Qt class drawn in its place.
STAND_INS = {"qMRMLNodeComboBox": "QComboBox", "ctkCollapsibleButton": "QGroupBox", "ctkPathLineEdit": "QLineEdit",
             "ctkSliderWidget": "QDoubleSpinBox", "qMRMLWidget": "QWidget"}
#: Example entries of the combo boxes and the segment list (the module fills them from the scene).
EXAMPLE_CHOICES = {"supportVolumeSelector": "Patient 101 (support)", "queryVolumeSelector": "Patient 102",
                   "supportSegmentationSelector": "Support annotations",
                   "outputSegmentationSelector": "Create new segmentation", "rangeModeComboBox": "automatic",
                   "deviceComboBox": "auto (CPU: no GPU found)", "precisionComboBox": "auto"}
EXAMPLE_SEGMENTS = ("liver: slices 9, 14, 19", "right kidney: slices 8, 11, 14", "left kidney: slices 8, 11, 14",
                    "spleen: slices 12, 15, 18")
WIDTH = 420


def with_stand_ins(ui_text: str) -> str:
    """The .ui text with Slicer's widget classes replaced by Qt classes and no custom-widget section."""
    text = re.sub(r"<customwidgets>.*?</customwidgets>", "", ui_text, flags=re.S)
    for slicer_class, qt_class in STAND_INS.items():
        text = text.replace(f'class="{slicer_class}"', f'class="{qt_class}"')
    return text


def load_panel(ui_path: Path) -> QWidget:
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / ui_path.name
        copy.write_text(with_stand_ins(ui_path.read_text()))
        ui_file = QFile(str(copy))
        ui_file.open(QIODevice.ReadOnly)
        panel = QUiLoader().load(ui_file)
        ui_file.close()
    if panel is None:
        raise SystemExit(f"{ui_path} could not be loaded by Qt")
    return panel


def fill_examples(panel: QWidget) -> None:
    for combo in panel.findChildren(QComboBox):
        combo.clear()
        combo.addItem(EXAMPLE_CHOICES.get(combo.objectName(), "-"))
    for listing in panel.findChildren(QListWidget):
        for text in EXAMPLE_SEGMENTS:
            item = QListWidgetItem(text)
            item.setCheckState(Qt.Checked)
            listing.addItem(item)
    for button in panel.findChildren(QPushButton):
        button.setEnabled(True)  # the module enables them once the inputs are chosen


def main(ui_path: str, png_path: str) -> None:
    app = QApplication([])
    panel = load_panel(Path(ui_path))
    fill_examples(panel)
    panel.resize(WIDTH, panel.sizeHint().height())
    panel.show()
    app.processEvents()
    if not panel.grab().save(png_path):
        raise SystemExit(f"could not write {png_path}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
