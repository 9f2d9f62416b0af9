"""Where the extension's ``Resources/`` folder is: the bundled model, the demo phantoms, the panel's .ui file and
the first-use requirements. It sits beside the package, as in the Slicer extension and in an editable
(``pip install -e .``) install; a wheel install has none, and the callers say what to do then."""

from __future__ import annotations

from pathlib import Path

RESOURCES = Path(__file__).resolve().parents[1] / "Resources"
