"""A 2D model on volumes: slices drawn for training (2.5D: neighbours as channels), and volumes predicted slice by
slice with the masks on the volume's own grid."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.metrics import compute_dice
from torch import nn

from medtextseg.config import Config
from medtextseg.data.dataset import PreparedCase, PromptSampleDataset
from medtextseg.data.layout import PromptRecord, load_dataset
from medtextseg.data.slices import FOREGROUND_SLICES, axial_slice, draw_slice, slice_stack
from medtextseg.inference.predictor import Predictor
from medtextseg.models.checkpoint import save_checkpoint
from medtextseg.models.factory import create_model
from medtextseg.models.input_spec import InputSpec
from medtextseg.models.output import ModelOutput
from medtextseg.training.engine import train
from medtextseg.utils.errors import MedTextSegError

TINY_2D = ["model.channels=[4,8,16]", "model.strides=[[1,1],[2,2],[2,2]]", "data.patch_size=[48,48]",
           "train.warmup_steps=1"]


def coded_volume(channels: int = 2, slices: int = 5) -> torch.Tensor:
    """[C, 3, 4, Z] whose voxels say where they are: 100 x channel + slice."""
    codes = 100 * torch.arange(channels)[:, None] + torch.arange(slices)[None]  # [C, Z]
    return codes[:, None, None, :].expand(channels, 3, 4, slices).float()


@pytest.mark.parametrize("context", [0, 1, 2])
def test_slice_stack_gives_each_channel_its_neighbours_in_order(context):
    volume = coded_volume()
    stacked = slice_stack(volume, context)
    assert stacked.shape == (5, 2 * (2 * context + 1), 3, 4)
    for z in range(5):
        # channel-major: channel c's slices z-k .. z+k (clamped to the volume), then channel c+1's
        expected = [100 * c + min(max(z + offset, 0), 4) for c in range(2) for offset in range(-context, context + 1)]
        assert stacked[z, :, 0, 0].tolist() == expected
        assert torch.equal(axial_slice(volume, z, context), stacked[z])  # training reads what prediction reads


def test_draw_slice_oversamples_the_targets_and_reaches_every_slice():
    targets = torch.zeros(3, 8, 8, 20)
    targets[0, 2:4, 2:4, 12] = 1  # a small target on slice 12 and a larger one on slice 13
    targets[0, 2:6, 2:6, 13] = 1
    # targets 1 and 2 are empty: an absent prompt, and one that the volume does not hold either
    rng = np.random.default_rng(0)
    draws = np.array([draw_slice(targets, rng) for _ in range(6000)])
    on_target = np.isin(draws, [12, 13]).mean()
    assert on_target == pytest.approx(FOREGROUND_SLICES + (1 - FOREGROUND_SLICES) * 2 / 20, abs=0.02)
    assert (draws == 13).sum() > 3 * (draws == 12).sum()  # slices weighed by the target's voxels in them
    assert set(draws) == set(range(20))  # and background slices still come
    empty = torch.zeros(2, 8, 8, 20)
    assert set(draw_slice(empty, rng) for _ in range(400)) == set(range(20))


@pytest.mark.parametrize("context", [0, 1])
def test_training_items_are_slices_with_their_own_targets(context):
    """An item of a volume for a 2D patch is one axial slice (with its neighbours), and its targets are that
    slice's: the image's slice code and the target's slice agree, and targets show on most items."""
    slices = 12
    image = coded_volume(channels=3, slices=slices)[:, :1, :1].expand(3, 16, 16, slices).contiguous()
    label = torch.zeros(16, 16, slices, dtype=torch.long)
    label[4:8, 4:8, 3:5] = 1  # target 1 on slices 3-4; target 2 on slice 9
    label[10:12, 10:12, 9] = 2
    prompts = [PromptRecord("coded", "one", (1,), "single"), PromptRecord("coded", "two", (2,), "single")]
    case = PreparedCase("coded", image, label, {}, prompts)
    dataset = PromptSampleDataset([case] * 60, [16, 16], 2, {"single": 1.0}, flip_left_right=0.0,
                                  intensity_augmentation=False, seed=3, coordinates=True, slice_context=context)
    shown = 0
    for index in range(len(dataset)):
        item = dataset[index]
        assert item["image"].shape == (3 * (2 * context + 1) + 2, 16, 16)  # + 2 coordinate channels
        z = int(item["image"][context, 0, 0])  # channel 0's centre slice: its code is the slice index
        assert torch.equal(item["image"][:-2], axial_slice(image, z, context))
        for prompt, target in zip(item["prompts"], item["targets"][:, 0], strict=True):
            expected = label[..., z] == (1 if prompt == "one" else 2)
            assert torch.equal(target.bool(), expected)
            shown += bool(expected.any())
    assert shown >= 0.5 * 60  # with 2 of 12 slices holding a target, a uniform draw would show one in ~1/4


class CentreChannelModel(nn.Module):
    """A stand-in with a known answer: logit = 20 x (z-scored input channel ``channel``), so the mask is the
    voxels of that channel's slice above the volume's mean."""

    def __init__(self, channel: int) -> None:
        super().__init__()
        self.channel = channel
        self.unused = nn.Parameter(torch.zeros(1))
        self.input_spec = InputSpec(spatial_dims=2, in_channels=channel + 1)

    def forward(self, image, text, image_index=None, *, refine=True, network=None):
        logits = 20 * image[:, self.channel:self.channel + 1]
        return ModelOutput(logits=logits[image_index] if image_index is not None else logits)


def checkpoint_2d(folder: Path, overrides: tuple[str, ...] = ()) -> Path:
    config = Config.load("default_2d", ["model.channels=[4,8]", "model.strides=[[1,1],[2,2]]",
                                        "data.patch_size=[16,16]", "inference.min_component_voxels=0", *overrides])
    torch.manual_seed(0)
    model = create_model(config.model, 384)
    return save_checkpoint(folder / "model.pt", {"model": model.state_dict(), "config": config.model_dump(),
                                                 "text_dim": 384})


@pytest.fixture
def oblique_volume(tmp_path) -> Path:
    """20 x 24 x 12 voxels stored L, P, S and tilted; every voxel different, so a slice out of place shows."""
    angle = np.deg2rad(15)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                               [0, 0, 1]]) @ np.diag([-0.9, -0.8, 2.5])
    affine[:3, 3] = [40.0, 25.0, -30.0]
    data = np.random.default_rng(0).normal(size=(20, 24, 12)).astype(np.float32) + np.arange(12) * 0.3
    path = tmp_path / "t2w.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


@pytest.mark.parametrize("context", [0, 1])
def test_2d_model_predicts_a_volume_slice_by_slice_on_its_grid(tmp_path, oblique_volume, context):
    """Through RAS reorientation, slices, 2.5D stacking and inversion, each voxel's answer lands where it came
    from: a model reading channel j of the stack answers slice z with file slice z - k + j (clamped), on the
    file's own grid; with j = k, the slice itself."""
    channels = 2 * context + 1
    predictor = Predictor(checkpoint_2d(tmp_path, (f"model.in_channels={channels}",
                                                   f"data.slice_context={context}")))
    raw = np.asanyarray(nib.load(str(oblique_volume)).dataobj)
    for channel in range(channels):
        predictor.model = CentreChannelModel(channel)
        [result] = predictor.predict([oblique_volume], ["anything"])
        # file axis 2 is S (as in RAS): the model's slice z is file slice z
        shifted = raw[..., np.clip(np.arange(12) + channel - context, 0, 11)]
        np.testing.assert_array_equal(result.mask.astype(bool), shifted > raw.mean())
    result.save(tmp_path / "mask.nii.gz", tmp_path / "probability.nii.gz")
    source, mask = nib.load(str(oblique_volume)), nib.load(str(tmp_path / "mask.nii.gz"))
    assert mask.shape == source.shape == (20, 24, 12)
    np.testing.assert_array_equal(mask.affine, source.affine)
    assert nib.load(str(tmp_path / "probability.nii.gz")).shape == source.shape


def test_2d_model_volume_answer_is_its_slices_answers(tmp_path, dataset_3d):
    """A 2D network on a synthetic volume (stored LPS, tilted), several windows of several slices per network
    call: the volume's probabilities, in RAS order, are what the network gives each prepared slice alone (read as
    is and mirrored left-right, the default)."""
    from medtextseg.data.prompts import swap_left_right
    from medtextseg.data.transforms import preparation
    from medtextseg.evaluation.runner import to_ras
    from medtextseg.inference.sliding import prompt_maps

    predictor = Predictor(checkpoint_2d(tmp_path, ("inference.sw_batch_size=5", "inference.presence_threshold=0")))
    images = sorted((dataset_3d / "imagesTr").glob("synth_000_*.nii.gz"))
    prompts = ["the prostate gland", "all lesions"]
    results = predictor.predict(images, prompts)
    geometry = nib.load(str(images[0]))
    prepared = preparation()({"image": [str(p) for p in images]})["image"].as_tensor()
    assert prepared.shape[1:] == (48, 48, 16)
    text, mirrored = predictor.text(prompts), predictor.text([swap_left_right(p) for p in prompts])
    assert predictor.config.inference.mirror_axes == [0]  # the default: each slice also read mirrored left-right
    expected = torch.stack([prompt_maps(predictor.model, prepared[..., z], text, [16, 16], presence_threshold=0.0,
                                        mirror_axes=[0], mirrored_text=mirrored, uncertainty=False).probability
                            for z in range(16)], dim=-1)  # [P, X, Y, Z]
    assert expected.std() > 0.01  # an answer that varies, so that a misplaced slice or window shows
    for result, own in zip(results, expected, strict=True):
        assert result.probability.shape == geometry.shape
        np.testing.assert_allclose(to_ras(result.probability, geometry.affine), own.numpy(), atol=1e-5)


@pytest.mark.parametrize("preset", ["filmcbn", "textbcs"])
def test_the_2d_method_presets_predict_volumes(tmp_path, oblique_volume, preset):
    """FiLM/CBN (batch norm, fusion at the bottleneck) and TextBCS (encoder cross-attention, evidential head: its
    uncertainty is blended slice by slice too) give every map on the volume's grid."""
    config = Config.load(preset, ["model.channels=[4,8,16,16]", "data.patch_size=[16,16]", "model.in_channels=1"])
    torch.manual_seed(0)
    model = create_model(config.model, 384)
    checkpoint = save_checkpoint(tmp_path / "model.pt", {"model": model.state_dict(), "config": config.model_dump(),
                                                         "text_dim": 384})
    results = Predictor(checkpoint).predict([oblique_volume], ["the prostate gland", "the left lesion"])
    for result in results:
        assert result.mask.shape == result.probability.shape == result.uncertainty.shape == (20, 24, 12)
    assert results[0].uncertainty_kind == ("dirichlet" if preset == "textbcs" else "entropy")


def test_a_2d_file_still_works_and_a_25d_model_refuses_it(tmp_path, dataset_2d):
    images = sorted((dataset_2d / "imagesTr").glob("synth_000_*.nii.gz"))
    [result] = Predictor(checkpoint_2d(tmp_path)).predict(images, ["the prostate gland"])
    assert result.mask.shape == nib.load(str(images[0])).shape
    predictor = Predictor(checkpoint_2d(tmp_path, ("model.in_channels=9", "data.slice_context=1")))
    with pytest.raises(MedTextSegError, match=r"synth_000_0000.nii.gz: a single slice \(shape 48 x 48 x 1\) but "
                                              r"the model reads 3 neighbouring slices of each channel "
                                              r"\(data.slice_context=1\); give the whole volume"):
        predictor.predict(images, ["the prostate gland"])


def test_slice_context_config_checks(dataset_2d, dataset_3d, tmp_path):
    with pytest.raises(MedTextSegError, match=r"data.slice_context=1 stacks neighbouring slices as the channels "
                                              r"of a 2D model, but model.spatial_dims=3"):
        Config.load("default", ["data.slice_context=1"])
    with pytest.raises(MedTextSegError, match=r"model.in_channels=3 is not a multiple of 5"):
        Config.load("default_2d", ["data.slice_context=2"])
    config = Config.load("default_2d", [*TINY_2D, "model.in_channels=6", "data.slice_context=0",
                                        f"data.root={dataset_3d}", "train.steps=1"])
    with pytest.raises(MedTextSegError, match=r"'model.in_channels' is 6 but .*declares 3 channels"):
        train(config, tmp_path / "a", progress=False)
    config = Config.load("default_2d", [*TINY_2D, "model.in_channels=3", "data.slice_context=1",
                                        f"data.root={dataset_3d}", "train.steps=1"])
    with pytest.raises(MedTextSegError, match=r"'model.in_channels' is 3 but .*declares 3 channels \(T2W, ADC, "
                                              r"HBV\) x 3 slices \(data.slice_context=1\) = 9"):
        train(config, tmp_path / "b", progress=False)
    config = Config.load("default_2d", [*TINY_2D, "model.in_channels=9", "data.slice_context=1",
                                        f"data.root={dataset_2d}", "train.steps=1"])
    with pytest.raises(MedTextSegError, match=r"'data.slice_context' is 1 but the dataset .* is 2D"):
        train(config, tmp_path / "c", progress=False)
    config = Config.load("default", ["model.channels=[4,8]", "model.strides=[[1,1,1],[2,2,2]]",
                                     "data.patch_size=[16,16,8]", f"data.root={dataset_2d}"])
    with pytest.raises(MedTextSegError, match=r"'model.spatial_dims' is 3 but the dataset .* is 2D"):
        train(config, tmp_path / "d", progress=False)


def test_plan_of_a_2d_model_on_a_3d_dataset(dataset_3d):
    from medtextseg.data.planning import planned_config

    config, plan = planned_config("default_2d", [f"data.root={dataset_3d}", "data.slice_context=1"])
    assert len(plan.spacing) == 2 and len(plan.patch_size) == 2  # the axial plane; slices keep their spacing
    assert config.model.in_channels == 9 and config.image_channels == 3
    assert any("data.slice_context=1" in note for note in plan.notes)


def test_25d_model_trains_on_volumes_and_predicts_one(dataset_3d, tmp_path):
    """2.5D end to end: planned (9 input channels), trained and validated on volumes, a volume predicted."""
    from medtextseg.data.planning import planned_config

    config, _ = planned_config("default_2d", ["model.channels=[4,8,16]", "data.patch_size=[48,48]",
                                              f"data.root={dataset_3d}", "data.slice_context=1", "train.steps=2",
                                              "train.val_every=2", "train.val_cases=1", "train.warmup_steps=1"])
    run = train(config, tmp_path / "run", progress=False)
    log = (run / "log.jsonl").read_text()
    assert '"val_dice"' in log
    images = sorted((dataset_3d / "imagesTr").glob("synth_000_*.nii.gz"))
    results = Predictor(run).predict(images, ["the prostate gland", "all lesions"])
    source = nib.load(str(images[0]))
    assert [r.mask.shape for r in results] == [source.shape] * 2
    np.testing.assert_array_equal(results[0].affine, source.affine)


def test_2d_model_trained_on_volumes_segments_held_out_volumes(tmp_path):
    """A hundred steps (seconds) of a tiny 2D model on the axial slices of a small 3D synthetic set, anatomy
    prompts only; scored as volumes on held-out cases through the predictor, the gland is found far better than
    by the untrained model."""
    from medtextseg.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", num_cases=12, spatial_dims=3, seed=4)
    config = Config.load("default_2d", [*TINY_2D, f"data.root={data}", "train.steps=100", "train.batch_images=4",
                                        "data.prompts_per_image=2",
                                        "data.kind_weights={anatomy: 1, single: 0, all: 0, absent: 0}",
                                        "train.val_every=100", "train.val_cases=1", "train.lr=0.01"])
    run = train(config, tmp_path / "run", progress=False)
    trained = Predictor(run)
    untrained = Predictor(run)
    torch.manual_seed(0)
    untrained.model.load_state_dict(create_model(config.model, untrained.text_dim).state_dict())
    layout = load_dataset(data)
    scores = {"trained": [], "untrained": []}
    for case in layout.split("test"):
        [prompt] = [p for p in case.prompts if p.kind == "anatomy" and "gland" in p.prompt][:1] or \
            [p for p in case.prompts if p.kind == "anatomy"][:1]
        label = np.asanyarray(nib.load(str(case.label_path)).dataobj)
        target = torch.from_numpy(np.isin(label, prompt.target))[None, None].float()
        for name, predictor in (("trained", trained), ("untrained", untrained)):
            [result] = predictor.predict(case.image_paths, [prompt.prompt])
            assert result.mask.shape == label.shape
            mask = torch.from_numpy(result.mask)[None, None].float()
            scores[name].append(float(compute_dice(mask, target, include_background=True)))
    # measured: 0.95, 0.96, 0.95 against 0.44, 0.56, 0.42 (the untrained model answers most of the volume)
    assert np.mean(scores["trained"]) > 0.85 and np.mean(scores["trained"]) > np.mean(scores["untrained"]) + 0.3, scores
