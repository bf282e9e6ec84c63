"""The text blocks: typed sections of ``model.blocks`` (and the flat keys of earlier versions read into them), kinds
listed with wildcards, and a segmenter whose forward only asks the blocks at each site (a new kind needs no change
to it)."""

import pytest
import torch
import yaml
from torch import nn

from medtextseg.config import Config, preset_names
from medtextseg.config.blocks import BLOCK_KINDS, BlockOptions, Site
from medtextseg.models.conditioning import registry
from medtextseg.models.conditioning.registry import (
    TextBlock,
    block_kinds,
    block_options,
    register_block,
)
from medtextseg.models.factory import create_model
from medtextseg.text.batch import TextBatch
from medtextseg.utils.errors import MedTextSegError

SMALL = ["model.channels=[4,8,16]", "model.strides=[[1,1,1],[2,2,1],[2,2,2]]", "model.coordinates=false"]


def test_kinds_are_listed_with_wildcards_in_construction_order():
    assert block_kinds() == ["film", "fusion", "concat", "svli", "refiner", "dynamic_head", "similarity",
                             "prompt_head"]
    assert block_kinds("f*") == ["film", "fusion"]
    assert block_kinds(["*head", "s*"]) == ["svli", "dynamic_head", "similarity", "prompt_head"]


@pytest.mark.parametrize(("preset", "overrides", "described"), [
    ("default", [], ["film @ decoder 0,1,2,3 (spatial=True, text.tokens=True, text.whitening=True)"]),
    ("image_only", [], []),
    ("filmcbn", ["model.blocks.fusion.cbn_position=both"],
     ["fusion @ decoder 3,1 (se=True, cbn=True, cbn_position=both, text.tokens=False, text.whitening=False)"]),
    ("filmcbn", ["model.blocks.fusion=null", "model.blocks.concat={}"], ["concat @ decoder 3 (text.tokens=True, "
                                                                         "text.whitening=False)"]),
    ("rada", [], ["dynamic_head @ head (region_dim=1280, region_rho=0.2)"]),
    ("atr_refine", [], ["refiner @ logits (tokens=False, gate=0.44, blend=0.12)"]),
    ("prompt_head", [], ["prompt_head @ logits (hidden=16, coordinates=True, text.tokens=True, "
                         "text.whitening=True)"]),
    ("textbcs", [], ["svli @ encoder 1,2,3", "similarity @ readout 1,2,3 (word_levels=(1, 2, 3), dim=64, "
                                              "temperature=0.07, learnable_temperature=True)"])])
def test_the_model_sections_blocks_are_typed_and_sit_where_the_unet_puts_them(preset, overrides, described):
    assert [options.describe() for options in block_options(Config.load(preset, overrides).model)] == described


# earlier versions' flat keys (saved runs' configs, older commands) -> the blocks they meant
@pytest.mark.parametrize(("preset", "flat", "blocks"), [
    ("default", ["model.spatial_film=false"], ["model.blocks.film.spatial=false"]),
    ("default", ["model.conditioning=none"], ["model.blocks.film=null"]),
    ("filmcbn", ["model.conditioning=concat"], ["model.blocks.fusion=null",  # the text is read as before
                                                "model.blocks.concat={text: {tokens: false}}"]),
    ("filmcbn", ["model.fusion_se=false", "model.cbn_position=decoder"],
     ["model.blocks.fusion.se=false", "model.blocks.fusion.cbn_position=decoder"]),
    ("atr", ["model.similarity_levels=[]", "model.refiner=true", "model.refiner_gate=0.5"],
     ["model.blocks.similarity=null", "model.blocks.refiner.gate=0.5"]),
    ("textbcs_3d", ["model.vision_language_levels=[2,1]", "model.similarity_levels=[2]"],
     ["model.blocks.svli.levels=[2,1]", "model.blocks.similarity.levels=[2]"]),
    ("unet", ["model.conditioning=film", "model.text_whitening=true"], ["model.blocks.film.text.whitening=true"]),
    ("rada", ["model.region_dim=6"], ["model.blocks.dynamic_head.region_dim=6"])])
def test_the_flat_keys_of_earlier_versions_still_mean_the_same_blocks(preset, flat, blocks):
    assert Config.load(preset, flat) == Config.load(preset, blocks)


def test_a_saved_run_config_of_an_earlier_version_loads_with_its_blocks(tmp_path):
    old = yaml.safe_load(Config.load("filmcbn").to_yaml())
    old["model"].pop("blocks")
    old["model"] |= {"conditioning": "fusion", "fusion_se": False, "fusion_cbn": True, "cbn_position": "both",
                     "text_tokens": False, "text_whitening": False, "spatial_film": False, "refiner": False,
                     "refiner_gate": 0.44, "region_dim": 0, "vision_language_levels": [], "similarity_levels": [],
                     "similarity_dim": 64, "prompt_head_channels": 16}  # every flat key was written out
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    config = Config.load(tmp_path / "config.yaml")
    assert list(config.model.blocks) == ["fusion"]
    assert config.model.blocks["fusion"].se is False and config.model.blocks["fusion"].cbn_position == "both"
    assert config == Config.load("filmcbn", ["model.blocks.fusion.se=false", "model.blocks.fusion.cbn_position=both"])


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.blocks.flim.spatial=true"], r"unknown block kind 'flim' in model.blocks \(did you mean 'film'\?\)"),
    (["model.blocks.film.spatal=true"], r"unknown option 'model.blocks.film.spatal' \(did you mean 'spatial'\?\)"),
    (["model.blocks.refiner.gate=2"], r"model.blocks.refiner.gate: Input should be less than 1"),
    (["model.blocks.svli.levels=[1,7]"], r"model.blocks.svli.levels \[1, 7\] must be distinct stage numbers in 0..3"),
    (["model.coordinates=false"], r"model.blocks.film.spatial needs model.coordinates=true"),
    (["model.spatial_film=true", "model.conditioning=none"], r"model.spatial_film needs the film block")])
def test_a_wrong_block_is_refused_at_load_naming_the_option(overrides, message):
    with pytest.raises(MedTextSegError, match=message):
        Config.load("default", overrides)


def test_a_kind_a_base_preset_leaves_out_can_be_set_again():
    assert "similarity" not in Config.load("atr_refine").model.blocks
    config = Config.load("atr_refine", ["model.blocks.similarity.levels=[3]"])
    assert config.model.blocks["similarity"].levels == (3,)


# The state-dict prefixes a checkpoint of each preset carries: they are the names saved runs were written with.
PREFIXES = {"default": {"encoder", "decoder", "text_summary", "conditioners"},
            "image_only": {"encoder", "decoder"},
            "filmcbn": {"encoder", "decoder", "conditioners"},  # its text summary is the bare embedding
            "textbcs": {"encoder", "decoder", "vision_language", "similarity"},
            "atr": {"encoder", "decoder", "similarity"},
            "atr_refine": {"encoder", "decoder", "refiner"},
            "prompt_head": {"encoder", "decoder", "text_summary", "prompt_head"},
            "rada_text": {"members", "encoder", "decoder", "dynamic_bias"},
            "rada": {"members", "encoder", "decoder", "dynamic_bias", "region_fusion"}}


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_keeps_the_state_dict_names_of_its_blocks(preset):
    head = Config.load(preset).model.blocks.get("dynamic_head")
    config = Config.load(preset, ["model.blocks.dynamic_head.region_dim=6"] if head and head.region_dim else [])
    model = create_model(config.model, 12)
    names = {name.split(".")[2 if name.startswith("members.") else 0] for name in model.state_dict()}
    names |= {"members"} if config.model.networks > 1 else set()
    if preset in PREFIXES:
        assert names == PREFIXES[preset]
    member = model.members[0] if config.model.networks > 1 else model
    for attribute in ("text_summary", "refiner", "dynamic_bias", "region_fusion"):
        assert hasattr(member, attribute)  # None when the block is absent, as code and helpers expect
    assert isinstance(member.conditioners, nn.ModuleDict) and isinstance(member.similarity, nn.ModuleDict)


class ToyBlock(TextBlock):
    def __init__(self, options, scale):
        super().__init__(options)
        self.scale = scale

    def parts(self):
        return {"toy": self.scale}

    def head(self, features, state):
        return features + self.options.shift * self.scale.weight.sum()


@pytest.fixture
def toy_kind():
    class ToyOptions(BlockOptions):  # registered as model.blocks.toy by being defined
        kind = "toy"
        shift: float

        def sites(self):
            return (Site("head"),)

    register_block(ToyOptions, {"toy": None})(lambda options, shape: ToyBlock(options, nn.Linear(1, 1, bias=False)))
    yield ToyOptions
    del registry._KINDS["toy"], BLOCK_KINDS["toy"]


def test_a_new_kind_is_registered_and_acts_at_its_site_without_touching_the_segmenter(toy_kind):
    text = TextBatch(torch.randn(1, 12), torch.randn(1, 3, 12), torch.ones(1, 3, dtype=torch.bool))
    image = torch.randn(1, 3, 16, 16, 8)
    plain = create_model(Config.load("image_only", SMALL).model, 12)
    toy = create_model(Config.load("image_only", [*SMALL, "model.blocks.toy.shift=3.0"]).model, 12)
    assert plain.toy is None and isinstance(toy.toy, nn.Linear)
    assert [block.kind for block in toy.blocks] == ["toy"]
    toy.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        toy.toy.weight.fill_(1.0)
        assert not torch.allclose(plain(image, text).logits, toy(image, text).logits)
    with pytest.raises(ValueError, match="registered twice"):
        register_block(toy_kind, {})(lambda options, shape: None)
