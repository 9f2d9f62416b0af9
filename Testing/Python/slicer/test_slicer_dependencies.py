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
    listed = {Requirement(line).name: line for line in [
        *dependencies.requirements(), *dependencies.requirements(dependencies.DICOM_SEG_REQUIREMENTS_FILE)]}
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

    def pip_install(requirements):  # noqa: ANN001, ANN202
        words = requirements.split()
        constraints = Path(words[words.index("-c") + 1]).read_text().split()
        packages = words[:words.index("-c")]
        calls.append(("pip_install", packages, constraints))
        installed.update(Requirement(line).name for line in packages)

    state = {"torch_accepted": True, "confirm": True, "testing": False}
    monkeypatch.setattr(dependencies, "missing_requirements", missing)
    real_version = dependencies._installed_version  # what Slicer ships is really there; the rest as recorded
    monkeypatch.setattr(dependencies, "_installed_version", lambda name: real_version(name)
                        if name in dependencies.SLICER_SHIPPED else ("9" if name in installed else None))
    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic))
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(testingEnabled=lambda: state["testing"]), raising=False)
    monkeypatch.setattr(slicer.util, "pip_install", pip_install)
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda *args, **kwargs: state["confirm"])
    monkeypatch.setattr(slicer.util, "confirmYesNoDisplay", lambda *args, **kwargs: False, raising=False)
    return types.SimpleNamespace(calls=calls, state=state, installed=installed)


def test_torch_comes_from_the_pytorch_extension_before_the_rest(slicer_stand_ins) -> None:
    assert dependencies.ensure_dependencies(ask=True)
    first, second = slicer_stand_ins.calls
    assert first == ("installTorch", True, ">=2.4")
    assert second[0] == "pip_install" and second[1] == dependencies.requirements()
    assert second[2] == dependencies.constraints() and any(pin.startswith("numpy==") for pin in second[2])


def test_declining_torch_installs_nothing_else(slicer_stand_ins) -> None:
    slicer_stand_ins.state["torch_accepted"] = False
    assert not dependencies.ensure_dependencies(ask=True)
    assert [call[0] for call in slicer_stand_ins.calls] == ["installTorch"]


def test_the_user_is_asked_before_pip_installs(slicer_stand_ins) -> None:
    slicer_stand_ins.installed.add("torch")
    slicer_stand_ins.state["confirm"] = False
    assert not dependencies.ensure_dependencies(ask=True) and slicer_stand_ins.calls == []
    slicer_stand_ins.state["confirm"] = True
    assert dependencies.ensure_dependencies(ask=True)
    assert [call[0] for call in slicer_stand_ins.calls] == ["pip_install"]


def test_nothing_is_installed_in_testing_mode(slicer_stand_ins) -> None:
    slicer_stand_ins.state["testing"] = True
    with pytest.raises(InputError, match="testing mode"):
        dependencies.ensure_dependencies(ask=True)
    assert slicer_stand_ins.calls == []


def test_an_old_torch_is_left_to_pytorch_utils(slicer_stand_ins, monkeypatch) -> None:
    monkeypatch.setattr(dependencies, "_installed_version", lambda name: "2.1.0" if name == "torch" else None)
    with pytest.raises(InputError, match="PyTorch 2.1.0 is older.*PyTorch Utils"):
        dependencies.ensure_dependencies(ask=True)
    assert slicer_stand_ins.calls == []


def test_dicom_seg_export_installs_highdicom_only_when_pydicom_allows(slicer_stand_ins, monkeypatch) -> None:
    slicer_stand_ins.installed.update({"torch", *(Requirement(line).name for line in dependencies.requirements())})
    monkeypatch.setattr(dependencies, "_installed_version", lambda name: "2.4.4" if name == "pydicom" else None)
    with pytest.raises(InputError, match="pydicom 2.4.4"):  # Slicer 5.10's pinned pydicom stays
        dependencies.ensure_dependencies(ask=True, extra="dicom-seg")
    monkeypatch.setattr(dependencies, "_installed_version", lambda name: "3.0.2" if name == "pydicom" else None)
    assert dependencies.ensure_dependencies(ask=True, extra="dicom-seg")
    assert [call[1] for call in slicer_stand_ins.calls] == [["highdicom>=0.25"]]


def test_missing_pytorch_extension_says_how_to_get_it(slicer_stand_ins, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)
    with pytest.raises(InputError, match="Extensions Manager"):
        dependencies.ensure_dependencies(ask=True)


def test_slicer_versions_older_than_the_oldest_supported_are_named() -> None:
    assert dependencies.slicer_version_problem(5, 10) == dependencies.slicer_version_problem(6, 0) == ""
    assert "5.10 or newer (this is 5.8" in dependencies.slicer_version_problem(5, 8)


def test_constraints_pin_what_slicer_ships() -> None:
    from importlib.metadata import version

    pins = dependencies.constraints()
    assert f"numpy=={version('numpy')}" in pins and f"SimpleITK=={version('SimpleITK')}" in pins
    assert [pin.split("==")[0] for pin in pins] == [name for name in dependencies.SLICER_SHIPPED]
