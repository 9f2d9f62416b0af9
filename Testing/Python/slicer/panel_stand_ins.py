"""Stand-ins for what the Slicer application gives the panel and ``slicer-core`` lacks: ``qt``, ``ctk``,
``ScriptedLoadableModuleWidget``, ``parameterNodeWrapper`` and the GUI parts of ``slicer.util``.

They let a test drive the real widget code (``SDFSMISLib.slicer.widget``: setup, choosing nodes, Run,
progress, Cancel, the result) against real MRML. They are stand-ins, not Qt: a button is clicked by calling
its signal, a timer fires when the test says so, and nothing is drawn. What the real widgets do beyond the
calls below is not tested here; inside Slicer the module's self-test covers the panel.
"""

from __future__ import annotations

import contextlib
import sys
import types
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import slicer

ROOT = Path(__file__).resolve().parents[3]


class Signal:
    """A Qt signal: ``connect`` slots, ``emit`` calls them."""

    def __init__(self) -> None:
        self.slots: list[Callable] = []

    def connect(self, slot: Callable) -> None:
        self.slots.append(slot)

    def emit(self, *arguments: Any) -> None:
        for slot in list(self.slots):
            slot(*arguments)


class Widget:
    """Any widget of the .ui file: attributes as properties, signals created on first use."""

    _SIGNALS = ("clicked", "currentPathChanged", "currentIndexChanged", "itemChanged", "currentItemChanged")

    def __init__(self, name: str = "", cls: str = "") -> None:
        self.name, self.cls = name, cls
        self.enabled, self.visible, self.text, self.currentPath, self.wordWrap = True, True, "", "", False
        self.items: list[Any] = []
        self.current: Any = None
        self.progress = (0, 0, 0)
        for signal in self._SIGNALS:
            setattr(self, signal, Signal())

    # combo box
    def addItem(self, item: Any, data: Any = None) -> None:  # noqa: N802
        self.items.append(item if data is None else (item, data))
        if self.current is None:
            self.current = 0

    def findData(self, data: Any) -> int:  # noqa: N802
        return next((index for index, item in enumerate(self.items) if isinstance(item, tuple) and item[1] == data),
                    -1)

    def setCurrentIndex(self, index: int) -> None:  # noqa: N802
        self.current = index
        self.currentIndexChanged.emit(index)

    def setItemText(self, index: int, text: str) -> None:  # noqa: N802
        self.items[index] = (text, self.items[index][1])

    @property
    def currentData(self) -> Any:  # noqa: N802
        return self.items[self.current][1] if self.current is not None and self.items else None

    # list widget
    def clear(self) -> None:
        self.items, self.current = [], None

    def item(self, row: int) -> Any:
        return self.items[row]

    @property
    def count(self) -> int:
        return len(self.items)

    def currentItem(self) -> Any:  # noqa: N802
        return self.current if not isinstance(self.current, int) else None

    def setCurrentItem(self, item: Any) -> None:  # noqa: N802
        self.current = item

    def blockSignals(self, _blocked: bool) -> None:  # noqa: N802
        return None

    # progress bar
    def setRange(self, low: int, high: int) -> None:  # noqa: N802
        self.progress = (low, high, self.progress[2])

    def setValue(self, value: int) -> None:  # noqa: N802
        self.progress = (*self.progress[:2], value)

    def setMRMLScene(self, scene: Any) -> None:  # noqa: N802
        self.scene = scene


class ListItem:
    def __init__(self, text: str) -> None:
        self.text, self.payload, self.state, self.foreground = text, None, 0, None

    def setData(self, _role: int, value: Any) -> None:  # noqa: N802
        self.payload = value

    def data(self, _role: int) -> Any:
        return self.payload

    def flags(self) -> int:
        return 0

    def setFlags(self, _flags: int) -> None:  # noqa: N802
        return None

    def setCheckState(self, state: int) -> None:  # noqa: N802
        self.state = state

    def checkState(self) -> int:  # noqa: N802
        return self.state

    def setForeground(self, brush: Any) -> None:  # noqa: N802
        self.foreground = brush


class Timer:
    """A QTimer that fires only when the test calls :meth:`fire`."""

    def __init__(self) -> None:
        self.timeout, self.active, self.interval = Signal(), False, 0

    def setInterval(self, milliseconds: int) -> None:  # noqa: N802
        self.interval = milliseconds

    def setSingleShot(self, _single: bool) -> None:  # noqa: N802
        return None

    def start(self) -> None:
        self.active = True

    def stop(self) -> None:
        self.active = False

    def fire(self) -> None:
        self.timeout.emit()


class Settings:
    values: dict[str, Any] = {}

    def value(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def setValue(self, key: str, value: Any) -> None:  # noqa: N802
        self.values[key] = value


def label(text: str = "") -> Widget:
    widget = Widget("label", "QLabel")
    widget.text = text
    return widget


def _qt() -> types.ModuleType:
    qt = types.ModuleType("qt")
    qt.Qt = types.SimpleNamespace(UserRole=32, ItemIsUserCheckable=16, Checked=2, Unchecked=0)
    qt.QTimer, qt.QSettings, qt.QListWidgetItem = Timer, Settings, ListItem
    qt.QLabel = label
    qt.QBrush = qt.QColor = lambda *arguments: arguments
    qt.QMessageBox = types.SimpleNamespace(Warning=2, NoButton=0, AcceptRole=0, Close=0)
    qt.QFileDialog = types.SimpleNamespace(getSaveFileName=lambda *arguments: "")
    return qt


def _parameter_node_wrapper() -> types.ModuleType:
    """``@parameterNodeWrapper``: fields with their defaults, a ModifiedEvent on every change."""
    module = types.ModuleType("slicer.parameterNodeWrapper")
    module.Choice = module.WithinRange = lambda *arguments: arguments

    def parameterNodeWrapper(cls: type) -> type:  # noqa: N802
        defaults = {name: getattr(cls, name, [] if "list" in str(kind) else None)
                    for name, kind in cls.__annotations__.items()}

        class Wrapped:
            def __init__(self, node: Any) -> None:
                object.__setattr__(self, "node", node)
                object.__setattr__(self, "observers", [])
                for name, value in defaults.items():
                    object.__setattr__(self, name, list(value) if isinstance(value, list) else value)

            def __setattr__(self, name: str, value: Any) -> None:
                object.__setattr__(self, name, value)
                for _event, callback in list(self.observers):
                    callback(self, "ModifiedEvent")

            def AddObserver(self, event: Any, callback: Callable, _priority: float = 0.0) -> int:  # noqa: N802
                self.observers.append((event, callback))
                return len(self.observers)

            def RemoveObserver(self, tag: int) -> None:  # noqa: N802
                self.observers[tag - 1] = (None, lambda *arguments: None)

            def connectGui(self, _ui: Any) -> str:  # noqa: N802
                return "gui"

            def disconnectGui(self, _tag: str) -> None:  # noqa: N802
                return None

        Wrapped.__name__ = cls.__name__
        return Wrapped

    module.parameterNodeWrapper = parameterNodeWrapper
    return module


def _scripted_loadable_module() -> types.ModuleType:
    module = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent: Any = None) -> None:
            self.parent = parent or types.SimpleNamespace(isEntered=True)

        def setup(self) -> None:
            self.layout = Widget("layout")
            self.layout.added = []
            self.layout.addWidget = self.layout.added.append

        def resourcePath(self, relative: str) -> str:  # noqa: N802
            return str(ROOT / "Resources" / relative)

        def onReload(self) -> None:  # noqa: N802
            return None

    module.ScriptedLoadableModuleWidget = ScriptedLoadableModuleWidget
    return module


@contextlib.contextmanager
def slicer_application(monkeypatch: Any, major: int = 5, minor: int = 10) -> Iterator[types.SimpleNamespace]:
    """Install the stand-ins (and undo them); the returned namespace records dialogs and questions."""
    record = types.SimpleNamespace(errors=[], questions=[], answer=True)
    monkeypatch.setitem(sys.modules, "qt", _qt())
    monkeypatch.setitem(sys.modules, "ctk", types.SimpleNamespace(ctkPathLineEdit=types.SimpleNamespace(Dirs=1,
                                                                                                      Files=2)))
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", _scripted_loadable_module())
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", _parameter_node_wrapper())
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(majorVersion=major, minorVersion=minor,
                                                             testingEnabled=lambda: False), raising=False)
    names = {element.get("name"): element.get("class") for element in ET.parse(ROOT / "Resources" / "UI" /
                                                                             "SDFSMIS.ui").iter("widget")}
    ui = types.SimpleNamespace(**{name: Widget(name, cls) for name, cls in names.items()})
    monkeypatch.setattr(slicer.util, "loadUI", lambda _path: Widget("root"))
    monkeypatch.setattr(slicer.util, "childWidgetVariables", lambda _widget: ui)
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **options: record.errors.append((text, options)))
    monkeypatch.setattr(slicer.util, "confirmYesNoDisplay",
                        lambda text, **options: record.questions.append(text) or record.answer)
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda **options: None)
    monkeypatch.setattr(slicer.util, "WaitCursor", contextlib.nullcontext)
    for name in [name for name in sys.modules if name.startswith("SDFSMISLib.slicer.") and name.split(".")[-1] in (
            "widget", "model_section", "review_section", "parameters", "slots")]:
        monkeypatch.delitem(sys.modules, name)  # imported again against the stand-ins
    record.ui = ui
    yield record
