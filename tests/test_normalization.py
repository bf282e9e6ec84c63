"""Per-channel normalisation from the plan: CT channels keep one intensity scale across scans (nnU-Net's rule)."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from medtextseg.config import Config
from medtextseg.data.dataset import prepare_case
from medtextseg.data.fingerprint import fingerprint_dataset
from medtextseg.data.layout import load_dataset
from medtextseg.data.planning import describe, is_ct_channel, make_plan
from medtextseg.data.preprocessed import preprocessed_key
from medtextseg.utils.errors import MedTextSegError


@pytest.fixture(scope="module")
def ct_dataset(dataset_3d, tmp_path_factory):
    """The tiny synthetic dataset with its first channel declared CT and stored in Hounsfield-like units."""
    root = tmp_path_factory.mktemp("ct") / "data"
    shutil.copytree(dataset_3d, root, ignore=shutil.ignore_patterns(".medtextseg_cache"))
    description = json.loads((root / "dataset.json").read_text())
    description["channel_names"] = {"0": "CT", "1": "ADC", "2": "HBV"}
    (root / "dataset.json").write_text(json.dumps(description))
    for path in sorted((root / "imagesTr").glob("*_0000.nii.gz")):
        image = nib.load(str(path))
        values = np.asarray(image.dataobj, dtype=np.float32) * 200.0 + 40.0  # soft tissue around 40 HU
        nib.save(nib.Nifti1Image(values, image.affine), str(path))
    return root


def test_the_plan_normalises_ct_channels_with_the_datasets_foreground_statistics(ct_dataset, dataset_3d):
    layout = load_dataset(ct_dataset)
    fingerprint = fingerprint_dataset(layout, layout.splits["train"])
    plan = make_plan(fingerprint, 48 * 48 * 16, 4, {})
    ct, adc, hbv = plan.normalization
    stats = fingerprint.intensity[0]
    assert ct == {"scheme": "ct", "clip": [round(stats["p00_5"], 4), round(stats["p99_5"], 4)],
                  "mean": round(stats["mean"], 4), "std": round(stats["std"], 4)}
    assert adc == hbv == {"scheme": "zscore"}
    assert "data.normalization ct (clip" in describe(plan)
    config = Config.load("default", [f"data.root={ct_dataset}"], plan.overrides())
    assert config.data.normalization[0].scheme == "ct"
    # MR-only data keeps the preparation and the cache key it always had
    mr = load_dataset(dataset_3d)
    assert make_plan(fingerprint_dataset(mr, mr.splits["train"]), 48 * 48 * 16, 4, {}).normalization is None
    assert preprocessed_key([1, 1, 3], 3, [{"scheme": "zscore"}] * 3) == preprocessed_key([1, 1, 3], 3)
    assert preprocessed_key([1, 1, 3], 3, plan.normalization) != preprocessed_key([1, 1, 3], 3)


def test_a_ct_channel_means_the_same_whatever_else_the_scan_holds(ct_dataset, tmp_path):
    """Half the field of view replaced by air (-1000) changes every z-scored value of the tissue; the CT rule
    maps the same Hounsfield units to the same values."""
    layout = load_dataset(ct_dataset)
    case = layout.cases[layout.splits["train"][0]]
    rules = [{"scheme": "ct", "clip": [-100.0, 400.0], "mean": 50.0, "std": 120.0},
             {"scheme": "zscore"}, {"scheme": "zscore"}]
    first = case.image_paths[0]
    image = nib.load(str(first))
    values = np.asarray(image.dataobj, dtype=np.float32)
    with_air = values.copy()
    with_air[: values.shape[0] // 4] = -1000.0
    altered = tmp_path / first.name
    nib.save(nib.Nifti1Image(with_air, image.affine), str(altered))
    other = type(case)(**{**case.__dict__, "image_paths": [altered, *case.image_paths[1:]]})

    plain = prepare_case(case, None, 3, rules).image
    aired = prepare_case(other, None, 3, rules).image
    default = prepare_case(case, None, 3).image
    tissue = aired[0] > (-100 - 50) / 120 + 1e-3  # voxels not replaced by air (nor clipped at the low end)
    torch.testing.assert_close(plain[0][tissue], aired[0][tissue])
    expected = (torch.as_tensor(np.ascontiguousarray(nib.as_closest_canonical(image).get_fdata(dtype=np.float32)))
                .clamp(-100, 400) - 50) / 120
    torch.testing.assert_close(plain[0], expected)
    torch.testing.assert_close(plain[1:], default[1:])  # the z-scored channels as before
    z_plain, z_aired = default[0], prepare_case(other, None, 3).image[0]
    assert (z_plain[tissue] - z_aired[tissue]).abs().mean() > 0.1  # z-scoring moves the tissue's values


def test_channel_names_and_bad_rules():
    assert [is_ct_channel(n) for n in ("CT", "ct_venous", "CT (HU)", "T2W", "DCE_contrast", "octane")] == [
        True, True, True, False, False, False]
    with pytest.raises(MedTextSegError, match="clip, mean and std"):
        Config.load("default", ["data.normalization=[{scheme: ct}]"])
    with pytest.raises(MedTextSegError, match="low < high"):
        Config.load("default", ["data.normalization=[{scheme: ct, clip: [5, 1], mean: 0, std: 1}]"])
