"""The Slicer panel without Qt: every widget the code uses exists in the .ui with a fitting class, every bound
widget names a parameter of the parameter node with a type it can show, and the module files import no heavy
package before the first-use installation."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
UI_FILE = ROOT / "Resources" / "UI" / "SDFSMIS.ui"
LIBRARY = ROOT / "SDFSMISLib"
#: Naming convention of the panel's widgets: name suffix -> class (longest suffix wins).
SUFFIX_CLASSES = {
    "CollapsibleButton": "ctkCollapsibleButton", "PathLineEdit": "ctkPathLineEdit",
    "SliderWidget": "ctkSliderWidget", "Selector": "qMRMLNodeComboBox", "ComboBox": "QComboBox",
    "SpinBox": "QSpinBox", "CheckBox": "QCheckBox", "ListWidget": "QListWidget", "ProgressBar": "QProgressBar",
    "Button": "QPushButton", "Label": "QLabel",
}
#: Attributes only some widget classes have: using one on another class is a bug Qt reports only at run time.
ATTRIBUTE_CLASSES = {
    "currentPath": {"ctkPathLineEdit"}, "currentPathChanged": {"ctkPathLineEdit"}, "filters": {"ctkPathLineEdit"},
    "nameFilters": {"ctkPathLineEdit"}, "currentData": {"QComboBox"}, "findData": {"QComboBox"},
    "setItemText": {"QComboBox"}, "setCurrentIndex": {"QComboBox"}, "currentIndexChanged": {"QComboBox"},
    "addItem": {"QComboBox", "QListWidget"}, "currentItem": {"QListWidget"}, "item": {"QListWidget"},
    "itemChanged": {"QListWidget"}, "currentItemChanged": {"QListWidget"}, "setCurrentItem": {"QListWidget"},
    "setRange": {"QProgressBar"}, "setValue": {"QProgressBar"}, "clicked": {"QPushButton"},
    "click": {"QPushButton"}, "wordWrap": {"QLabel"},
}
#: Parameter types -> widget classes the parameter node wrapper connects them to.
TYPE_CLASSES = {"bool": {"QCheckBox"}, "int": {"QSpinBox"}, "float": {"ctkSliderWidget", "QDoubleSpinBox"},
                "str": {"QComboBox"}}


def ui_widgets() -> dict[str, ET.Element]:
    return {widget.get("name"): widget for widget in ET.parse(UI_FILE).iter("widget")}


def widget_class(name: str) -> str:
    return ui_widgets()[name].get("class")


def ui_uses(path: Path, owner: str = "self") -> dict[str, set[str]]:
    """``{widget name: attributes used on it}`` for every ``<owner>.ui.<name>`` in a Python file, plus the names
    the code reaches with ``getattr(<owner>.ui, NAME)`` through a module-level dict of widget names."""
    tree = ast.parse(path.read_text())
    uses: dict[str, set[str]] = {}
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui"
                and ast.unparse(node.value.value) == owner):
            parent = parents.get(node)
            used = parent.attr if isinstance(parent, ast.Attribute) and parent.value is node else None
            uses.setdefault(node.attr, set()).update({used} - {None})
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict) and \
                all(isinstance(value, ast.Constant) and str(value.value).endswith(tuple(SUFFIX_CLASSES))
                    for value in node.value.values):
            for value in node.value.values:
                uses.setdefault(value.value, set())
    return uses


def parameter_fields() -> dict[str, str]:
    """``{field: annotation source}`` of the parameter node class."""
    tree = ast.parse((LIBRARY / "slicer" / "parameters.py").read_text(encoding="utf-8"))
    cls = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "SDFSMISParameterNode")
    return {item.target.id: ast.unparse(item.annotation) for item in cls.body if isinstance(item, ast.AnnAssign)}


def test_every_widget_the_code_uses_exists_with_a_fitting_class() -> None:
    widgets = ui_widgets()
    uses = {name: attributes for part in ("widget", "model_section", "review_section")
            for name, attributes in ui_uses(LIBRARY / "slicer" / f"{part}.py").items()}
    for name, attributes in {**uses, **ui_uses(ROOT / "Testing" / "slicer_self_test.py", "widget")}.items():
        assert name in widgets, f"{name} is used by the code but missing from {UI_FILE.name}"
        cls = widgets[name].get("class")
        for attribute in attributes & set(ATTRIBUTE_CLASSES):
            assert cls in ATTRIBUTE_CLASSES[attribute], f"{name} ({cls}) has no {attribute}"
    assert {"runButton", "progressBar", "statusLabel", "segmentsListWidget", "deviceComboBox",
            "checkpointPathLineEdit"} <= set(uses)  # the last one only through getattr(self.ui, ...)


def test_widget_names_follow_the_class_convention() -> None:
    for name, widget in ui_widgets().items():
        if name == "SDFSMIS":
            assert widget.get("class") == "qMRMLWidget"
            continue
        suffix = max((s for s in SUFFIX_CLASSES if name.lower().endswith(s.lower())), key=len, default=None)
        assert suffix is not None, f"{name}: no known suffix"
        assert widget.get("class") == SUFFIX_CLASSES[suffix], f"{name} should be a {SUFFIX_CLASSES[suffix]}"


def test_bound_widgets_name_parameters_of_a_type_they_can_show() -> None:
    fields = parameter_fields()
    bound = {}
    for name, widget in ui_widgets().items():
        prop = widget.find("property[@name='SlicerParameterName']/string")
        if prop is None:
            continue
        parameter, cls = prop.text, widget.get("class")
        assert parameter in fields, f"{name} is bound to {parameter}, which the parameter node lacks"
        assert parameter not in bound, f"{parameter} is bound to two widgets"
        bound[parameter] = name
        annotation = fields[parameter]
        if annotation.startswith("slicer.vtkMRML"):
            node_types = [s.text for s in widget.findall("property[@name='nodeTypes']/stringlist/string")]
            assert cls == "qMRMLNodeComboBox" and node_types == [annotation.removeprefix("slicer.")], name
        else:
            base = re.match(r"(?:Annotated\[)?(\w+)", annotation).group(1)
            assert cls in TYPE_CLASSES[base], f"{name} ({cls}) cannot show {annotation}"
            if cls == "QComboBox":
                assert "Choice(" in annotation, f"{parameter} needs a Choice annotation for its combo box"
    assert set(fields) - set(bound) == {"selectedSegmentIds"}  # the segment list is synchronised by hand


def test_node_selectors_get_the_scene_and_custom_widgets_are_declared() -> None:
    root = ET.parse(UI_FILE).getroot()
    receivers = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)" and c.findtext("sender") == "SDFSMIS"}
    selectors = {name for name, widget in ui_widgets().items() if widget.get("class") == "qMRMLNodeComboBox"}
    assert receivers == selectors
    declared = {c.findtext("class"): c for c in root.iter("customwidget")}
    used = {widget.get("class") for widget in ui_widgets().values() if not widget.get("class").startswith("Q")}
    assert set(declared) == used
    for container in ("ctkCollapsibleButton", "qMRMLWidget"):
        assert declared[container].findtext("container") == "1"


def test_range_and_output_defaults_read_well() -> None:
    widgets = ui_widgets()
    none_text = widgets["outputSegmentationSelector"].findtext("property[@name='noneDisplay']/string")
    assert none_text == "Create new segmentation"
    assert widgets["runButton"].findtext("property[@name='enabled']/bool") == "false"
    assert widgets["batchSizeSpinBox"].findtext("property[@name='specialValueText']/string") == "automatic"


def module_level_library_imports(path: Path) -> set[str]:
    """The library and Testing modules ``path`` imports at module level, as absolute names."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    imported = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if not isinstance(node, ast.ImportFrom):
            continue
        parts = [*package[:len(package) - node.level + 1], *([node.module] if node.module else [])] \
            if node.level else [node.module or ""]
        name = ".".join(parts)
        if name.startswith(("SDFSMISLib", "Testing")):
            imported |= {f"{name}.{alias.name}" for alias in node.names} if node.module is None else {name}
    return imported


def test_slicer_facing_modules_import_nothing_heavy_before_installation() -> None:
    """What Slicer imports when it discovers the module (the module file, the widget and what they import at
    module level) loads no torch, diffusers, numba or scikit-image: those are installed on first use."""
    pytest.importorskip("slicer", reason="slicer-core is not installed")
    qt_only = {"SDFSMISLib.slicer.widget", "SDFSMISLib.slicer.model_section", "SDFSMISLib.slicer.review_section",
               "SDFSMISLib.slicer.parameters", "SDFSMISLib.slicer.sample_data", "Testing.slicer_self_test"}
    modules = set()
    for path in (ROOT / "SDFSMIS.py", *(LIBRARY / "slicer" / f"{part}.py" for part in (
            "widget", "model_section", "review_section", "parameters", "sample_data")),
                 ROOT / "Testing" / "slicer_self_test.py"):
        modules |= module_level_library_imports(path)
    modules = sorted(modules - qt_only)
    code = ("import importlib, sys\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            "print(sorted(m for m in ('torch', 'diffusers', 'numba', 'skimage', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]", f"{modules} pull in {out.strip()}"
    assert "SDFSMISLib.slicer.logic" in modules and "SDFSMISLib.slicer.dependencies" in modules


def test_module_file_is_thin_and_cites_the_paper() -> None:
    source = (ROOT / "SDFSMIS.py").read_text()
    tree = ast.parse(source)
    classes = [node.name for node in tree.body if isinstance(node, ast.ClassDef)]
    assert classes == ["SDFSMIS"] and len(source.splitlines()) < 60
    assert "SD-FSMIS: Adapting Stable Diffusion for Few-Shot Medical Image Segmentation" in source
    assert {"SDFSMISLib.slicer.widget", "Testing.slicer_self_test"} <= module_level_library_imports(ROOT / "SDFSMIS.py")
