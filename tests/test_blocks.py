"""The registry of conditioning blocks: kinds listed with wildcards, typed options read off the model section, and a
segmenter whose forward only asks the blocks at each site (a new kind needs no change to it)."""

import pytest
import torch
from torch import nn

from medtextseg.config import Config, preset_names
from medtextseg.models.conditioning import registry
from medtextseg.models.conditioning.registry import (
    BlockOptions,
    Site,
    TextBlock,
    block_kinds,
    block_options,
    register_block,
)
from medtextseg.models.factory import create_model
from medtextseg.text.batch import TextBatch

SMALL = ["model.channels=[4,8,16]", "model.strides=[[1,1,1],[2,2,1],[2,2,2]]", "model.coordinates=false",
         "model.spatial_film=false"]


def test_kinds_are_listed_with_wildcards_in_construction_order():
    assert block_kinds() == ["film", "fusion", "concat", "svli", "refiner", "dynamic_head", "similarity",
                             "prompt_head"]
    assert block_kinds("f*") == ["film", "fusion"]
    assert block_kinds(["*head", "s*"]) == ["svli", "dynamic_head", "similarity", "prompt_head"]


@pytest.mark.parametrize(("preset", "overrides", "described"), [
    ("default", [], ["film @ decoder 0,1,2,3 (spatial=True, text.tokens=True, text.whitening=True)"]),
    ("image_only", [], []),
    ("filmcbn", ["model.cbn_position=both"], ["fusion @ decoder 3,1 (se=True, cbn=True, text.tokens=False, "
                                              "text.whitening=False)"]),
    ("filmcbn", ["model.conditioning=concat"], ["concat @ decoder 3 (text.tokens=False, text.whitening=False)"]),
    ("rada", [], ["dynamic_head @ head (region_dim=1280, region_rho=0.2)"]),
    ("atr_refine", [], ["refiner @ logits (tokens=False, gate=0.44, blend=0.12)"]),
    ("prompt_head", [], ["prompt_head @ logits (hidden=16, coordinates=True, text.tokens=True, "
                         "text.whitening=True)"]),
    ("textbcs", [], ["svli @ encoder 1,2,3", "similarity @ readout 1,2,3 (word_levels=(1, 2, 3), dim=64, "
                                              "temperature=0.07, learnable_temperature=True)"])])
def test_the_flat_model_section_reads_as_typed_blocks_at_their_sites(preset, overrides, described):
    assert [options.describe() for options in block_options(Config.load(preset, overrides).model)] == described


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
    config = Config.load(preset, ["model.region_dim=6"] if Config.load(preset).model.region_dim else [])
    model = create_model(config.model, 12)
    names = {name.split(".")[2 if name.startswith("members.") else 0] for name in model.state_dict()}
    names |= {"members"} if config.model.networks > 1 else set()
    if preset in PREFIXES:
        assert names == PREFIXES[preset]
    member = model.members[0] if config.model.networks > 1 else model
    for attribute in ("text_summary", "refiner", "dynamic_bias", "region_fusion"):
        assert hasattr(member, attribute)  # None when the block is absent, as code and helpers expect
    assert isinstance(member.conditioners, nn.ModuleDict) and isinstance(member.similarity, nn.ModuleDict)


class ToyOptions(BlockOptions):
    kind = "toy"
    shift: float

    def sites(self):
        return (Site("head"),)

    @classmethod
    def from_model_config(cls, config):
        return cls(shift=3.0) if config.presence_topk == 7 else None  # a test-only switch


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
    register_block(ToyOptions, {"toy": None})(lambda options, shape: ToyBlock(options, nn.Linear(1, 1, bias=False)))
    yield
    del registry._KINDS["toy"]


def test_a_new_kind_is_registered_and_acts_at_its_site_without_touching_the_segmenter(toy_kind):
    text = TextBatch(torch.randn(1, 12), torch.randn(1, 3, 12), torch.ones(1, 3, dtype=torch.bool))
    image = torch.randn(1, 3, 16, 16, 8)
    plain = create_model(Config.load("image_only", SMALL).model, 12)
    toy = create_model(Config.load("image_only", [*SMALL, "model.presence_topk=7"]).model, 12)
    assert plain.toy is None and isinstance(toy.toy, nn.Linear)
    assert [block.kind for block in toy.blocks] == ["toy"]
    toy.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        toy.toy.weight.fill_(1.0)
        assert not torch.allclose(plain(image, text).logits, toy(image, text).logits)
    with pytest.raises(ValueError, match="registered twice"):
        register_block(ToyOptions, {})(lambda options, shape: None)
