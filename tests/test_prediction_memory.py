"""Prediction whose memory does not grow with the number of prompts (issue 18): the answers streamed a pass and a
group at a time equal those of all prompts inverted at once; peak RSS stays flat from 12 to 48 prompts; a memory
estimate refuses, in one line naming the setting that makes it fit, what would not fit; the progress bar stays
off where stderr is no terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Invertd
from typer.testing import CliRunner

from helpers import text_checkpoint
from medtextseg import MedTextSegError, load_model
from medtextseg.cli import app
from medtextseg.data.io import read_geometry
from medtextseg.data.prompts import swap_left_right
from medtextseg.data.transforms import preparation
from medtextseg.inference import memory
from medtextseg.inference.memory import GB, resampled_shape
from medtextseg.inference.postprocessing import remove_small_components
from medtextseg.inference.predictor import Predictor
from medtextseg.inference.sliding import prompt_maps
from medtextseg.utils import precision
from test_api_arrays import oblique_channels

PROMPTS = ["the prostate gland", "the lesion in the left PZ", "all lesions", "the peripheral zone",
           "the transition zone"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return text_checkpoint(tmp_path_factory.mktemp("memory_model"))


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> list[Path]:
    return oblique_channels(tmp_path_factory.mktemp("memory_case"))


def all_at_once(predictor: Predictor, paths: list[Path], prompts: list[str]):
    """The former prediction: every prompt's maps on the model's grid, then one Invertd of all of them."""
    config = predictor.config
    transform = preparation(config.data.spacing)
    image = transform({"image": [str(p) for p in paths]})["image"]
    mirrored = predictor.text([swap_left_right(p) for p in prompts])  # the default's left-right mirrored pass
    maps = prompt_maps(predictor.model, image.as_tensor().float(), predictor.text(prompts), config.data.patch_size,
                       config.inference.overlap, config.inference.presence_threshold,
                       mirror_axes=config.inference.mirror_axes, mirrored_text=mirrored)
    prediction = MetaTensor(torch.cat([maps.probability, maps.uncertainty]), meta=image.meta)
    prediction.applied_operations = image.applied_operations
    inverted = Invertd("prediction", transform, orig_keys="image", nearest_interp=False)(
        {"prediction": prediction, "image": image})["prediction"]
    inverted = np.clip(inverted.as_tensor().numpy().astype(np.float32), 0.0, 1.0)
    return inverted[: len(prompts)], inverted[len(prompts):]


def test_streamed_answers_equal_all_prompts_inverted_at_once(checkpoint, case, monkeypatch):
    predictor = load_model(checkpoint, "cpu")
    probabilities, uncertainties = all_at_once(predictor, case, PROMPTS)
    inverted = []
    original = Predictor._invert

    def counting(self, stacked, *args):
        inverted.append(stacked.shape[0])
        return original(self, stacked, *args)

    monkeypatch.setattr(Predictor, "_invert", counting)
    monkeypatch.setattr(memory, "INVERT_GROUP_BYTES", 2 * 4 * 18 * 22 * 10 * 2)  # two prompts' two maps a group
    predictor.set_inference(["inference.prompt_chunk=3"])
    for answers in (predictor.predict(case, PROMPTS), list(predictor.iter_predict(case, PROMPTS))):
        assert [a.prompt for a in answers] == PROMPTS
        for answer, probability, uncertainty in zip(answers, probabilities, uncertainties, strict=True):
            assert 0 < answer.voxels < answer.mask.size
            np.testing.assert_allclose(answer.probability, probability, atol=1e-6, rtol=0)
            np.testing.assert_allclose(answer.uncertainty, uncertainty, atol=1e-6, rtol=0)
            inference = predictor.config.inference
            np.testing.assert_array_equal(answer.mask, remove_small_components(
                probability > inference.threshold, inference.min_component_voxels))
    # passes of 3 and 2 prompts, inverted two at a time: probability and uncertainty of each -> 4 maps, 2, then 4
    assert inverted == [4, 2, 4] * 2


PEAK_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    from medtextseg import load_model
    predictor = load_model(sys.argv[1], "cpu")
    predictor.set_inference(["inference.prompt_chunk=4"])
    prompts = [f"structure number {k}" for k in range(int(sys.argv[3]))]
    predictor.text(prompts)  # the text encoder's own memory is not the maps'
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    voxels = 0
    for answer in predictor.iter_predict(sys.argv[2:3] * 2, prompts, uncertainty=False):
        voxels += answer.voxels  # each answer let go as the next comes, as predict's writer does
    print(json.dumps({"before": before, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
""")


def test_peak_memory_does_not_grow_with_the_number_of_prompts(tmp_path):
    """A 1 mm file of 112 x 112 x 80 voxels (4 MB a map) on a 4 mm model grid, 4 prompts a pass: predicting 32
    prompts peaks where 4 do (holding all 32 answers' maps and masks would add about 150 MB, inverting them at once
    in float64 as before another 250 MB).

    glibc's heap is set to return large blocks (``MALLOC_MMAP_THRESHOLD_``): otherwise its fragmentation, not
    what the prediction holds, adds a few tens of MB that depend on the order of allocations."""
    checkpoint_4mm = text_checkpoint(tmp_path / "coarse", overrides=("data.spacing=[4,4,4]",))
    path = tmp_path / "large_0000.nii.gz"
    volume = np.random.default_rng(0).normal(0, 1, (112, 112, 80)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.diag([1.0, 1.0, 1.0, 1.0])), str(path))
    script = tmp_path / "peak.py"
    script.write_text(PEAK_SCRIPT)
    peaks = {}
    for prompts in (4, 32):
        done = subprocess.run([sys.executable, str(script), str(checkpoint_4mm), str(path), str(prompts)],
                              capture_output=True, text=True, check=True,
                              env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        peaks[prompts] = (figures["peak"] - figures["before"]) / 1024  # MB grown while predicting
    assert peaks[32] - peaks[4] < 24, peaks


def test_an_estimate_above_the_bound_is_refused_in_one_line_naming_the_setting(checkpoint, case):
    predictor = load_model(checkpoint, "cpu")
    plan = predictor._check_memory(read_geometry(case[0]), 2, 40, False, False, str(case[0]))
    leaner = plan.total - 1
    assert replace(plan, prompt_chunk=8).total < leaner  # fewer prompts a pass fit
    predictor.set_inference([f"inference.memory_limit_gb={leaner / GB}"])
    with pytest.raises(MedTextSegError) as refused:
        list(predictor.iter_predict(case, [f"structure {k}" for k in range(40)], uncertainty=False))
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{case[0]}: predicting needs about")
    assert "--set inference.prompt_chunk=8" in message and "inference.memory_limit_gb allows" in message
    # nothing fits: it says so
    predictor.set_inference(["inference.memory_limit_gb=1e-9"])
    with pytest.raises(MedTextSegError, match="crop it, or predict on a machine with more memory"):
        predictor.predict(case, PROMPTS[:1])


def test_the_command_refuses_before_writing_anything(checkpoint, case, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["predict", "-m", str(checkpoint), *[a for p in case for a in ("-i", str(p))],
                                      "-o", str(out), "-p", "the prostate gland", "--device", "cpu",
                                      "--set", "inference.memory_limit_gb=1e-9"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "error: " in result.output and "predicting needs about" in result.output
    assert not out.exists()


def test_predict_takes_sliding_window_settings_and_refuses_others(checkpoint, case, tmp_path):
    runner = CliRunner()
    inputs = [a for p in case for a in ("-i", str(p))]
    result = runner.invoke(app, ["predict", "-m", str(checkpoint), *inputs, "-o", str(tmp_path / "a"), "-p",
                                 "the prostate gland", "--device", "cpu", "--sw-batch-size", "3", "--overlap", "0.5",
                                 "--set", "inference.prompt_chunk=1"])
    assert result.exit_code == 0, result.output
    for arguments, expected in (
            (["--autocast", "fp16"], "inference.autocast fp16 runs on a GPU"),
            (["--overlap", "1.5"], "inference.overlap"),
            (["--set", "model.channels=[4]"], "prediction takes inference.* settings only"),
            (["--set", "inference.prompt_chunks=2"], "did you mean 'prompt_chunk'")):
        result = runner.invoke(app, ["predict", "-m", str(checkpoint), *inputs, "-o", str(tmp_path / "b"), "-p",
                                     "the prostate gland", "--device", "cpu", *arguments])
        assert result.exit_code == 2 and expected in result.output, (arguments, result.output)
        assert not (tmp_path / "b").exists()


def test_a_coarser_grid_still_answers_on_the_files_grid(checkpoint, case):
    predictor = load_model(checkpoint, "cpu")
    predictor.set_inference(["inference.spacing=[2.5,2.5,5]"])
    [answer] = predictor.predict(case, PROMPTS[:1])
    assert answer.mask.shape == answer.probability.shape == read_geometry(case[0]).shape
    with pytest.raises(MedTextSegError, match="inference.spacing"):
        predictor.set_inference(["inference.spacing=[2.5,2.5]"])  # a 3D model needs three values


def test_bf16_autocast_answers_close_to_float32(checkpoint, case):
    predictor = load_model(checkpoint, "cpu")
    predictor.set_inference(["inference.autocast=none"])
    full = predictor.predict(case, PROMPTS[:2])
    predictor.set_inference(["inference.autocast=bf16"])
    half = predictor.predict(case, PROMPTS[:2])
    for a, b in zip(full, half, strict=True):
        assert np.abs(a.probability - b.probability).max() < 0.05
        assert (a.mask != b.mask).mean() < 0.01


@pytest.mark.parametrize(("native", "same_as"), [(True, "bf16"), (False, "none")])
def test_auto_precision_is_bf16_only_on_a_cpu_with_bf16_units(checkpoint, case, monkeypatch, native, same_as):
    """The default, ``auto``: a CPU with bfloat16 units predicts in bf16, any other in float32 (where bf16
    would be emulated, more slowly)."""
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    predictor = load_model(checkpoint, "cpu")
    assert predictor.config.inference.autocast == "auto"
    answers = {}
    for kind in ("auto", same_as, "bf16" if same_as == "none" else "none"):
        predictor.set_inference([f"inference.autocast={kind}"])
        answers[kind] = [a.probability for a in predictor.predict(case, PROMPTS[:2])]
    other = next(kind for kind in answers if kind not in ("auto", same_as))
    assert all(np.array_equal(a, b) for a, b in zip(answers["auto"], answers[same_as], strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(answers["auto"], answers[other], strict=True))


def test_the_progress_bar_shows_only_on_a_terminal_or_when_asked(checkpoint, case, capsys):
    predictor = load_model(checkpoint, "cpu")
    predictor.predict(case, PROMPTS[:2])
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""  # pytest's stderr is no terminal
    predictor.progress = True
    predictor.predict(case, PROMPTS[:2])
    err = capsys.readouterr().err
    assert "memory estimate: about" in err and "window" in err  # the estimate, then the bar over windows


def test_progress_is_told_window_by_window_to_the_last_of_every_pass(checkpoint, case):
    predictor = load_model(checkpoint, "cpu")
    predictor.set_inference(["inference.prompt_chunk=2"])  # three prompts: two passes over the windows
    heard: list[tuple[int, int]] = []
    answers = predictor.predict(case, PROMPTS, on_progress=lambda done, total: heard.append((done, total)))
    assert [a.prompt for a in answers] == PROMPTS
    done, totals = [d for d, _ in heard], {t for _, t in heard}
    assert len(totals) == 1 and done == sorted(done) and done[-1] == totals.pop() and done[-1] % 2 == 0
    assert done[0] < done[-1] // 2  # told as the windows run, not once at the end
    assert list(predictor.iter_predict(case, PROMPTS[:1], on_progress=lambda *_: None))[0].prompt == PROMPTS[0]


def test_the_resampled_shape_is_the_one_preparation_gives(tmp_path):
    # file axis 0 runs along -y (0.5 mm), 1 along +z (1 mm), 2 along -x (2 mm): RAS x <- axis 2, y <- 0, z <- 1
    affine = np.array([[0, 0, -2.0, 10], [-0.5, 0, 0, 3], [0, 1.0, 0, -7], [0, 0, 0, 1]])
    path = tmp_path / "permuted.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((100, 60, 30), np.float32), affine), str(path))
    for spacing in ([1.0, 1.0, 3.0], [0.7, 1.3, 2.2], None):
        prepared = preparation(spacing)({"image": [str(path)]})["image"]
        assert resampled_shape((100, 60, 30), affine, spacing) == tuple(prepared.shape[1:]), spacing


@pytest.mark.parametrize("size", [[1, 1, 181, 217, 9], [1, 3, 37, 41, 19], [1, 1, 5, 7, 1]])  # last: a 2D image
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.filterwarnings("ignore:Since version 1.3.0, affine_grid behavior has changed for unit-size grids")
def test_the_sampling_grid_made_a_slab_at_a_time_is_torchs(size, align_corners):
    from medtextseg.inference.inversion import _slab_grid

    theta = torch.randn(1, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(len(size) + size[2]))
    expected = torch.nn.functional.affine_grid(theta, size, align_corners=align_corners)
    assert torch.equal(_slab_grid(theta, size, align_corners, slab_bytes=4096), expected)
