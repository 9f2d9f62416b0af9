"""Install the module's Python dependencies into 3D Slicer on first use, after asking; never at import.

Why this order and these tools: PyTorch must match the GPU and its driver, which the PyTorch extension's
``PyTorchUtils`` works out (``light-the-torch``); installed by pip from PyPI it would be a CPU or wrong-CUDA
build, so it is installed only when absent, and an installed PyTorch that is too old is left for the user to
update in the PyTorch Utils module (replacing it under a running Slicer breaks what has loaded it). Only then
the other packages are installed, with pip and a constraints file that pins what Slicer ships (numpy, scipy,
SimpleITK, pydicom), so an installation can never replace them. DICOM-SEG export (highdicom) is installed
only when it is first used. A package that was already loaded when it was installed needs a restart: the
user is offered one. In testing mode nothing is installed.

The checks (:func:`missing_requirements`) read installed package metadata only, so they cost nothing and
import nothing; the installation (:func:`ensure_dependencies`) runs only inside the Slicer application.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
import tempfile
from pathlib import Path
from typing import Literal

from ..errors import InputError
from ..resources import RESOURCES

REQUIREMENTS_FILE = RESOURCES / "requirements.txt"
#: Installed on first DICOM-SEG export only: highdicom needs pydicom >= 3, which Slicer 5.10 does not ship.
DICOM_SEG_REQUIREMENTS_FILE = RESOURCES / "requirements-dicom-seg.txt"
#: What Slicer ships and an installation must never replace (pinned in the constraints file).
SLICER_SHIPPED = ("numpy", "scipy", "SimpleITK", "pydicom")
#: Oldest supported 3D Slicer: 5.10 ships Python 3.12 (5.8's Python 3.9 cannot run transformers >= 5).
MINIMUM_SLICER = (5, 10)
#: The PyTorch version SDFSMISLib needs (pyproject.toml's ``torch`` requirement; a test checks they agree).
TORCH_REQUIREMENT = "torch>=2.4"


def requirements(path: Path = REQUIREMENTS_FILE) -> list[str]:
    """The requirement lines of a requirements file (comments, blank lines and pip options skipped)."""
    lines = (line.split("#", 1)[0].strip() for line in Path(path).read_text().splitlines())
    return [line for line in lines if line and not line.startswith("-")]


def slicer_version_problem(major: int, minor: int) -> str:
    """An empty string for a supported Slicer version, else what to do (shown instead of the panel)."""
    if (major, minor) >= MINIMUM_SLICER:
        return ""
    oldest = ".".join(map(str, MINIMUM_SLICER))
    return (f"SD-FSMIS needs 3D Slicer {oldest} or newer (this is {major}.{minor}, whose Python is too old for the "
            "packages it runs on); install a current Slicer from download.slicer.org")


def constraints(shipped: tuple[str, ...] = SLICER_SHIPPED) -> list[str]:
    """``name==version`` of each package Slicer ships that is installed: pip may not replace them."""
    return [f"{name}=={version}" for name in shipped if (version := _installed_version(name)) is not None]


def missing_requirements(wanted: list[str] | None = None) -> list[str]:
    """The requirements (torch first, then the file's) that are not installed at a fitting version."""
    from packaging.requirements import Requirement

    missing = []
    for line in wanted if wanted is not None else [TORCH_REQUIREMENT, *requirements()]:
        requirement = Requirement(line)
        installed = _installed_version(requirement.name)
        if installed is None or not requirement.specifier.contains(installed, prereleases=True):
            missing.append(line)
    return missing


def ensure_dependencies(ask: bool = True, extra: Literal["core", "dicom-seg"] = "core") -> bool:
    """Install what is missing (inside Slicer): PyTorch through the PyTorch extension, then the rest.

    ``extra="dicom-seg"`` installs what DICOM-SEG export needs. Returns ``False`` when the user declines;
    raises :class:`InputError` when something must be done by hand (the message says what).
    """
    wanted = requirements() if extra == "core" else requirements(DICOM_SEG_REQUIREMENTS_FILE)
    if not missing_requirements([TORCH_REQUIREMENT, *wanted] if extra == "core" else wanted):
        return True
    import slicer

    if slicer.app.testingEnabled():
        raise InputError(f"SD-FSMIS's packages are not installed ({', '.join(missing_requirements(wanted))}) and "
                         "Slicer installs nothing in testing mode; install them first")
    if extra == "dicom-seg":
        _check_pydicom_for_highdicom()
    if extra == "core" and missing_requirements([TORCH_REQUIREMENT]) and not _install_torch(ask):
        return False
    others = missing_requirements(wanted)
    if others and not _install_packages(others, ask):
        return False
    importlib.invalidate_caches()
    still = missing_requirements(wanted)
    if still:
        raise InputError(f"{', '.join(still)} could not be installed; see the Python console for pip's messages, "
                         "restart Slicer and try again")
    _offer_restart(others)
    return True


def _check_pydicom_for_highdicom() -> None:
    version = _installed_version("pydicom")
    if version is not None and int(version.split(".")[0]) < 3:
        raise InputError(f"DICOM-SEG export needs highdicom, which needs pydicom 3, and this Slicer ships pydicom "
                         f"{version}, which must not be replaced. Save a .seg.nrrd and run `sdfsmis export "
                         "result.seg.nrrd --dicom SERIES --out-dicom-seg seg.dcm`, or use 3D Slicer 5.12 or newer")


def _install_torch(ask: bool) -> bool:
    installed = _installed_version("torch")
    if installed is not None:
        raise InputError(f"PyTorch {installed} is older than SD-FSMIS needs ({TORCH_REQUIREMENT}); update it in "
                         "the PyTorch Utils module (it picks the build for your GPU), restart Slicer and press Run")
    try:
        import PyTorchUtils
    except ModuleNotFoundError as error:
        raise InputError("SD-FSMIS needs the PyTorch extension: install 'PyTorch' from the Extensions Manager, "
                         "restart Slicer and press Run again") from error
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=ask,
                                                         torchVersionRequirement=TORCH_REQUIREMENT[len("torch"):])
    return torch is not None


def _installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _install_packages(missing: list[str], ask: bool) -> bool:
    """Ask, then ``pip_install`` with the constraints file that keeps what Slicer ships."""
    import slicer

    if ask and not slicer.util.confirmOkCancelDisplay(
            "SD-FSMIS needs these Python packages, which will be downloaded and installed into Slicer "
            f"(a few minutes, once):\n\n{chr(10).join(missing)}", "SD-FSMIS: install dependencies"):
        return False
    with tempfile.TemporaryDirectory(prefix="sdfsmis-pip-") as folder:
        pins = Path(folder) / "constraints.txt"
        pins.write_text("\n".join(constraints()) + "\n")
        slicer.util.pip_install(f"{' '.join(missing)} -c {pins}")  # a string: what every Slicer version accepts
    return True


def _offer_restart(installed: list[str]) -> None:
    """A package installed while an older copy of it was loaded works only after a restart: offer one."""
    from packaging.requirements import Requirement

    loaded = [line for line in installed if Requirement(line).name.replace("-", "_").lower() in sys.modules]
    if not loaded:
        return
    import slicer

    if slicer.util.confirmYesNoDisplay(f"{', '.join(loaded)} replaced a version Slicer had already loaded; "
                                       "restart Slicer now to use it?", "SD-FSMIS: restart needed"):
        slicer.util.restart()
