"""Every built-in preset obeys one contract (as scikit-learn checks every estimator): it builds, trains two steps on
a tiny dataset of its dimensionality (co-training presets on sparse slice labels), predicts, and its saved run loads
back into the same weights and config. The preset registry lists presets with wildcards; every preset derives from
the neutral base and adds its text blocks rather than switching the default's off."""

from __future__ import annotations

import fnmatch
from importlib import resources

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from medtextseg.config import Config, list_presets, preset_base, preset_names
from medtextseg.utils.errors import MedTextSegError

PROMPT = "segment the prostate"
# 4 stages of at most 8 channels: every preset's stage levels stay valid, and a step takes milliseconds
TINY = ["model.channels=[4,8,8,8]", "train.steps=2", "train.val_every=2", "train.val_cases=1", "train.batch_images=1",
        "train.warmup_steps=1", "data.prompts_per_image=2"]
TINY_PATCH = {2: "data.patch_size=[16,16]", 3: "data.patch_size=[16,16,8]"}
TINY_COTRAINING = ["cotraining.labelled_per_batch=1", "cotraining.unlabelled_per_batch=1",
                   "cotraining.uncertainty_passes=1", "cotraining.propagation_iterations=2",
                   f"cotraining.prompt={PROMPT}"]


# ------------------------------------------------------------------ the registry
def test_presets_are_listed_with_wildcards():
    assert list_presets() == preset_names()
    assert list_presets("rada*") == ["rada", "rada_single", "rada_text"]
    assert list_presets(["*_2d", "unet"]) == ["default_2d", "image_only_2d", "unet"]
    assert list_presets("*_3d", exclude="text*") == ["filmcbn_3d"]
    assert list_presets("nothing*") == []


def test_every_preset_derives_from_the_neutral_base_and_is_named_by_itself():
    for name in preset_names():
        chain, base = [name], preset_base(name)
        while base:
            chain.append(base)
            base = preset_base(base)
        assert chain[-1] == "unet", chain
        assert Config.load(name).preset == name  # not the base's name


def test_no_preset_switches_a_text_block_of_its_base_off():
    """The neutral base has no text block: a preset states the blocks it has, never a default's extras it lacks."""
    switches = {"spatial_film": False, "text_whitening": False}
    for name in preset_names():
        text = (resources.files("medtextseg") / "presets" / f"{name}.yaml").read_text(encoding="utf-8")
        model = (yaml.safe_load(text) or {}).get("model", {})
        assert not {key for key, off in switches.items() if model.get(key) is off}, name
        if preset_base(name) is not None:
            assert model.get("conditioning") != "none", name


def test_a_patch_the_strides_do_not_divide_is_refused_at_load_with_a_size_that_fits():
    with pytest.raises(MedTextSegError, match=r"data.patch_size \[50, 48, 16\] is not a multiple of the strides' "
                                              r"product \[8, 8, 4\].*use e.g. --set data.patch_size=\[48,48,16\]"):
        Config.load("default", ["data.patch_size=[50,48,16]"])


# ------------------------------------------------------------------ the contract
@pytest.fixture(scope="module")
def sparse_3d(dataset_3d, tmp_path_factory):
    from medtextseg.data.sparse_labels import sparsify_dataset

    out = tmp_path_factory.mktemp("contract") / "sparse"
    sparsify_dataset(dataset_3d, out, fraction=0.5, planes="SCA", rule="largest", seed=0)
    return out


#: What each preset trains with: its paper's optimiser and learning-rate schedule, or ours where the preset's
#: header says why. default, image_only and unet are ours.
TRAINED_WITH = {
    "filmcbn*": ("AdamW", "cosine"),   # the paper's
    "textbcs*": ("Adam", "plateau"),   # the paper's (with early stopping)
    "rada*": ("SGD", "step"),          # the paper's: momentum 0.9, x0.1 every 2500 steps
    "atr*": ("SGD", "poly"),           # the paper's (nnU-Net's): Nesterov momentum 0.99
    "default*": ("AdamW", "cosine"), "image_only*": ("AdamW", "cosine"), "unet": ("AdamW", "cosine"),
    "prompt_head": ("AdamW", "cosine"),  # the default's
}


def contract_config(preset: str, data) -> Config:
    own = Config.load(preset)
    overrides = [*TINY, TINY_PATCH[own.model.spatial_dims], f"data.root={data}"]
    if own.train.step_policy == "cotraining":
        overrides += TINY_COTRAINING
    return Config.load(preset, overrides)


@pytest.mark.parametrize("preset", list_presets())
def test_every_preset_builds_trains_predicts_saves_and_loads(preset, request, tmp_path):
    from medtextseg.data.layout import load_dataset
    from medtextseg.inference.predictor import Predictor
    from medtextseg.models.factory import create_model
    from medtextseg.models.trained import load_checkpoint
    from medtextseg.training.engine import Trainer

    own = Config.load(preset)
    cotraining = own.train.step_policy == "cotraining"
    data = request.getfixturevalue("sparse_3d" if cotraining else f"dataset_{own.model.spatial_dims}d")
    config = contract_config(preset, data)
    trainer = Trainer(config, tmp_path / "run", progress=False)
    run = trainer.run()

    optimisers = getattr(trainer.policy, "optimizers", None) or [trainer.policy.optimizer]
    expected = next((value for pattern, value in TRAINED_WITH.items() if fnmatch.fnmatch(preset, pattern)), None)
    assert expected is not None, f"{preset}: say in TRAINED_WITH what it trains with (its paper's, or ours and why)"
    assert {type(o).__name__ for o in optimisers} == {expected[0]}
    assert trainer.policy.lr_factor.schedule == expected[1]  # every network of a co-training preset alike
    if cotraining:  # SGTC's SGD: momentum 0.9 without Nesterov
        assert all(g["momentum"] == 0.9 and not g["nesterov"] for o in optimisers for g in o.param_groups)
    if preset.startswith("atr"):  # nnU-Net's SGD, as Align-then-Refine trains
        assert all(g["momentum"] == 0.99 and g["nesterov"] and g["weight_decay"] == 3e-5
                   for o in optimisers for g in o.param_groups)

    assert Config.load(run / "config.yaml") == config  # the run's config reads back as it was
    state = load_checkpoint(run / "best.pt")
    assert state["step"] == 2 and Config.from_dict(state["config"]) == config
    rebuilt = create_model(config.model, int(state["text_dim"]))
    rebuilt.load_state_dict(state["model"])  # strict: the saved names are the model's

    predictor = Predictor(run, device="cpu")  # loads the run's best.pt
    for name, tensor in predictor.model.state_dict().items():
        assert torch.equal(tensor.cpu(), state["model"][name]), name
    layout = load_dataset(data)
    case = layout.cases[layout.splits["test"][0]]
    prompt = PROMPT if cotraining else "the prostate"
    (segmentation,) = predictor.predict(case.image_paths, prompt, uncertainty=False)
    assert segmentation.mask.shape == nib.load(str(case.image_paths[0])).shape
    assert np.isfinite(segmentation.probability).all()
    assert 0 <= segmentation.probability.min() <= segmentation.probability.max() <= 1


def test_the_presets_command_filters_and_says_where_the_text_enters():
    from typer.testing import CliRunner

    from medtextseg.cli import app

    result = CliRunner().invoke(app, ["presets", "rada*", "image_only"])
    assert result.exit_code == 0 and result.output.split() == ["image_only", "rada", "rada_single", "rada_text"]
    lines = CliRunner().invoke(app, ["presets", "default", "unet", "--blocks"]).output.splitlines()
    assert lines[0].split()[:4] == ["default", "base", "unet", "film"] and "decoder 0,1,2,3" in lines[0]
    assert lines[1].split() == ["unet", "base", "-", "no", "text", "block"]
    missing = CliRunner().invoke(app, ["presets", "nothing*"])
    assert missing.exit_code == 2 and "no preset matches nothing*" in missing.output
