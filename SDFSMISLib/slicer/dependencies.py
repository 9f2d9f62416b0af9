"""Install the module's Python dependencies into 3D Slicer on first use, after asking; never at import.

Why this order and these tools: PyTorch must match the GPU and its driver, which the PyTorch extension's
``PyTorchUtils`` works out (``light-the-torch``); installed by pip from PyPI it would be a CPU or wrong-CUDA
build. Only then the other packages (``Resources/requirements.txt``) are installed, so that pip sees torch
already satisfied and never pulls its own. Slicer >= 5.12 has ``pip_ensure`` (check, ask, install, offer a
restart; in ``slicer.packaging``, earlier ``slicer.pydeps``), used when present; older versions get the same
steps by hand with ``slicer.util.pip_install``.

The checks (:func:`missing_requirements`) read installed package metadata only, so they cost nothing and
import nothing; the installation (:func:`ensure_dependencies`) runs only inside the Slicer application.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from pathlib import Path

from ..errors import InputError
from ..resources import RESOURCES

REQUIREMENTS_FILE = RESOURCES / "requirements.txt"
#: The PyTorch version SDFSMISLib needs (pyproject.toml's ``torch`` requirement; a test checks they agree).
TORCH_REQUIREMENT = "torch>=2.4"
REQUESTER = "SDFSMIS"


def requirements(path: Path = REQUIREMENTS_FILE) -> list[str]:
    """The requirement lines of a requirements file (comments, blank lines and pip options skipped)."""
    lines = (line.split("#", 1)[0].strip() for line in Path(path).read_text().splitlines())
    return [line for line in lines if line and not line.startswith("-")]


def missing_requirements(wanted: list[str] | None = None) -> list[str]:
    """The requirements (torch first, then the file's) that are not installed at a fitting version."""
    from packaging.requirements import Requirement

    missing = []
    for line in wanted if wanted is not None else [TORCH_REQUIREMENT, *requirements()]:
        requirement = Requirement(line)
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed is None or not requirement.specifier.contains(installed, prereleases=True):
            missing.append(line)
    return missing


def ensure_dependencies(ask: bool = True) -> bool:
    """Install what is missing (inside Slicer): PyTorch through the PyTorch extension, then the rest.

    Returns ``False`` when the user declines; raises :class:`InputError` when the PyTorch extension is absent
    or an installation fails (the message says what to do).
    """
    if not missing_requirements():
        return True
    if missing_requirements([TORCH_REQUIREMENT]) and not _install_torch(ask):
        return False
    others = missing_requirements(requirements())
    if others and not _install_packages(others, ask):
        return False
    importlib.invalidate_caches()
    still = missing_requirements()
    if still:
        raise InputError(f"{', '.join(still)} could not be installed; see the Python console for pip's messages, "
                         "restart Slicer and try again")
    return True


def _install_torch(ask: bool) -> bool:
    try:
        import PyTorchUtils
    except ModuleNotFoundError as error:
        raise InputError("SD-FSMIS needs the PyTorch extension: install 'PyTorch' from the Extensions Manager, "
                         "restart Slicer and press Run again") from error
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=ask,
                                                         torchVersionRequirement=TORCH_REQUIREMENT[len("torch"):])
    return torch is not None


def _install_packages(missing: list[str], ask: bool) -> bool:
    """``pip_ensure`` where Slicer has it (it asks and offers a restart itself), else ask and ``pip_install``."""
    import slicer

    for module in ("slicer.packaging", "slicer.pydeps"):
        try:
            ensure = getattr(importlib.import_module(module), "pip_ensure", None)
        except ImportError:
            continue
        if ensure is not None:
            from packaging.requirements import Requirement

            try:
                ensure([Requirement(line) for line in missing], prompt_install=ask, requester=REQUESTER)
            except RuntimeError:  # the user declined
                return False
            return True
    if ask and not slicer.util.confirmOkCancelDisplay(
            "SD-FSMIS needs these Python packages, which will be downloaded and installed into Slicer "
            f"(a few minutes, once):\n\n{chr(10).join(missing)}", "SD-FSMIS: install dependencies"):
        return False
    slicer.util.pip_install(" ".join(missing))  # a string: what every Slicer version accepts
    return True
