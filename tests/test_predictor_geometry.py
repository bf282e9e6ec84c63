"""Prediction writes masks with exactly the input's shape and affine, whatever the input's orientation."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from medtextseg.config import Config
from medtextseg.inference.predictor import Predictor
from medtextseg.models.checkpoint import save_checkpoint
from medtextseg.models.factory import create_model
from medtextseg.models.input_spec import InputSpec
from medtextseg.models.output import ModelOutput
from medtextseg.utils.errors import MedTextSegError


def oblique_lps_affine() -> np.ndarray:
    """Voxel axes pointing Left, Posterior, Superior (as DICOM-derived files do), rotated 15 degrees."""
    angle = np.deg2rad(15)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-0.9, -0.8, 2.5])
    affine[:3, 3] = [40.0, 25.0, -30.0]
    return affine


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), str(path))
    return path


def make_checkpoint(tmp_path: Path, overrides: list[str]) -> Path:
    config = Config.load("default", ["model.channels=[4,8]", "model.strides=[[1,1,1],[2,2,2]]",
                                     "data.patch_size=[16,16,8]", *overrides])
    torch.manual_seed(0)
    model = create_model(config.model, 384)
    return save_checkpoint(tmp_path / "model.pt", {"model": model.state_dict(), "config": config.model_dump(),
                                                    "text_dim": 384})


class ThresholdModel(nn.Module):
    """A stand-in with a known answer: logit = 20 x (z-scored channel 0), so mask = raw > mean(raw)."""

    input_spec = InputSpec(spatial_dims=3, in_channels=1)

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, image, text, image_index=None, *, refine=True, network=None):
        logits = 20 * image[:, :1]
        if image_index is not None:
            logits = logits[image_index]
        return ModelOutput(logits=logits)


@pytest.fixture
def volume(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    # every voxel different (a ramp + noise), so a flipped or shifted answer cannot pass
    data = np.arange(20 * 24 * 12, dtype=np.float32).reshape(20, 24, 12) % 97 + rng.normal(0, 0.1, (20, 24, 12))
    return write_nifti(tmp_path / "t2w.nii.gz", data, oblique_lps_affine())


def test_mask_has_the_input_shape_and_affine(tmp_path, volume):
    predictor = Predictor(make_checkpoint(tmp_path, ["model.in_channels=1"]))
    [result] = predictor.predict([volume], ["the prostate gland"])
    result.save(tmp_path / "mask.nii.gz", tmp_path / "probability.nii.gz")
    source, mask = nib.load(str(volume)), nib.load(str(tmp_path / "mask.nii.gz"))
    assert mask.shape == source.shape
    np.testing.assert_array_equal(mask.affine, source.affine)
    assert nib.aff2axcodes(mask.affine) == ("L", "P", "S")
    assert mask.get_data_dtype() == np.uint8
    probability = nib.load(str(tmp_path / "probability.nii.gz"))
    assert probability.shape == source.shape and probability.get_data_dtype() == np.float32
    # ITK readers see the same grid too
    a, b = sitk.ReadImage(str(volume)), sitk.ReadImage(str(tmp_path / "mask.nii.gz"))
    assert a.GetOrigin() == pytest.approx(b.GetOrigin()) and a.GetDirection() == pytest.approx(b.GetDirection())
    assert a.GetSpacing() == pytest.approx(b.GetSpacing())


def test_outputs_return_to_the_exact_input_voxels(tmp_path, volume):
    """Through RAS reorientation, sliding windows and inversion, each voxel's answer lands where it came from."""
    predictor = Predictor(make_checkpoint(tmp_path, ["model.in_channels=1"]))
    predictor.model = ThresholdModel()
    [result] = predictor.predict([volume], ["anything"])
    raw = np.asanyarray(nib.load(str(volume)).dataobj)
    np.testing.assert_array_equal(result.mask.astype(bool), raw > raw.mean())


def test_resampled_model_space_still_writes_the_input_grid(tmp_path, volume):
    predictor = Predictor(make_checkpoint(tmp_path, ["model.in_channels=1", "data.spacing=[1.5,1.5,2.0]"]))
    [result] = predictor.predict([volume], ["the gland"])
    assert result.mask.shape == nib.load(str(volume)).shape


def test_mha_input_keeps_its_geometry(tmp_path):
    image = sitk.GetImageFromArray(np.random.default_rng(1).normal(size=(10, 24, 20)).astype(np.float32))
    image.SetSpacing((0.7, 0.9, 3.0))
    image.SetOrigin((-12.0, 30.5, 7.25))
    angle = np.deg2rad(10)
    image.SetDirection((np.cos(angle), -np.sin(angle), 0, np.sin(angle), np.cos(angle), 0, 0, 0, 1))
    path = tmp_path / "case_t2w.mha"
    sitk.WriteImage(image, str(path))
    predictor = Predictor(make_checkpoint(tmp_path, ["model.in_channels=1"]))
    [result] = predictor.predict([path], ["the gland"])
    result.save(tmp_path / "mask.mha")
    written = sitk.ReadImage(str(tmp_path / "mask.mha"))
    assert written.GetSize() == image.GetSize()
    assert written.GetOrigin() == pytest.approx(image.GetOrigin())
    assert written.GetSpacing() == pytest.approx(image.GetSpacing())
    assert written.GetDirection() == pytest.approx(image.GetDirection())


def test_2d_slice_keeps_its_geometry(tmp_path, dataset_2d):
    checkpoint = make_checkpoint(tmp_path, ["model.spatial_dims=2", "model.strides=[[1,1],[2,2]]",
                                            "data.patch_size=[32,32]"])
    images = sorted((dataset_2d / "imagesTr").glob("synth_000_*.nii.gz"))
    [result] = Predictor(checkpoint).predict(images, ["the prostate gland"])
    result.save(tmp_path / "mask.nii.gz")
    source, mask = nib.load(str(images[0])), nib.load(str(tmp_path / "mask.nii.gz"))
    assert mask.shape == source.shape and len(mask.shape) == 3 and mask.shape[2] == 1
    np.testing.assert_array_equal(mask.affine, source.affine)


def test_wrong_channel_count(tmp_path, volume):
    predictor = Predictor(make_checkpoint(tmp_path, []))
    with pytest.raises(MedTextSegError, match=r"the model takes 3 image file\(s\).*got 1"):
        predictor.predict([volume], ["the gland"])


def test_channels_on_different_grids_at_prediction(tmp_path, volume):
    other = write_nifti(tmp_path / "adc.nii.gz", np.zeros((20, 24, 11)), oblique_lps_affine())
    predictor = Predictor(make_checkpoint(tmp_path, ["model.in_channels=2"]))
    with pytest.raises(MedTextSegError, match=r"adc.nii.gz: not on the grid of .*t2w.nii.gz"):
        predictor.predict([volume, other], ["the gland"])


def test_nan_image_at_prediction(tmp_path):
    data = np.ones((20, 24, 12), dtype=np.float32)
    data[1, 2, 3] = np.nan
    path = write_nifti(tmp_path / "bad.nii.gz", data, oblique_lps_affine())
    predictor = Predictor(make_checkpoint(tmp_path, ["model.in_channels=1"]))
    with pytest.raises(MedTextSegError, match=r"bad.nii.gz: the image has NaN or infinite voxels"):
        predictor.predict([path], ["the gland"])


def test_absurd_prompt_at_prediction(tmp_path, volume):
    predictor = Predictor(make_checkpoint(tmp_path, ["model.in_channels=1"]))
    with pytest.raises(MedTextSegError, match=r"prompt 2: the prompt is empty"):
        predictor.predict([volume], ["the gland", " "])


def test_checkpoint_errors(tmp_path):
    with pytest.raises(MedTextSegError, match=r"no best.pt or last.pt in this run folder"):
        Predictor(tmp_path)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(MedTextSegError, match=r"junk.pt: not a readable checkpoint"):
        Predictor(tmp_path / "junk.pt")


def test_writing_on_a_grid_of_another_shape_is_refused(tmp_path, volume):
    from medtextseg.data.io import write_like

    with pytest.raises(MedTextSegError, match=r"mask.nii.gz: array shape \(2, 2, 2\) differs from the reference"):
        write_like(np.zeros((2, 2, 2), np.uint8), volume, tmp_path / "mask.nii.gz")
    assert not (tmp_path / "mask.nii.gz").exists()
