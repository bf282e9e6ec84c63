"""The preset registry lists presets with wildcards; every preset derives from the neutral base and adds its text
blocks rather than switching the default's off."""

from __future__ import annotations

from importlib import resources

import pytest
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
