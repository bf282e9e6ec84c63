"""Align-then-Refine machinery: the loss-weight schedule with its stability gate, the confidence-gated refiner,
and the second stage's selective weight transfer."""

from __future__ import annotations

import json

import pytest
import torch

from medtextseg.config import Config, TermSchedule
from medtextseg.models.factory import create_model
from medtextseg.models.refiner import ConfidenceGatedRefiner
from medtextseg.models.trained import load_checkpoint
from medtextseg.text.batch import TextBatch
from medtextseg.training.engine import train
from medtextseg.training.schedule import LossWeightSchedule
from medtextseg.utils.errors import MedTextSegError

AUX = TermSchedule(warmup_steps=80, ramp_steps=50, gate=True, stable_window=5, stable_change=0.05,
                   stable_val_dice=0.3, latest_start=130)


def test_warmup_then_ramp_without_gate():
    schedule = LossWeightSchedule({"heat": TermSchedule(warmup_steps=10, ramp_steps=4)})
    assert [schedule.factors(step)["heat"] for step in (0, 9, 10, 11, 13, 50)] == [0, 0, 0.25, 0.5, 1, 1]


def test_the_gate_holds_the_ramp_until_the_loss_plateaus_and_the_ramp_is_not_shifted():
    schedule = LossWeightSchedule({"heat": AUX})
    for step in range(90):  # a loss still falling by 10 % per step: never stable
        schedule.observe_loss(100 * 0.9**step)
        assert schedule.factors(step)["heat"] == 0.0
    for _ in range(10):  # a plateau: the last 5 steps vs the 5 before change by < 5 %
        schedule.observe_loss(1.0)
    # opened at step 100: the value the undelayed ramp has there, (100 - 80 + 1) / 50
    assert schedule.factors(100)["heat"] == pytest.approx(21 / 50)
    schedule.observe_loss(100.0)  # once open, it stays open
    assert schedule.factors(101)["heat"] == pytest.approx(22 / 50)
    assert schedule.opened == {"heat": 100}


def test_a_retested_gate_shuts_again_while_training_is_unstable_until_the_hard_start():
    """retest (the authors' per-epoch check): the same plateau opens both kinds of gate, but when the loss jumps
    the re-tested term goes off again where the latched one stays on; from latest_start both are on."""
    latched = LossWeightSchedule({"heat": AUX})
    retested = LossWeightSchedule({"heat": AUX.model_copy(update={"retest": True})})
    for schedule in (latched, retested):
        for _ in range(10):
            schedule.observe_loss(1.0)
    assert latched.factors(100)["heat"] == retested.factors(100)["heat"] == pytest.approx(21 / 50)
    for schedule in (latched, retested):
        for loss in (1.0,) * 5 + (3.0,) * 5:  # the last window's mean is 3x the one before: unstable
            schedule.observe_loss(loss)
    assert latched.factors(101)["heat"] == pytest.approx(22 / 50)
    assert retested.factors(101)["heat"] == 0.0
    assert retested.factors(130)["heat"] == 1.0  # the hard start holds regardless
    for _ in range(10):  # stable again: back on, at the undelayed ramp's value
        retested.observe_loss(3.0)
    assert retested.factors(110)["heat"] == pytest.approx(31 / 50)
    assert retested.opened == latched.opened == {"heat": 100}


def test_the_gate_opens_on_validation_dice_or_at_the_latest_start():
    by_dice = LossWeightSchedule({"heat": AUX})
    by_dice.observe_validation(0.29)
    assert by_dice.factors(85)["heat"] == 0.0
    by_dice.observe_validation(0.31)
    assert by_dice.factors(86)["heat"] == pytest.approx(7 / 50)
    by_time = LossWeightSchedule({"heat": AUX})
    for step in range(80, 130):
        by_time.observe_loss(float(step % 2) * 10 + 1)  # oscillating: never a plateau
        assert by_time.factors(step)["heat"] == 0.0
    assert by_time.factors(130)["heat"] == 1.0  # (130 - 80 + 1) / 50 > 1


def test_schedule_state_survives_a_checkpoint():
    schedule = LossWeightSchedule({"heat": AUX})
    for _ in range(10):
        schedule.observe_loss(1.0)
    schedule.observe_validation(0.1)
    restored = LossWeightSchedule({"heat": AUX})
    restored.load_state_dict(schedule.state_dict())
    assert restored.factors(90) == schedule.factors(90) and restored.opened == {"heat": 90}


def text(rows: int, tokens: int = 3) -> TextBatch:
    generator = torch.Generator().manual_seed(0)
    return TextBatch(torch.randn(rows, 6, generator=generator), torch.randn(rows, tokens, 6, generator=generator),
                     torch.ones(rows, tokens, dtype=torch.bool))


@pytest.mark.parametrize("tokens", [False, True])
def test_refiner_moves_only_confident_voxels_and_only_by_alpha(tokens):
    torch.manual_seed(0)
    refiner = ConfidenceGatedRefiner(2, channels=8, text_dim=6, tokens=tokens).eval()
    head = torch.nn.Conv2d(8, 1, 1)
    features = torch.randn(2, 8, 6, 6)
    base = head(features)
    base[:, :, :3] = -5.0  # not confident: sigmoid < 0.44
    base[:, :, 3:] = 5.0
    refined = refiner(features, base, head, text(2))
    torch.testing.assert_close(refined[:, :, :3], base[:, :, :3])
    moved = (refined - base)[:, :, 3:]
    assert moved.abs().max() > 0
    # the blend: base + 0.12 (head(X + tanh(g) D) - base) on the confident half; alpha = 1 gives head(X + ...)
    with torch.no_grad():
        full = (refined[:, :, 3:] - base[:, :, 3:]) / 0.12 + base[:, :, 3:]
    assert torch.isfinite(full).all()
    refiner.blend = 1.0
    torch.testing.assert_close(refiner(features, base, head, text(2))[:, :, 3:], full, rtol=1e-4, atol=1e-4)
    refiner.gate = 0.999  # nothing is that confident: the refiner changes nothing
    torch.testing.assert_close(refiner(features, base, head, text(2)), base)


def test_refiner_model_switches_off_at_inference_and_needs_a_sigmoid_head():
    config = Config.load("default_2d", ["model.channels=[8,16,16]", "model.strides=[[1,1],[2,2],[2,2]]",
                                        "model.refiner=true", "model.spatial_film=false"])
    model = create_model(config.model, 6).eval()
    image = torch.randn(1, 5, 16, 16)
    with_refiner = model(image, text(1)).logits
    without = model(image, text(1), refine=False).logits
    assert with_refiner.shape == without.shape and not torch.equal(with_refiner, without)
    with pytest.raises(MedTextSegError, match="model.blocks.refiner needs model.head=sigmoid"):
        Config.load("default_2d", ["model.refiner=true", "model.head=evidential", "model.spatial_film=false"])


TINY = ["model.channels=[4,8,16]", "model.strides=[[1,1],[2,2],[2,2]]", "data.patch_size=[48,48]",
        "train.steps=2", "train.val_cases=1", "model.spatial_film=false"]


def test_second_stage_transfers_exactly_the_weights_it_should(dataset_2d, tmp_path):
    first = Config.load("default_2d", [f"data.root={dataset_2d}", *TINY, "model.similarity_levels=[2]",
                                       "loss.terms.pixel_text_heat=0.5"])
    train(first, tmp_path / "stage1", progress=False)
    second = Config.load("default_2d", [f"data.root={dataset_2d}", *TINY, "model.refiner=true",
                                        f"train.init_from={tmp_path / 'stage1'}",
                                        "train.init_exclude=[decoder.head, refiner, similarity]"])
    train(second, tmp_path / "stage2", progress=False)
    report = json.loads((tmp_path / "stage2" / "init_transfer.json").read_text())
    source = load_checkpoint(tmp_path / "stage1" / "best.pt")["model"]
    target_keys = set(create_model(second.model, 384).state_dict())
    expected = {k for k in target_keys & set(source) if not k.startswith(("decoder.head", "refiner", "similarity"))}
    assert set(report["transferred"]) == expected and expected
    assert {k for k in report["excluded"]} == {k for k in target_keys & set(source)
                                                if k.startswith(("decoder.head", "refiner", "similarity"))}
    assert set(report["new"]) == {k for k in target_keys if k not in source}
    assert all(k.startswith("refiner") for k in report["new"])
    assert report["dropped"] == sorted(k for k in source if k.startswith("similarity"))
    # the transferred tensors equal the first stage's (the second stage's own 2 steps changed them since, so
    # check the transfer itself on a fresh model)
    from medtextseg.training.transfer import transfer_weights

    model = create_model(second.model, 384)
    transfer_weights(model, tmp_path / "stage1", ["decoder.head", "refiner", "similarity"])
    for key in expected:
        torch.testing.assert_close(model.state_dict()[key], source[key])
    from medtextseg.inference.predictor import Predictor

    assert Predictor(tmp_path / "stage2").config.inference.refiner  # inference.refiner defaults to on
    assert not Predictor(tmp_path / "stage2", refiner=False).config.inference.refiner


def test_transfer_from_a_missing_run_is_named(tmp_path):
    from medtextseg.training.transfer import transfer_weights

    model = create_model(Config.load("default_2d", TINY).model, 384)
    with pytest.raises(MedTextSegError, match="nowhere"):
        transfer_weights(model, tmp_path / "nowhere", [])


def test_the_refiner_learns_what_the_prompt_says_inside_the_confident_region():
    """Base logits say "target" (0.5) on a region; prompt A means it, prompt B does not. Trained with BCE for a few
    steps, the refiner lifts the region for A and lowers it for B; voxels outside the gate never move."""
    torch.manual_seed(0)
    refiner = ConfidenceGatedRefiner(2, channels=8, text_dim=6, blend=1.0)
    head = torch.nn.Conv2d(8, 1, 1)
    features = torch.randn(2, 8, 6, 6)
    region = torch.zeros(2, 1, 6, 6, dtype=torch.bool)
    region[..., 1:5, 1:5] = True
    base = torch.where(region, 0.5, -5.0)  # confident (sigmoid 0.62 > 0.44) only on the region
    prompts = text(2)  # row 0: prompt A, row 1: prompt B
    target = torch.zeros(2, 1, 6, 6)
    target[0][region[0]] = 1.0
    optimizer = torch.optim.Adam([p for n, p in refiner.named_parameters()], lr=1e-2)
    refiner.train()
    for _ in range(60):
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(refiner(features, base, head, prompts), target)
        loss.backward()
        optimizer.step()
    refiner.eval()
    with torch.no_grad():
        refined = refiner(features, base, head, prompts)
    assert refined[0][region[0]].mean() > 0.5 + 1.0 and refined[1][region[1]].mean() < 0.5 - 1.0
    torch.testing.assert_close(refined[~region], base[~region])
