"""Training: it learns what the text says, resumes exactly after a crash, and runs under torchrun (DDP)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from medtextseg.config import Config
from medtextseg.data.layout import load_dataset
from medtextseg.models.trained import load_checkpoint
from medtextseg.training import inputs as inputs_module
from medtextseg.training.engine import Trainer, train
from medtextseg.training.steps.standard import StandardStep

TINY_2D = ["model.channels=[4,8,16]", "model.strides=[[1,1],[2,2],[2,2]]", "data.patch_size=[48,48]",
           "train.batch_images=2", "data.prompts_per_image=2", "train.val_every=2", "train.val_cases=1",
           "train.warmup_steps=1"]


def tiny_config(dataset, *extra):
    return Config.load("default_2d", [*TINY_2D, f"data.root={dataset}", *extra])


def test_run_folder_has_config_log_and_checkpoints(dataset_2d, tmp_path):
    run = train(tiny_config(dataset_2d, "train.steps=2"), tmp_path / "run", progress=False)
    assert Config.load(run / "config.yaml") == tiny_config(dataset_2d, "train.steps=2")
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert log[0]["event"] == "start" and log[-1]["event"] == "end"
    assert any("val_dice" in line for line in log)
    assert (run / "last.pt").is_file() and (run / "best.pt").is_file()
    # the text whitening (on in default_2d) was fitted on the training prompts before step 1 and kept
    transform = load_checkpoint(run / "best.pt")["model"]["text_summary.pooled_whitening.transform"]
    assert not torch.allclose(transform, torch.eye(transform.shape[0]))


def test_existing_run_is_not_overwritten(dataset_2d, tmp_path):
    train(tiny_config(dataset_2d, "train.steps=1"), tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match=r"a run already exists here; pass --resume"):
        train(tiny_config(dataset_2d, "train.steps=1"), tmp_path / "run", progress=False)


def test_killed_run_resumes_exactly(dataset_2d, tmp_path, monkeypatch):
    """Crash after step 3 (checkpoint at step 2), resume to step 4: same weights as an uninterrupted run."""
    config = tiny_config(dataset_2d, "train.steps=4")
    reference = torch.load(train(config, tmp_path / "straight", progress=False) / "last.pt", weights_only=False)

    original = StandardStep.learn

    def crash_at_step_4(self, batch, step):
        if step == 3:
            raise RuntimeError("simulated power cut")
        return original(self, batch, step)

    monkeypatch.setattr(StandardStep, "learn", crash_at_step_4)
    with pytest.raises(RuntimeError, match="simulated power cut"):
        train(config, tmp_path / "crashed", progress=False)
    assert torch.load(tmp_path / "crashed" / "last.pt", weights_only=False)["step"] == 2
    with open(tmp_path / "crashed" / "log.jsonl", "a") as log:  # a kill in the middle of writing a line
        log.write('{"step": 3, "lo')
    monkeypatch.setattr(StandardStep, "learn", original)
    resumed = torch.load(train(config, tmp_path / "crashed", resume=True, progress=False) / "last.pt",
                         weights_only=False)
    assert resumed["step"] == reference["step"] == 4
    for name, tensor in reference["model"].items():
        assert torch.equal(resumed["model"][name], tensor), f"{name} differs after resume"
    steps = [json.loads(line)["step"] for line in (tmp_path / "crashed" / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)  # lines written after the checkpoint were dropped, not duplicated


def test_same_seed_trains_the_same_weights(dataset_3d, tmp_path):
    """Seeded runs are bit-identical on the CPU: the 3D default (spatial FiLM, whitening, an image's prompts
    sharing its encoder) shrunk to seconds. (At full size the default was not, until the shared features were
    gathered with index_select and trained 2 images at a time; this small model was identical either way.)"""
    config = Config.load("default", [f"data.root={dataset_3d}", "model.channels=[4,8,16]",
                                     "model.strides=[[1,1,1],[2,2,1],[2,2,2]]", "train.steps=3",
                                     "train.val_every=3", "train.val_cases=1", "train.warmup_steps=1"])
    first, second = (torch.load(train(config, tmp_path / name, progress=False) / "last.pt", weights_only=False)
                     for name in ("first", "second"))
    for name, tensor in first["model"].items():
        assert torch.equal(second["model"][name], tensor), f"{name} differs between two runs with one seed"


def test_resume_without_checkpoint_is_refused(dataset_2d, tmp_path):
    with pytest.raises(ValueError, match=r"nothing to resume \(no last.pt\)"):
        train(tiny_config(dataset_2d), tmp_path / "new", resume=True, progress=False)


def test_config_must_match_dataset(dataset_2d, dataset_3d, tmp_path):
    # a 2D model trains on a 3D dataset's slices (tests/test_slices.py); a 3D model cannot train on slices
    config = Config.load("default", ["model.channels=[4,8]", "model.strides=[[1,1,1],[2,2,2]]",
                                     "data.patch_size=[16,16,8]", f"data.root={dataset_2d}"])
    with pytest.raises(ValueError, match=r"'model.spatial_dims' is 3 but the dataset .* is 2D"):
        train(config, tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match=r"'model.in_channels' is 2 but .*declares 3 channels"):
        train(tiny_config(dataset_2d, "model.in_channels=2"), tmp_path / "run2", progress=False)


def test_torchrun_two_processes_with_gloo(dataset_2d, tmp_path):
    run = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
               "-m", "medtextseg.cli", "train", "--data", str(dataset_2d), "--out", str(run), "--preset", "default_2d",
               *[arg for item in TINY_2D for arg in ("--set", item)], "--set", "train.batch_images=1",
               "--set", "train.steps=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert log[0]["world_size"] == 2
    assert sum(1 for line in log if line.get("event") == "start") == 1  # rank 0 alone writes
    state = torch.load(run / "last.pt", weights_only=False)
    assert state["step"] == 2 and not any(k.startswith("module.") for k in state["model"])


def test_text_guided_model_beats_text_blind_on_held_out_referring_prompts(tmp_path):
    """Train both models the same steps on referring prompts of synthetic 2D slices (under a minute each), then score
    held-out cases with two or more lesions, where only the words say which lesion is meant."""
    from medtextseg.data.synthetic import make_synthetic_dataset
    from medtextseg.training.validation import validation_dice

    dataset = make_synthetic_dataset(tmp_path / "data", num_cases=48, spatial_dims=2, seed=3)
    layout = load_dataset(dataset)
    scores = {}
    for name, preset in (("text", "default_2d"), ("blind", "image_only_2d")):
        config = Config.load(preset, [
            "model.channels=[8,16,32]", "model.strides=[[1,1],[2,2],[2,2]]", "data.patch_size=[48,48]",
            f"data.root={dataset}", "train.steps=1200", "train.val_every=5000", "train.val_cases=1",
            "train.lr=0.003", "train.batch_images=2", "data.prompts_per_image=8",
            "data.kind_weights={single: 1.0, all: 0.0, absent: 0.0, anatomy: 0.0}"])
        trainer = Trainer(config, tmp_path / name, progress=False)
        trainer.run()
        held_out = inputs_module.prepare_cases(layout, layout.splits["test"], config, False, "")
        for case in held_out:
            case.prompts = [p for p in case.prompts if p.kind == "single" and p.meta["n_lesions"] >= 2]
        held_out = [case for case in held_out if case.prompts]
        assert sum(len(case.prompts) for case in held_out) >= 10
        scores[name] = validation_dice(trainer.model, held_out, trainer.text, config.data.patch_size)["val_dice"]
    print(f"held-out referring Dice (2+ lesions): text-guided {scores['text']:.3f}, text-blind {scores['blind']:.3f}")
    assert scores["text"] > scores["blind"] + 0.1, scores


def test_progress_into_a_log_file_is_a_line_every_5_percent_and_after_each_validation(monkeypatch):
    """Under ``nohup ... > log`` or a cluster job a rich bar is drawn only when it stops: lines instead."""
    import io

    from medtextseg.training.progress import StepProgress

    monkeypatch.setattr(sys, "stdout", io.StringIO())  # not a terminal, whatever runs the tests
    stream = io.StringIO()
    progress = StepProgress("train", 100, 0, True, stream)
    for step in range(1, 101):
        progress.update(step, {"val_dice": 0.5} if step % 33 == 0 else None)
    progress.stop()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 20 + 3  # steps 5, 10, ..., 100 and the validations at 33, 66, 99
    assert lines[0].startswith("train 5/100 (5%) 0:00:00 elapsed, ") and lines[0].endswith(" remaining")
    assert [line for line in lines if "val Dice" in line] == [line for line in lines if line.split()[1] in
                                                               ("33/100", "66/100", "99/100")]
    assert lines[-1].startswith("train 100/100 (100%)") and "0:00:00 remaining" in lines[-1]

    resumed = io.StringIO()  # a resumed run counts from where it starts
    progress = StepProgress("co-train", 100, 50, True, resumed)
    for step in range(51, 101):
        progress.update(step)
    assert resumed.getvalue().splitlines()[0].startswith("co-train 55/100 (55%)")
    assert not StepProgress("train", 100, 0, False, stream).plain  # off: nothing at all


def test_loops_into_a_log_file_write_a_line_every_5_percent(monkeypatch, capsys):
    """Evaluation, dataset checks and preparation (``progress_bar``) write lines where rich would draw nothing."""
    import io

    from medtextseg.utils.progress import progress_bar

    monkeypatch.setattr(sys, "stdout", io.StringIO())
    with progress_bar(list(range(40)), "evaluating test") as items:
        assert list(items) == list(range(40))  # the items, unchanged
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 20 and lines[0].startswith("evaluating test 2/40 (5%)")
    assert lines[-1].startswith("evaluating test 40/40 (100%)")
    with progress_bar(iter(range(3)), "unsized") as items:  # no length: no lines, the items as they are
        assert list(items) == [0, 1, 2]
    with progress_bar(range(3), "off", show=False) as items:
        assert list(items) == [0, 1, 2]
    with progress_bar(list(range(40)), "checking dataset", transient=True) as items:  # leaves no trace
        assert list(items) == list(range(40))
    assert capsys.readouterr().err == ""


def test_writing_a_dataset_into_a_log_file_writes_progress_lines(monkeypatch, capsys, tmp_path):
    """``medtextseg synth`` and the converters (``DatasetWriter.convert_each``) report through ``progress_bar``
    too, so a long conversion under ``nohup`` shows how far it is."""
    import io

    from medtextseg.converters.writer import DatasetWriter
    from medtextseg.data.synthetic import make_synthetic_dataset

    monkeypatch.setattr(sys, "stdout", io.StringIO())
    make_synthetic_dataset(tmp_path / "synth", num_cases=3, spatial_dims=2, progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in lines] == [f"Writing 3 synthetic cases {n}/3" for n in (1, 2, 3)]
    writer = DatasetWriter(tmp_path / "converted", "demo", ["T2W"], {"background": 0, "lesion": 1}, spatial_dims=2)
    converted = writer.convert_each(["a", "b"], str.upper, lambda item: item, progress="converting")
    assert converted == {"a": "A", "b": "B"}
    assert capsys.readouterr().err.splitlines()[-1].startswith("converting 2/2 (100%)")
