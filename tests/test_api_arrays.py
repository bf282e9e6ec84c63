"""The API on images in memory (numpy + affine or SimpleITK's frame, nibabel, SimpleITK, MetaTensor) gives exactly the
masks it gives on the files; a Segmentation keeps its grid and saves after its input is gone; bad inputs are one
line."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage

from helpers import text_checkpoint
from medtextseg import MedTextSegError, load_model, segment
from medtextseg.data.io import read_geometry
from medtextseg.inference.predictor import Predictor
from test_predict_folder import tilted_affine

PROMPTS = ["the prostate gland", "the lesion in the left PZ"]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Predictor:
    return load_model(text_checkpoint(tmp_path_factory.mktemp("api_model")), device="cpu")


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> list[Path]:
    return oblique_channels(tmp_path_factory.mktemp("api_case"))


def oblique_channels(folder: Path) -> list[Path]:
    """Two channel files of different content (so their order matters) on an oblique grid whose voxel axes point
    Left and Posterior (18 x 22 x 10)."""
    rng = np.random.default_rng(0)
    paths = []
    for channel in range(2):
        path = folder / f"case_{channel:04d}.nii.gz"
        nib.save(nib.Nifti1Image(rng.normal(100, 20, (18, 22, 10)).astype(np.float32), tilted_affine(12.0, 4)),
                 str(path))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def on_files(model, case):
    return model.predict(case, PROMPTS)


def assert_same(results, expected) -> None:
    assert [r.prompt for r in results] == [e.prompt for e in expected]
    for result, reference in zip(results, expected, strict=True):
        assert 0 < reference.voxels < reference.mask.size  # a real answer: neither empty nor everything
        np.testing.assert_array_equal(result.mask, reference.mask)
        np.testing.assert_array_equal(result.probability, reference.probability)
        np.testing.assert_array_equal(result.affine, reference.affine)
        assert result.geometry.shape == reference.geometry.shape


def test_numpy_arrays_with_an_affine_give_the_masks_of_the_files(model, case, on_files):
    images = [nib.load(str(path)) for path in case]
    arrays = [image.get_fdata() for image in images]  # float64, nibabel's voxel order (i, j, k)
    assert_same(segment(arrays, PROMPTS, model, affine=images[0].affine), on_files)
    tensors = [torch.from_numpy(a) for a in arrays]
    assert_same(model.predict(tensors, PROMPTS, affine=torch.from_numpy(images[0].affine)), on_files)


def test_numpy_arrays_with_simpleitk_spacing_origin_direction_give_the_masks_of_the_files(model, case, tmp_path):
    mha = []
    for path in case:  # the same voxels and grid as ITK files
        mha.append(tmp_path / path.name.replace(".nii.gz", ".mha"))
        sitk.WriteImage(sitk.ReadImage(str(path)), str(mha[-1]))
    on_mha = model.predict(mha, PROMPTS)
    image = sitk.ReadImage(str(mha[0]))
    arrays = [sitk.GetArrayFromImage(sitk.ReadImage(str(p))).T for p in mha]  # ITK's (k, j, i) -> (i, j, k)
    results = segment(arrays, PROMPTS, model, spacing=image.GetSpacing(), origin=image.GetOrigin(),
                      direction=image.GetDirection())
    assert_same(results, on_mha)
    results[0].save(tmp_path / "mask.mha")  # the given frame itself, not one recomputed from the affine
    written = sitk.ReadImage(str(tmp_path / "mask.mha"))
    assert (written.GetOrigin(), written.GetSpacing(), written.GetDirection()) == (
        image.GetOrigin(), image.GetSpacing(), image.GetDirection())
    assert_same(segment([sitk.ReadImage(str(p)) for p in mha], PROMPTS, model), on_mha)  # SimpleITK images


def test_nibabel_images_and_metatensors_give_the_masks_of_the_files(model, case, on_files):
    built = [nib.Nifti1Image(nib.load(str(p)).get_fdata().astype(np.float32), nib.load(str(p)).affine) for p in case]
    assert_same(segment(built, PROMPTS, model), on_files)  # images made in memory, never files
    both = LoadImage(image_only=True, ensure_channel_first=True)([str(p) for p in case])
    assert isinstance(both, MetaTensor) and both.shape == (2, 18, 22, 10)
    assert_same(segment(both, PROMPTS, model), on_files)  # one MetaTensor, channel first, both channels
    one_each = [LoadImage(image_only=True, ensure_channel_first=True)(str(p)) for p in case]
    assert_same(segment(one_each, PROMPTS, model), on_files)


def test_all_prompts_of_an_image_in_memory_take_one_sliding_window_pass(model, case, monkeypatch):
    import medtextseg.inference.sliding as sliding_module

    calls = []
    original = sliding_module.sliding_window_inference

    def counting(inputs, *args, predictor, **kwargs):
        calls.append(predictor)
        return original(inputs, *args, predictor=predictor, **kwargs)

    monkeypatch.setattr(sliding_module, "sliding_window_inference", counting)
    image = nib.load(str(case[0]))
    results = segment([image.get_fdata(), nib.load(str(case[1])).get_fdata()], [*PROMPTS, "all lesions"], model,
                      affine=image.affine)
    assert len(results) == 3 and len(calls) == 1


def test_a_segmentation_keeps_its_grid_and_saves_after_its_input_is_gone(model, case, tmp_path):
    copies = [Path(shutil.copy(path, tmp_path / path.name)) for path in case]
    original = nib.load(str(copies[0]))
    affine, header = original.affine.copy(), original.header.copy()
    [gland] = model.predict(copies, ["the prostate gland"])
    for path in copies:
        path.unlink()
    assert "shape=(18, 22, 10), spacing=(0.9, 0.8, 2.5) mm" in repr(gland)
    np.testing.assert_array_equal(gland.affine, affine)
    gland.save(tmp_path / "gland.nii.gz", tmp_path / "gland_probability.nii.gz")
    written = nib.load(str(tmp_path / "gland.nii.gz"))
    np.testing.assert_array_equal(written.affine, affine)
    assert written.header.get_qform(coded=True)[1] == header.get_qform(coded=True)[1]  # the input's header codes
    assert written.header.get_sform(coded=True)[1] == header.get_sform(coded=True)[1]
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), gland.mask)
    gland.save(tmp_path / "gland.mha")  # another format, from the kept grid
    assert read_geometry(tmp_path / "gland.mha").same_grid(read_geometry(tmp_path / "gland.nii.gz"), 1e-5)


def test_a_segmentation_of_an_array_saves_on_the_given_affine(model, case, tmp_path):
    tilted = tilted_affine(-20.0, 3.0)
    volume = nib.load(str(case[0])).get_fdata()
    [lesion] = segment([volume, volume], ["the lesion in the left PZ"], model, affine=tilted)
    lesion.save(tmp_path / "lesion.nii.gz")
    written = nib.load(str(tmp_path / "lesion.nii.gz"))
    assert written.shape == volume.shape
    np.testing.assert_allclose(written.affine, tilted, atol=1e-6)
    assert written.header["sform_code"] == 1 and written.header["qform_code"] == 1  # scanner coordinates
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), lesion.mask)


def test_a_2d_slice_in_memory_gives_the_mask_of_its_file(tmp_path):
    checkpoint = text_checkpoint(tmp_path, 1, ("model.spatial_dims=2", "model.strides=[[1,1],[2,2]]",
                                               "data.patch_size=[16,16]"))
    slice_model = load_model(checkpoint, device="cpu")
    ramp = (np.arange(20 * 24, dtype=np.float32).reshape(20, 24, 1) % 37)
    path = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(ramp, tilted_affine(0.0, 0.0)), str(path))
    [on_file] = slice_model.predict([path], ["the prostate gland"])
    [in_memory] = segment(ramp[..., 0], "the prostate gland", slice_model, affine=tilted_affine(0.0, 0.0))
    assert in_memory.mask.shape == (20, 24)  # the array's own shape
    assert 0 < in_memory.voxels < in_memory.mask.size
    np.testing.assert_array_equal(in_memory.mask, on_file.mask[..., 0])
    np.testing.assert_array_equal(in_memory.probability, on_file.probability[..., 0])


@pytest.mark.parametrize(("images", "kwargs", "message"), [
    (42, {}, r"image 1: got builtins\.int; expected a file path, a numpy array \(with affine= or spacing=\), a "
             r"nibabel image, a SimpleITK image or a MONAI MetaTensor"),
    ([np.zeros((18, 22, 10)), {"t2w": 1}], {"affine": np.eye(4)}, r"image 2: got builtins\.dict; expected"),
    (np.zeros((18, 22, 10)), {}, r"image 1 \(numpy array 18 x 22 x 10\): an array has no geometry; pass affine="),
    (np.zeros((2, 18, 22, 10)), {"affine": np.eye(4)}, r"one array per channel, \[\*spatial\] \(2 or 3 axes\), got "
                                                        r"4 axes; for channel-first data pass list\(array\)"),
    (np.zeros((18, 22, 10)), {"affine": np.eye(3)[:2]}, r"affine must be a finite, invertible 4x4 matrix"),
    (np.zeros((18, 22, 10)), {"affine": np.eye(4), "spacing": (1, 1, 1)}, r"give affine or spacing/origin/direction"),
    (np.zeros((18, 22, 10)), {"spacing": (1.0, -1.0, 1.0)}, r"spacing/origin/direction do not make a 3D SimpleITK "),
    (np.zeros((18, 22, 10), dtype=np.complex64), {"affine": np.eye(4)}, r"voxels must be real numbers"),
    ([np.zeros((18, 22, 10))] * 3, {"affine": np.eye(4)}, r"the model takes 2 channel\(s\) \(t2w, adc\), one image "
                                                          r"per channel .*; got 3"),
    ([np.zeros((18, 22, 10)), np.zeros((18, 22, 11))], {"affine": np.eye(4)},
     r"image 2 \(numpy array 18 x 22 x 11\): not on the grid of image 1"),
    ([np.zeros((18, 22)), np.zeros((18, 22))], {"affine": np.eye(4)}, r"a 2D image \(shape 18 x 22\) but the model "
                                                                      r"is 3D \(a volume per array\)"),
    ("PATHS", {"affine": np.eye(4)}, r"affine/spacing/origin/direction apply to numpy arrays; files carry"),
    ("NIBABEL", {"affine": np.eye(4)}, r"affine applies to numpy arrays; the images given carry their own grid"),
    ("MIXED", {}, r"image 2: a path among images in memory"),
])
def test_inputs_the_model_cannot_take_are_one_line_errors(model, case, images, kwargs, message):
    images = {"PATHS": case, "NIBABEL": [nib.load(str(p)) for p in case],
              "MIXED": [nib.load(str(case[0])), case[1]]}.get(images, images) if isinstance(images, str) else images
    with pytest.raises(MedTextSegError, match=message) as error:
        segment(images, "the prostate gland", model, **kwargs)
    assert "\n" not in str(error.value)
