"""The Slicer build lists every library file, and the library imports without torch loaded."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_cmake_lists_every_library_file() -> None:
    listed = set(re.findall(r"SDFSMISLib/\w+\.py", (ROOT / "CMakeLists.txt").read_text()))
    present = {f"SDFSMISLib/{p.name}" for p in (ROOT / "SDFSMISLib").glob("*.py")}
    assert listed == present


def test_cmake_lists_every_resource_file() -> None:
    text = (ROOT / "CMakeLists.txt").read_text().replace("${MODULE_NAME}", "SDFSMIS")
    listed = set(re.findall(r"Resources/\S+", text)) - {"Resources/Icons/SDFSMIS.png\")"}
    present = {str(p.relative_to(ROOT)) for p in (ROOT / "Resources").rglob("*") if p.is_file()}
    assert present <= listed


def test_package_import_does_not_load_torch() -> None:
    code = "import sys, SDFSMISLib; print('torch' in sys.modules, SDFSMISLib.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split()[0] == "False"


def test_package_import_requests_huge_pages_only_as_a_default() -> None:
    code = "import os, SDFSMISLib; print(os.environ[SDFSMISLib.HUGE_PAGES_VARIABLE])"
    environment = {key: value for key, value in os.environ.items() if key != "THP_MEM_ALLOC_ENABLE"}
    requested = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                               env=environment).stdout
    refused = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**environment, "THP_MEM_ALLOC_ENABLE": "0"}).stdout
    assert (requested.strip(), refused.strip()) == ("1", "0")
