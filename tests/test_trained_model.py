"""The typed checkpoint: one loader for every envelope, the network's declared inputs, inference as a frozen value."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from helpers import text_checkpoint
from medtextseg.config import Config
from medtextseg.inference.sliding import prompt_maps
from medtextseg.models.checkpoint import save_checkpoint
from medtextseg.models.ensemble import SegmenterEnsemble
from medtextseg.models.factory import create_model
from medtextseg.models.input_spec import InputSpec
from medtextseg.models.trained import load_checkpoint, load_trained_model
from medtextseg.text.batch import PromptEmbedding, TextBatch
from medtextseg.utils.errors import MedTextSegError


def prompts(count: int) -> TextBatch:
    generator = torch.Generator().manual_seed(1)
    return TextBatch.stack([PromptEmbedding(torch.randn(384, generator=generator),
                                                      torch.randn(3, 384, generator=generator))
                                      for _ in range(count)])


def test_a_run_folder_loads_as_the_network_its_config_describes_with_the_saved_weights(tmp_path):
    path = text_checkpoint(tmp_path, in_channels=3)
    trained = load_trained_model(tmp_path)  # the run folder: its best.pt
    state = load_checkpoint(path)
    assert trained.checkpoint == path and trained.text_dim == 384
    assert trained.channel_names == ("t2w", "adc", "hbv") and not trained.network.training
    assert trained.config == Config.from_dict(state["config"])
    for key, value in trained.network.state_dict().items():
        assert torch.equal(value, state["model"][key]), key
    # what the network reads is its own declaration: 3 image channels + 3 coordinate channels, a sigmoid head
    assert trained.input_spec == InputSpec(3, 3, coordinates=True, head="sigmoid") and trained.input_spec.channels == 6


def test_weights_that_do_not_fit_their_config_are_refused_naming_the_file_and_the_key(tmp_path):
    path = text_checkpoint(tmp_path, in_channels=2)
    state = load_checkpoint(path)
    state["config"]["model"]["channels"] = [4, 16]
    save_checkpoint(path, state)
    with pytest.raises(MedTextSegError, match=rf"^{path}: its weights do not fit the model its config describes \("):
        load_trained_model(path)
    del state["text_dim"]
    save_checkpoint(path, state)
    with pytest.raises(MedTextSegError, match=rf"^{path}: no 'text_dim'"):
        load_trained_model(path)


def test_inference_options_are_a_frozen_value():
    config = Config.load("default")
    with pytest.raises(ValidationError, match="frozen"):
        config.inference.threshold = 0.3
    changed = Config.load("default", ["inference.threshold=0.3"])
    assert changed.inference.threshold == 0.3 and config.inference.threshold == 0.5


def test_the_refiner_and_the_member_are_asked_per_call_not_set_on_the_model():
    refining = Config.load("default_2d", ["model.channels=[4,8]", "model.strides=[[1,1],[2,2]]", "model.refiner=true",
                                          "model.spatial_film=false", "data.patch_size=[16,16]"])
    torch.manual_seed(0)
    model = create_model(refining.model, 384).eval()
    model.refiner.gate = 0.0  # refine every voxel: the untrained base is nowhere confident
    image = torch.randn(3, 16, 16)
    refined, plain = (prompt_maps(model, image, prompts(2), [16, 16], presence_threshold=0.0,
                                  refine=refine).probability
                      for refine in (True, False))
    assert refined.shape == plain.shape == (2, 16, 16) and not torch.equal(refined, plain)
    with pytest.raises(ValueError, match="one network"):
        model(torch.randn(1, 5, 16, 16), prompts(1), network=1)


def test_an_ensemble_declares_its_members_inputs_and_refuses_members_that_differ():
    def segmenter(overrides: list[str]) -> torch.nn.Module:
        config = Config.load("default", ["model.channels=[4,8]", "model.strides=[[1,1,1],[2,2,2]]", *overrides])
        return create_model(config.model, 384).eval()

    same = SegmenterEnsemble([segmenter([]), segmenter([])])
    assert same.input_spec == InputSpec(3, 3, coordinates=True)
    with pytest.raises(ValueError, match="different inputs"):
        SegmenterEnsemble([segmenter([]), segmenter(["model.coordinates=false", "model.spatial_film=false"])])
