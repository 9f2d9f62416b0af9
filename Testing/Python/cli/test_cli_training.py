"""The training commands' choice of patients: ``--fold`` holds a fold out, ``--extra-data`` adds whole folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from SDFSMISLib.cli.main import build_parser
from SDFSMISLib.cli.training import _episode_dataset, _split_patients
from SDFSMISLib.io.volumes import Volume, write_volume

SIZE = 256


def write_patient(folder: Path, number: int) -> None:
    """Two slices with one 20x20 supervoxel on both."""
    image = np.zeros((2, SIZE, SIZE), np.float32)
    image[:, :8] = number
    labels = np.zeros((2, SIZE, SIZE), np.float32)
    labels[:, 100:120, 100:120] = 1
    geometry = ((1.25, 1.25, 7.7), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    folder.mkdir(exist_ok=True)
    write_volume(folder / f"image_{number}.nii.gz", Volume(image, *geometry))
    write_volume(folder / f"supervoxel_{number}.nii.gz", Volume(labels, *geometry))


def test_fold_holds_its_patients_out_and_extra_folders_join_whole(tmp_path: Path) -> None:
    for number in range(1, 6):
        write_patient(tmp_path / "main", number)
    for number in (7, 8):
        write_patient(tmp_path / "extra", number)
    args = build_parser().parse_args(["tiny-base", "--data", str(tmp_path / "main"), "--out", str(tmp_path / "out"),
                                      "--fold", "1", "--extra-data", str(tmp_path / "extra")])
    training, held_out = _split_patients(args)
    assert [p.id for p in held_out] == [2, 3]  # fold 1 of 5 patients: positions 1 and 2
    assert [p.id for p in training] == [1, 4, 5]
    episodes = _episode_dataset(args, training, length=4, seed=0)
    assert len(episodes.volumes) == 5  # the three training patients and both extra ones


def test_tiny_base_resumes_its_saved_state_and_cleans_it_up(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from SDFSMISLib.cli.main import main
    from SDFSMISLib.training.tiny_base import VAE_STATE_FOLDER

    for number in range(1, 3):
        write_patient(tmp_path / "main", number)
    out = tmp_path / "out"
    command = ["tiny-base", "--data", str(tmp_path / "main"), "--out", str(out), "--steps", "2", "--batch-size", "1",
               "--crop", "32", "--save-every", "1"]
    assert main([*command, "--resume"]) == 2
    assert f"nothing to resume in {out / VAE_STATE_FOLDER}" in capsys.readouterr().err
    assert not out.exists()
    assert main(command) == 0
    assert (out / "sd" / "vae" / "config.json").exists() and (out / "dino").is_dir()
    assert not (out / VAE_STATE_FOLDER).exists()
