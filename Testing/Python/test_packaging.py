"""The Slicer build lists every library file; the package's layout; importing it loads no torch and changes
nothing in the process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_cmake_lists_every_library_and_slicer_test_file() -> None:
    cmake = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    listed = set(re.findall(r"(?:SDFSMISLib|Testing)/[\w/]+\.py", cmake))
    files = [*(ROOT / "SDFSMISLib").rglob("*.py"), *(ROOT / "Testing").glob("*.py")]
    present = {str(p.relative_to(ROOT)) for p in files}
    assert listed == present


def test_layout_reads_as_the_architecture() -> None:
    """Sub-packages, a small top level, small modules, and nothing but product code in the package."""
    package = ROOT / "SDFSMISLib"
    subpackages = [p for p in package.iterdir() if (p / "__init__.py").is_file()]
    assert len(subpackages) >= 5 and len(list(package.glob("*.py"))) <= 6
    modules = list(package.rglob("*.py"))
    lines = {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines()) for p in modules}
    too_long = {path: count for path, count in lines.items() if count > 450}
    assert not too_long
    assert not [p for p in modules if re.search(r"benchmark|profiling|winograd|test", p.name)]


def test_cmake_lists_every_resource_file() -> None:
    text = (ROOT / "CMakeLists.txt").read_text().replace("${MODULE_NAME}", "SDFSMIS")
    listed = set(re.findall(r"Resources/\S+", text)) - {"Resources/Icons/SDFSMIS.png\")"}
    present = {str(p.relative_to(ROOT)) for p in (ROOT / "Resources").rglob("*") if p.is_file()}
    assert present <= listed


def test_package_import_does_not_load_torch() -> None:
    code = "import sys, SDFSMISLib; print('torch' in sys.modules, SDFSMISLib.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split()[0] == "False"


def test_importing_the_package_changes_no_environment_variable() -> None:
    """Inside 3D Slicer a variable set at import would reach every extension and child process."""
    code = ("import os, pkgutil, importlib, SDFSMISLib; before = dict(os.environ); "
            "[importlib.import_module(m.name) for m in pkgutil.walk_packages(SDFSMISLib.__path__, 'SDFSMISLib.') "
            "if not m.name.startswith('SDFSMISLib.slicer')]; print(dict(os.environ) == before)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"


def test_the_command_requests_huge_pages_only_as_a_default() -> None:
    code = ("import os; from SDFSMISLib.cli.main import HUGE_PAGES_VARIABLE, request_huge_pages; "
            "request_huge_pages(); print(os.environ[HUGE_PAGES_VARIABLE])")
    environment = {key: value for key, value in os.environ.items() if key != "THP_MEM_ALLOC_ENABLE"}
    requested = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                               env=environment).stdout
    refused = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**environment, "THP_MEM_ALLOC_ENABLE": "0"}).stdout
    assert (requested.strip(), refused.strip()) == ("1", "0")


def test_loading_the_default_model_imports_no_benchmark_or_experimental_code() -> None:
    code = ("import sys; from SDFSMISLib.weights.loading import load_model; load_model(device='cpu'); "
            "print(sorted(name for name in sys.modules if name == 'lib' or name.startswith('lib.') "
            "or name.startswith('SDFSMISLib') and any(word in name for word in ('winograd', 'benchmark', "
            "'profiling'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8", check=True,
                         cwd=ROOT).stdout
    assert out.strip() == "[]"
