"""The whole-volume baselines the demo prints next to SDFSMIS: copy along propagation's plan, Fill between slices."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from SDFSMISLib.data.phantom import generate_phantom
from SDFSMISLib.evaluation.baselines import fill_between_slices
from SDFSMISLib.evaluation.protocol import protocol_support_mask
from SDFSMISLib.evaluation.volume_baselines import copy_along_plan, fill_between_labelmap
from SDFSMISLib.inference.options import PropagationOptions
from SDFSMISLib.inference.propagation import propagate
from SDFSMISLib.model.network import SDFSMISNet


def test_copy_follows_the_plan_of_propagation(tiny_model: SDFSMISNet) -> None:
    image, labels = generate_phantom(4, "mr", shape=(12, 64, 64), spacing=(5.0, 5.0, 12.0))
    annotation = protocol_support_mask(labels, [1, 4])
    result = propagate(tiny_model, image, annotation, options=PropagationOptions(recipe="none"))
    copied = copy_along_plan(result)
    assert copied.same_grid(result.labelmap)
    model = result.supports.query.labels_to_model(copied.array)
    own = result.supports.query_labels
    for label, plan in result.plans.items():
        assert plan.support_slices.size == 0 and len(plan.annotated_slices) == 3  # same patient
        for index in plan.annotated_slices:  # painted slices as painted
            assert np.array_equal(model[index] == label, own[index] == label)
        for index, source in zip(plan.predicted_slices, plan.assignment):
            assert np.array_equal(model[index] == label, own[plan.annotated_slices[source]] == label)
        outside = np.setdiff1d(np.arange(len(model)), plan.query_slices)
        assert not (model[outside] == label).any()


def test_fill_between_labelmap_fills_each_label_along_the_slice_axis() -> None:
    _, labels = generate_phantom(5, "mr", shape=(12, 48, 48), spacing=(6.0, 6.0, 12.0))
    annotation = protocol_support_mask(labels, [1, 4])
    filled = fill_between_labelmap(annotation, [1, 4]).array
    for label in (1, 4):
        slices = np.flatnonzero((annotation.array == label).any(axis=(1, 2)))
        expected = fill_between_slices(annotation.array.shape, slices, annotation.array[slices] == label)
        assert np.array_equal(filled == label, expected)  # liver and spleen do not meet
        assert (filled == label).sum() > (annotation.array == label).sum()  # slices between were filled


# What the ``sdfsmis`` console script does: import the command line (and with it SimpleITK) at the top, then work.
SDFSMIS_LIKE_SCRIPT = """
import sys
from pathlib import Path
from SDFSMISLib.cli.main import main  # noqa: F401
import numpy as np
if __name__ == "__main__":
    from SDFSMISLib.evaluation import contour_interpolation
    volume = np.zeros((7, 32, 32), np.uint8)
    volume[1, 8:20, 8:20] = volume[5, 10:24, 9:22] = 1
    filled = contour_interpolation.interpolate(volume)
    maps = Path(f"/proc/{contour_interpolation._worker().pid}/maps").read_text()
    print(bool(filled[2:5].any(axis=(1, 2)).all() and not filled[[0, 6]].any()), "itk" in maps.lower(),
          "SimpleITK" in maps)
"""


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the worker's memory map (Linux)")
def test_contour_interpolation_runs_where_simpleitk_is_not_loaded(tmp_path: Path) -> None:
    """The two ITK builds corrupt a shared heap: under the sdfsmis command (which loads SimpleITK) the worker
    must still load itk alone. A multiprocessing child re-imported the command's script, and SimpleITK with it."""
    script = tmp_path / "sdfsmis_like.py"
    script.write_text(SDFSMIS_LIKE_SCRIPT)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True", "False"]  # interpolated, itk loaded, SimpleITK not
