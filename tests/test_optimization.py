"""Optimiser and learning-rate schedule from the config (each paper's own), early stopping, exact resume."""

import json
import math

import pytest
import torch

from medtextseg.config import Config, TrainConfig
from medtextseg.training.engine import train
from medtextseg.training.optimization import LearningRateFactor, apply_update, build_optimizer

TINY_2D = ["model.channels=[4,8,16]", "model.strides=[[1,1],[2,2],[2,2]]", "data.patch_size=[48,48]",
           "train.batch_images=2", "data.prompts_per_image=2", "train.val_every=2", "train.val_cases=1",
           "train.warmup_steps=1"]


def factors(**fields) -> list[float]:
    factor = LearningRateFactor(TrainConfig(steps=100, warmup_steps=10, **fields))
    return [factor(step) for step in range(100)]


def test_each_schedule_follows_its_formula_after_the_warm_up():
    for schedule in ("cosine", "poly", "step", "plateau"):
        values = factors(schedule=schedule, step_every=30)
        assert values[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])  # the same linear warm-up
    cosine = factors()
    assert cosine[10] == pytest.approx(1.0)
    assert cosine[99] == pytest.approx(0.01 + 0.495 * (1 + math.cos(math.pi * 89 / 90)))  # 1% at the end
    poly = factors(schedule="poly")
    assert poly[55] == pytest.approx((1 - 45 / 90) ** 0.9)
    step = factors(schedule="step", step_every=30)
    assert step[39] == 1.0 and step[40] == pytest.approx(0.1) and step[99] == pytest.approx(0.01)  # 89 // 30 = 2 cuts
    assert set(factors(schedule="plateau")[10:]) == {1.0}  # no validation seen: no cut


def test_plateau_cuts_the_rate_and_early_stopping_stops_after_validations_without_improvement():
    factor = LearningRateFactor(TrainConfig(schedule="plateau", plateau_patience=2, plateau_factor=0.5,
                                            early_stopping=5, warmup_steps=0))
    decisions = [factor.observe_validation(score) for score in (0.5, 0.6, 0.6, 0.55)]
    assert factor(50) == 0.5 and decisions == [False] * 4  # two validations without a better Dice: halved
    assert factor.observe_validation(0.7) is False and factor.stale == 0 and factor(50) == 0.5  # kept, not undone
    decisions = [factor.observe_validation(0.1) for _ in range(5)]
    assert decisions == [False] * 4 + [True] and factor(50) == pytest.approx(0.5 * 0.5 ** 2)
    restored = LearningRateFactor(TrainConfig(schedule="plateau"))
    restored.set_shared_state(factor.shared_state())
    assert (restored.best, restored.stale, restored.scale, restored.stop) == (0.7, 5, 0.125, True)


def test_the_configured_optimiser_is_built():
    weights = [torch.nn.Parameter(torch.zeros(2))]
    sgd = build_optimizer(weights, TrainConfig(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=3e-5))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.9
    assert type(build_optimizer(weights, TrainConfig(optimizer="adam"))) is torch.optim.Adam
    assert type(build_optimizer(weights, TrainConfig())) is torch.optim.AdamW


def test_the_update_clips_the_gradient_and_skips_a_loss_that_is_not_finite():
    """Every step policy's update: SGD at lr 1 moves the weight by the clipped gradient (norm 0.5, not the raw 20);
    a NaN loss leaves the weights and the optimiser untouched, and says so."""
    weight = torch.nn.Parameter(torch.zeros(4))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    assert apply_update((weight * torch.tensor([10.0, 10.0, 10.0, 10.0])).sum(), optimizer, [weight], 0.5)
    assert torch.allclose(weight.detach(), torch.full((4,), -0.25))  # gradient (10, 10, 10, 10) clipped to norm 0.5
    before = weight.detach().clone()
    assert not apply_update(weight.sum() * float("nan"), optimizer, [weight], 0.5)
    assert torch.equal(weight.detach(), before) and weight.grad is None  # zeroed, not stepped
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)  # float16's scaling: the step it takes is unscaled
    assert apply_update((weight * 10).sum(), optimizer, [weight], 0.5, scaler)
    assert torch.allclose(weight.detach(), before - 0.25)


def test_a_run_stops_early_when_validation_stops_improving(dataset_2d, tmp_path):
    # a learning rate too small to change the weights: the validation Dice cannot improve after the first
    config = Config.load("default_2d", [*TINY_2D, f"data.root={dataset_2d}", "train.steps=40", "train.lr=1e-12",
                                        "train.optimizer=sgd", "train.early_stopping=2"])
    run = train(config, tmp_path / "run", progress=False)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    validations = [line["step"] for line in log if "val_dice" in line]
    assert validations == [2, 4, 6]  # the first sets the best, two more without a better one
    assert log[-2] == {"step": 6, "event": "early_stop", "validations_without_improvement": 2}
    assert log[-1]["event"] == "end" and log[-1]["step"] == 6
    state = torch.load(run / "last.pt", weights_only=False)
    assert state["scheduler"]["lr_lambdas"][0]["stop"] is True and not math.isinf(state["best"])


def test_the_validation_interval_grows_to_keep_validation_within_its_budget():
    from medtextseg.training.engine import MIN_VALIDATION_SECONDS, spaced_val_every

    # 200 steps took 100 s, a validation 30 s: 23% of the time. At 10 %, 30 <= 0.1 (t + 30) needs t >= 270 s of
    # training, 540 steps at 0.5 s a step: the next multiple of 200 is 600
    assert spaced_val_every(200, 200, 0.1, 200, 100.0, 30.0) == 600
    assert spaced_val_every(200, 200, 0.1, 200, 100.0, 10.0) == 200  # 9 %: within the budget
    assert spaced_val_every(600, 200, 0.1, 600, 300.0, 10.0) == 600  # never shrinks
    # the first validation after a change came after fewer steps than the new interval: the pace, not the share
    # of that short stretch, decides (16 s at 0.5 s a step needs 288 steps: 400 holds)
    assert spaced_val_every(400, 200, 0.1, 200, 101.1, 16.0) == 400
    assert spaced_val_every(200, 200, None, 200, 100.0, 30.0) == 200  # no budget
    assert spaced_val_every(2, 2, 0.1, 2, 0.1, MIN_VALIDATION_SECONDS * 0.9) == 2  # a short pass is left alone


def test_a_slow_validation_is_spaced_out_and_the_interval_resumes(dataset_2d, tmp_path, monkeypatch):
    import time

    from medtextseg.training import engine

    real = engine.validation_dice

    def slow_validation(*args, **kwargs):
        time.sleep(0.6)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "validation_dice", slow_validation)
    monkeypatch.setattr(engine, "MIN_VALIDATION_SECONDS", 0.0)
    config = Config.load("default_2d", [*TINY_2D, f"data.root={dataset_2d}", "train.steps=16"])
    run = train(config, tmp_path / "run", progress=False)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    (event,) = [line for line in log if line.get("event") == "val_every"]
    assert event["step"] == 2 and event["val_every"] > 2 and event["val_every"] % 2 == 0
    assert event["val_seconds"] > config.train.val_budget * (event["train_seconds"] + event["val_seconds"])
    validations = [line["step"] for line in log if "val_dice" in line]
    every = event["val_every"]
    assert validations == [2, *range(every, 16, every), 16]  # spaced, and the last step as always
    assert torch.load(run / "last.pt", weights_only=False)["val_every"] == every

