"""Float32 against a half type on the bundled trained model and phantoms: the check that decides a default."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from lib.precision_agreement import markdown, precision_agreement

from SDFSMISLib.data.phantom import bundled_phantoms
from SDFSMISLib.errors import InputError


def test_bfloat16_masks_are_compared_with_float32_per_organ() -> None:
    result = precision_agreement(bundled_phantoms(), half="bfloat16", pairs=1)
    rows = result["rows"]
    assert {row["organ"] for row in rows} == {"liver", "right kidney", "left kidney", "spleen"}
    assert all(0 <= row["dice_between"] <= 1 for row in rows)
    assert result["min_dice_between"] == min(row["dice_between"] for row in rows)
    assert result["masks_agree"] == (result["min_dice_between"] >= result["agreement_dice"])
    # the trained model finds the liver at either precision: a real mask, not two empty ones
    liver = next(row for row in rows if row["organ"] == "liver")
    assert liver["dice_float32_truth"] > 0.5 and liver["dice_bfloat16_truth"] > 0.5
    table = markdown(result)
    assert table.count("\n| 101 -> 102 |") == len(rows) and "Dice float32 vs bfloat16" in table


def test_the_same_precision_gives_the_same_masks() -> None:
    result = precision_agreement(bundled_phantoms(), half="float32", pairs=1)
    assert result["masks_agree"] and result["min_dice_between"] == 1


def test_a_folder_with_one_patient_is_refused(tmp_path: Path) -> None:
    for name in ("image_101.nii.gz", "label_101.nii.gz"):
        shutil.copy(bundled_phantoms() / name, tmp_path / name)
    with pytest.raises(InputError, match="two or more"):
        precision_agreement(tmp_path)
