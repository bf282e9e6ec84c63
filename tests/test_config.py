import pytest
import yaml

from medtextseg.config import Config, preset_names
from medtextseg.utils.errors import MedTextSegError


def test_presets_load_and_overrides_apply():
    assert {"default", "image_only", "default_2d"} <= set(preset_names())
    config = Config.load("default", ["train.steps=7", "model.channels=[4,8,16,32]", "data.kind_weights.single=2"])
    assert config.train.steps == 7
    assert config.model.channels == [4, 8, 16, 32]
    assert config.data.kind_weights["single"] == 2
    assert config.preset == "default"


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_is_a_valid_config(preset):
    # a preset inherits from its base: a field added there must still make sense for every preset built on it
    config = Config.load(preset)
    assert Config.from_dict(yaml.safe_load(config.to_yaml())) == config  # its blocks too, as a run saves them


def test_preset_inherits_from_base():
    baseline = Config.load("image_only")
    assert baseline.model.blocks == {}
    assert baseline.model.channels == Config.load("default").model.channels


def test_resolved_config_round_trips(tmp_path):
    config = Config.load("default_2d", ["train.lr=0.01"])
    path = tmp_path / "config.yaml"
    path.write_text(config.to_yaml())
    assert Config.load(path) == config


def test_unknown_key_names_the_field_and_suggests():
    with pytest.raises(MedTextSegError, match=r"unknown config key 'train.step'.*did you mean 'steps'"):
        Config.load("default", ["train.step=3"])


def test_unknown_key_in_yaml_is_rejected(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: default\nmodel:\n  chanels: [1, 2]\n")
    with pytest.raises(MedTextSegError, match=r"unknown config key 'model.chanels'"):
        Config.load(path)


def test_bad_value_names_the_field():
    with pytest.raises(MedTextSegError, match=r"config field 'train.lr'.*greater than 0"):
        Config.load("default", ["train.lr=-1"])


def test_stage_count_mismatch_is_explained():
    with pytest.raises(MedTextSegError, match=r"model.channels has 2 stages but model.strides has 4"):
        Config.load("default", ["model.channels=[4,8]"])


def test_unknown_preset_suggests_closest():
    with pytest.raises(MedTextSegError, match=r"unknown preset 'defualt'.*did you mean 'default'"):
        Config.load("defualt")


def test_malformed_override():
    with pytest.raises(MedTextSegError, match=r"expected KEY=VALUE"):
        Config.load("default", ["train.steps"])
