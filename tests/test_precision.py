"""Mixed precision in training: float16 on a GPU, bfloat16 on a CPU that computes it natively, float32 elsewhere."""

from __future__ import annotations

import json

import pytest
import torch

from medtextseg.config import Config
from medtextseg.models.output import ModelOutput
from medtextseg.models.trained import load_checkpoint
from medtextseg.training.engine import train
from medtextseg.utils import precision
from medtextseg.utils.precision import cpuinfo_has_bf16, inference_dtype, mixed_precision_dtype

TINY_2D = ["model.channels=[4,8,16]", "model.strides=[[1,1],[2,2],[2,2]]", "data.patch_size=[48,48]",
           "train.batch_images=2", "data.prompts_per_image=2", "train.val_every=3", "train.val_cases=1",
           "train.warmup_steps=1", "train.steps=3"]


def test_cpu_flags_decide_bf16():
    assert cpuinfo_has_bf16("processor : 0\nflags : fpu sse avx512f avx512_bf16 amx_tile\n")
    assert cpuinfo_has_bf16("flags\t\t: fpu amx_bf16\n")
    assert not cpuinfo_has_bf16("processor : 0\nflags : fpu sse avx2 avx512f\n")  # AVX-512 alone emulates it
    assert not cpuinfo_has_bf16("Processor : ARMv8\nFeatures : fp asimd\n")


@pytest.mark.parametrize(("amp", "device", "native", "expected"), [
    (True, "cuda", False, torch.float16), (True, "cpu", True, torch.bfloat16), (True, "cpu", False, None),
    (False, "cpu", True, None), (False, "cuda", True, None), (True, "mps", True, None)])
def test_the_precision_follows_amp_and_the_hardware(monkeypatch, amp, device, native, expected):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert mixed_precision_dtype(amp, torch.device(device)) is expected


@pytest.mark.parametrize(("kind", "device", "native", "expected"), [
    ("auto", "cpu", True, torch.bfloat16), ("auto", "cpu", False, None), ("auto", "cuda", False, torch.float16),
    ("none", "cpu", True, None), ("bf16", "cpu", False, torch.bfloat16), ("fp16", "cuda", False, torch.float16)])
def test_prediction_precision_auto_chooses_as_training_does(monkeypatch, kind, device, native, expected):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert inference_dtype(kind, torch.device(device)) is expected


@pytest.mark.parametrize(("kind", "message"), [("fp16", "runs on a GPU"), ("half", "use one of auto, none")])
def test_prediction_precision_refuses_fp16_on_the_cpu_and_unknown_kinds(kind, message):
    with pytest.raises(ValueError, match=message):
        inference_dtype(kind, torch.device("cpu"))


def test_model_output_float_casts_every_map():
    half = torch.zeros(1, 1, 4, 4, dtype=torch.bfloat16)
    output = ModelOutput(logits=half, presence=torch.zeros(1, dtype=torch.bfloat16), deep_supervision=[half],
                         similarity={"s0": half}, evidence=half).float()
    tensors = [output.logits, output.presence, *output.deep_supervision, *output.similarity.values(), output.evidence]
    assert all(t.dtype == torch.float32 for t in tensors)


def _weights(run):
    return torch.cat([v.flatten().float() for v in load_checkpoint(run / "last.pt")["model"].values()])


def test_training_in_bf16_on_the_cpu_logs_it_and_learns_in_float32_weights(dataset_2d, tmp_path, monkeypatch):
    """Forced on (a CPU without bf16 units emulates it, slowly): the log names the precision, the weights and the
    loss stay float32 and finite, and the steps differ from float32's."""
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    runs = {}
    for amp in (True, False):
        config = Config.load("default_2d", [*TINY_2D, f"data.root={dataset_2d}", f"train.amp={str(amp).lower()}"])
        runs[amp] = run = train(config, tmp_path / f"amp_{amp}", progress=False)
        log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        assert log[0]["precision"] == ("bfloat16" if amp else "float32")
        losses = torch.tensor([line["loss"] for line in log if "loss" in line])
        assert len(losses) and torch.isfinite(losses).all()
        assert all(v.dtype == torch.float32 for v in load_checkpoint(run / "last.pt")["model"].values()
                   if v.is_floating_point())
    mixed, full = _weights(runs[True]), _weights(runs[False])
    assert torch.isfinite(mixed).all() and not torch.equal(mixed, full)
    assert torch.allclose(mixed, full, atol=0.05)  # three small steps apart in rounding, not in direction
