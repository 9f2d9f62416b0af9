"""The label catalogue: one name, colour and code set per structure, whichever dataset numbers it."""

import pytest

from SDFSMISLib.errors import InputError
from SDFSMISLib.io.labels import PAPER_ORDER, label_ids, organ_ids, structure


def test_both_benchmarks_number_the_same_four_organs_differently() -> None:
    chaos, synapse = label_ids("chaos-t2"), label_ids("synapse-ct")
    assert set(chaos) == set(synapse) == {"liver", "spleen", "left_kidney", "right_kidney"}
    assert (chaos["liver"], synapse["liver"]) == (1, 6)
    assert structure(1, "chaos-t2") == structure(6, "synapse-ct")
    assert set(organ_ids("chaos-t2")) == set(PAPER_ORDER) == {"Spleen", "Liver", "LK", "RK"}


def test_kidneys_share_the_type_and_differ_by_laterality_modifier() -> None:
    right, left = structure(2), structure(3)
    assert right.type == left.type and right.type.value == "64033007"
    assert (right.modifier.meaning, left.modifier.meaning) == ("Right", "Left")
    assert right.colour != left.colour


def test_terminology_tag_has_slicer_seven_fields() -> None:
    fields = structure(1).terminology_tag().split("~")
    assert len(fields) == 7
    assert fields[1] == "SCT^123037004^Anatomical Structure" and fields[2] == "SCT^10200004^Liver"
    assert fields[3] == "^^"
    assert structure(2).terminology_tag().split("~")[3] == "SCT^24028007^Right"


def test_unknown_label_falls_back_to_tissue_and_unknown_dataset_is_refused() -> None:
    other = structure(9)
    assert other.name == "label 9" and other.type.meaning == "Tissue"
    assert all(0 <= channel <= 1 for channel in other.colour_fraction)
    with pytest.raises(InputError, match="unknown dataset 'abdomen'"):
        structure(1, "abdomen")
