"""predict --combined: one label map per case (label k = prompt k, overlaps to the higher probability, 0 = no prompt)
on the input's exact grid, NIfTI intent "label", with a legend; for one case and for many (the index refers to it)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from helpers import text_checkpoint
from medtextseg.cli import app
from medtextseg.data.io import Geometry, read_geometry
from medtextseg.inference.label_map import combine_labels, write_label_map
from medtextseg.inference.predictor import Segmentation
from test_predict_folder import GRIDS, tilted_affine, write_case

runner = CliRunner()
PROMPTS = ["the prostate gland", "the lesion in the left PZ"]


def test_overlaps_go_to_the_higher_probability_and_unclaimed_voxels_to_0():
    # voxels:        0    1    2    3    4    5
    masks = np.array([[0, 1, 1, 1, 0, 1],
                      [0, 0, 1, 1, 1, 1],
                      [0, 0, 0, 1, 0, 0]], dtype=np.uint8)[:, None]  # [P, 1, 6]
    probabilities = np.array([[0.9, 0.8, 0.6, 0.7, 0.9, 0.7],
                              [0.2, 0.1, 0.9, 0.6, 0.6, 0.7],
                              [0.1, 0.1, 0.1, 0.8, 0.1, 0.1]], dtype=np.float32)[:, None]
    labels = combine_labels(masks, probabilities)
    # 0: nobody claims it (a high probability without a mask does not count); 1: only prompt 1; 2: prompt 2 wins
    # an overlap; 3: prompt 3 wins a triple overlap; 4: only prompt 2, though prompt 1 is likelier; 5: a tie -> first
    assert labels.tolist() == [[0, 1, 2, 3, 2, 1]] and labels.dtype == np.uint8
    many = combine_labels(np.ones((256, 1, 2), np.uint8), np.linspace(0, 1, 512).reshape(256, 1, 2))
    assert many.dtype == np.uint16 and many.tolist() == [[256, 256]]


@pytest.mark.parametrize("ending", [".nii.gz", ".mha"])
def test_the_label_map_is_written_on_the_grid_with_its_legend(tmp_path, ending):
    affine = tilted_affine(12.0, 3.0)
    geometry = Geometry((3, 2, 2), affine)
    probability = np.zeros((2, 3, 2, 2), np.float32)
    probability[0, :2], probability[1, 1:] = 0.9, 0.6
    probability[1, 1, 0, 0] = 0.95  # prompt 2 wins one voxel of the overlap
    results = [Segmentation(prompt, (p > 0.5).astype(np.uint8), p, geometry)
               for prompt, p in zip(PROMPTS, probability, strict=True)]
    legend = write_label_map(results, tmp_path / f"label-map{ending}", ["gland.nii.gz", "lesion.nii.gz"])
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"label-map{ending}"))).T
    expected = np.zeros((3, 2, 2), np.uint8)
    expected[:2], expected[2] = 1, 2
    expected[1, 0, 0] = 2
    np.testing.assert_array_equal(written, expected)
    assert written.dtype == np.uint8
    assert read_geometry(tmp_path / f"label-map{ending}").same_grid(geometry, 1e-5)
    voxel_mm3 = 0.9 * 0.8 * 2.5
    assert legend == json.loads((tmp_path / "label-map.json").read_text())
    assert legend == {"format": "medtextseg-label-map/1", "file": f"label-map{ending}", "background": 0,
                      "overlaps": "highest probability (the earlier prompt on a tie)",
                      "labels": [{"label": 1, "prompt": PROMPTS[0], "mask": "gland.nii.gz", "voxels": 7,
                                  "volume_mm3": round(7 * voxel_mm3, 3), "mask_voxels": 8},
                                 {"label": 2, "prompt": PROMPTS[1], "mask": "lesion.nii.gz", "voxels": 5,
                                  "volume_mm3": round(5 * voxel_mm3, 3), "mask_voxels": 8}]}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return text_checkpoint(tmp_path_factory.mktemp("combined_model"))


def expected_labels(masks: list[np.ndarray], probabilities: list[np.ndarray]) -> np.ndarray:
    """The rule for two prompts, spelled out: one claimant takes the voxel, two go by probability."""
    (m1, m2), (p1, p2) = [m.astype(bool) for m in masks], probabilities
    return np.where(m1 & m2, np.where(p2 > p1, 2, 1), np.where(m1, 1, np.where(m2, 2, 0)))


def test_predict_combined_writes_a_label_map_on_the_input_grid(checkpoint, tmp_path):
    images = write_case(tmp_path / "in", "case", (18, 22, 10), 12.0)
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", "-m", str(checkpoint.parent), "-i", str(images[0]), "-i", str(images[1]),
                                 "-p", PROMPTS[0], "-p", PROMPTS[1], "-o", str(out), "--combined", "--probabilities",
                                 "--threshold", "0.4"])
    assert result.exit_code == 0, result.output
    assert f"{out / 'label-map.nii.gz'}  labels 1-2" in result.output
    reference = nib.load(str(images[0]))
    label_map = nib.load(str(out / "label-map.nii.gz"))
    assert label_map.shape == reference.shape and np.array_equal(label_map.affine, reference.affine)
    assert label_map.header.get_intent()[0] == "label" and label_map.get_data_dtype() == np.uint8
    labels = np.asanyarray(label_map.dataobj)
    masks = [np.asanyarray(nib.load(str(out / f"mask_{k:02d}.nii.gz")).dataobj) for k in range(2)]
    probabilities = [nib.load(str(out / f"probability_{k:02d}.nii.gz")).get_fdata(dtype=np.float32) for k in range(2)]
    overlap = masks[0].astype(bool) & masks[1].astype(bool)
    # the case makes the rule matter: each prompt wins part of the overlap
    assert (overlap & (probabilities[1] > probabilities[0])).any()
    assert (overlap & (probabilities[0] > probabilities[1])).any()
    np.testing.assert_array_equal(labels, expected_labels(masks, probabilities))
    legend = json.loads((out / "label-map.json").read_text())
    assert [(e["label"], e["prompt"], e["mask"]) for e in legend["labels"]] == [
        (1, PROMPTS[0], "mask_00.nii.gz"), (2, PROMPTS[1], "mask_01.nii.gz")]
    for entry, mask in zip(legend["labels"], masks, strict=True):
        assert entry["voxels"] == int((labels == entry["label"]).sum()) > 0
        assert entry["mask_voxels"] == int(mask.sum()) > entry["voxels"]  # each lost voxels to the other
        assert entry["volume_mm3"] == pytest.approx(entry["voxels"] * 0.9 * 0.8 * 2.5, abs=1e-3)
    index = json.loads((out / "prompts.json").read_text())
    assert [(e["label"], e["label_map"], e["legend"]) for e in index] == [
        (1, "label-map.nii.gz", "label-map.json"), (2, "label-map.nii.gz", "label-map.json")]


def test_predict_combined_over_many_cases_writes_one_label_map_per_case(checkpoint, tmp_path):
    folder = tmp_path / "imagesTs"
    for case, (shape, degrees) in GRIDS.items():
        write_case(folder, case, shape, degrees)
    out = tmp_path / "out"
    args = ["predict", "-m", str(checkpoint.parent), "-i", str(folder), "-p", PROMPTS[0], "-p", PROMPTS[1],
            "-o", str(out), "--threshold", "0.4"]
    result = runner.invoke(app, [*args, "--combined"])
    assert result.exit_code == 0, result.output
    records = json.loads((out / "predictions.json").read_text())["masks"]
    for case in GRIDS:
        case_records = [r for r in records if r["case"] == case]
        assert [(r["label"], r["label_map"], r["legend"]) for r in case_records] == [
            (k, f"{case}/label-map.nii.gz", f"{case}/label-map.json") for k in (1, 2)]
        reference = nib.load(str(folder / f"{case}_0000.nii.gz"))
        label_map = nib.load(str(out / case / "label-map.nii.gz"))
        assert label_map.shape == reference.shape and np.array_equal(label_map.affine, reference.affine)
        labels = np.asanyarray(label_map.dataobj)
        masks = [np.asanyarray(nib.load(str(out / r["file"])).dataobj).astype(bool) for r in case_records]
        only_one = masks[0] ^ masks[1]
        np.testing.assert_array_equal(labels[only_one], np.where(masks[0], 1, 2)[only_one])
        np.testing.assert_array_equal(labels[~(masks[0] | masks[1])], 0)
        legend = json.loads((out / case / "label-map.json").read_text())
        assert [e["mask"] for e in legend["labels"]] == [Path(r["file"]).name for r in case_records]
        assert all((out / case / e["mask"]).is_file() for e in legend["labels"])
    # --continue after a run without label maps predicts again (the index records none); a plain rerun drops them
    assert runner.invoke(app, [*args]).exit_code == 0
    assert not list(out.glob("*/label-map*"))
    assert "label_map" not in json.loads((out / "predictions.json").read_text())["masks"][0]
    result = runner.invoke(app, [*args, "--combined", "--continue"])
    assert result.exit_code == 0 and f"predicted {len(GRIDS)} case(s)" in result.output
    assert len(list(out.glob("*/label-map.nii.gz"))) == len(GRIDS)
    result = runner.invoke(app, [*args, "--combined", "--continue"])
    assert f"{len(GRIDS)} skipped (already done)" in result.output
