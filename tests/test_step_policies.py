"""The engine's step policies: chosen by ``train.step_policy`` through the registry, independent of each other."""

from __future__ import annotations

import ast
import typing
import warnings
from pathlib import Path

import pytest

from medtextseg.config import Config, TrainConfig, preset_names
from medtextseg.training.steps import STEP_POLICIES, StepPolicy, step_policy

STEPS = Path(__file__).resolve().parents[1] / "src" / "medtextseg" / "training" / "steps"


def test_the_registry_names_what_the_config_accepts():
    accepted = typing.get_args(TrainConfig.model_fields["step_policy"].annotation)
    assert set(STEP_POLICIES) == set(accepted)


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_has_a_policy_that_does_what_the_engine_asks(preset):
    policy = step_policy(Config.load(preset))
    wanted = {name for name, value in vars(StepPolicy).items() if callable(value) and not name.startswith("_")}
    assert wanted <= set(dir(policy)) and policy.label
    expected = "cotraining" if preset.startswith("rada") else "standard"
    assert policy is STEP_POLICIES[expected]


def test_no_policy_imports_another():
    policies = {path.stem for path in STEPS.glob("*.py")} - {"__init__", "base"}
    for name in policies:
        tree = ast.parse((STEPS / f"{name}.py").read_text(encoding="utf-8"))
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not {f"medtextseg.training.steps.{other}" for other in policies} & imported, name
        assert "medtextseg.training.engine" not in imported, name  # the engine imports the policies, not back


def test_a_saved_config_with_the_old_cotraining_switch_still_loads():
    raw = Config.load("rada").model_dump(mode="json")
    del raw["train"]["step_policy"]
    raw["cotraining"]["enabled"] = True
    with pytest.warns(FutureWarning, match="train.step_policy: cotraining"):
        assert Config.from_dict(raw).train.step_policy == "cotraining"
    raw["cotraining"]["enabled"] = False
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert Config.from_dict(raw).train.step_policy == "standard"
