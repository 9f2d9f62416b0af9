"""First-use installation: what is listed, how it is checked, and the order and tools used inside Slicer
(the Slicer functions are replaced by stand-ins that record what they are asked)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

from SDFSMISLib.errors import InputError
from SDFSMISLib.slicer import dependencies as dependencies

ROOT = Path(__file__).resolve().parents[3]
#: pyproject dependencies the Slicer module does not install, and why.
NOT_INSTALLED_IN_SLICER = {
    "torch": "installed by the PyTorch extension",
    "numpy": "shipped with Slicer", "scipy": "shipped with Slicer", "SimpleITK": "shipped with Slicer",
    "matplotlib": "only the command line's overlays use it",
    "psutil": "only training on Windows (peak memory) uses it",
}


def pyproject_requirements() -> dict[str, str]:
    lines = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {Requirement(line).name: line for line in lines}


def test_requirements_file_follows_pyproject() -> None:
    project = pyproject_requirements()
    listed = {Requirement(line).name: line for line in dependencies.requirements()}
    for name, line in listed.items():
        assert project.get(name) == line, f"{line} differs from pyproject.toml ({project.get(name)})"
    assert set(project) - set(listed) == set(NOT_INSTALLED_IN_SLICER)
    assert project["torch"] == dependencies.TORCH_REQUIREMENT


def test_missing_requirements_reads_installed_metadata() -> None:
    wanted = ["numpy>=1.0", "surely-not-an-installed-package>=1", "numpy>=999"]
    assert dependencies.missing_requirements(wanted) == wanted[1:]
    assert dependencies.missing_requirements() == []  # this environment has everything


@pytest.fixture
def slicer_stand_ins(monkeypatch):  # noqa: ANN201
    """PyTorchUtils and Slicer's pip functions as recorders; packages 'install' when asked for."""
    slicer = pytest.importorskip("slicer", reason="slicer-core provides slicer.util")
    installed: set[str] = set()
    calls: list[tuple] = []

    def missing(wanted=None):  # noqa: ANN001, ANN202
        lines = wanted if wanted is not None else [dependencies.TORCH_REQUIREMENT, *dependencies.requirements()]
        return [line for line in lines if Requirement(line).name not in installed]

    class PyTorchUtilsLogic:
        def installTorch(self, askConfirmation, torchVersionRequirement):  # noqa: ANN001, ANN201, N802, N803
            calls.append(("installTorch", askConfirmation, torchVersionRequirement))
            if state["torch_accepted"]:
                installed.add("torch")
                return object()
            return None

    def pip_ensure(requirements, prompt_install, requester):  # noqa: ANN001, ANN202
        calls.append(("pip_ensure", [str(r) for r in requirements], prompt_install, requester))
        installed.update(r.name for r in requirements)

    def pip_install(requirements):  # noqa: ANN001, ANN202
        calls.append(("pip_install", requirements))
        installed.update(Requirement(line).name for line in requirements.split())

    state = {"torch_accepted": True, "confirm": True}
    monkeypatch.setattr(dependencies, "missing_requirements", missing)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic))
    monkeypatch.setitem(sys.modules, "slicer.packaging", types.SimpleNamespace(pip_ensure=pip_ensure))
    monkeypatch.setitem(sys.modules, "slicer.pydeps", None)
    monkeypatch.setattr(slicer.util, "pip_install", pip_install)
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda *args, **kwargs: state["confirm"])
    return types.SimpleNamespace(calls=calls, state=state, installed=installed)


def test_torch_comes_from_the_pytorch_extension_before_the_rest(slicer_stand_ins) -> None:
    assert dependencies.ensure_dependencies(ask=True)
    first, second = slicer_stand_ins.calls
    assert first == ("installTorch", True, ">=2.4")
    assert second[0] == "pip_ensure" and second[1] == dependencies.requirements() and second[3] == "SDFSMIS"


def test_declining_torch_installs_nothing_else(slicer_stand_ins) -> None:
    slicer_stand_ins.state["torch_accepted"] = False
    assert not dependencies.ensure_dependencies(ask=True)
    assert [call[0] for call in slicer_stand_ins.calls] == ["installTorch"]


def test_older_slicer_asks_then_uses_pip_install(slicer_stand_ins, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "slicer.packaging", types.SimpleNamespace())  # no pip_ensure before 5.12
    slicer_stand_ins.installed.add("torch")
    slicer_stand_ins.state["confirm"] = False
    assert not dependencies.ensure_dependencies(ask=True) and slicer_stand_ins.calls == []
    slicer_stand_ins.state["confirm"] = True
    assert dependencies.ensure_dependencies(ask=True)
    assert slicer_stand_ins.calls == [("pip_install", " ".join(dependencies.requirements()))]


def test_missing_pytorch_extension_says_how_to_get_it(slicer_stand_ins, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)
    with pytest.raises(InputError, match="Extensions Manager"):
        dependencies.ensure_dependencies(ask=True)
