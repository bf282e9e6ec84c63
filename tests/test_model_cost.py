"""Parameters and FLOPs per window (evaluate's model_cost.json), counted by torch."""

import pytest

from medtextseg.config import Config
from medtextseg.evaluation.model_cost import model_cost
from medtextseg.models.factory import count_parameters, create_model

TINY = ["model.channels=[4,8,16]", "model.strides=[[1,1,1],[2,2,1],[2,2,2]]"]


def test_flops_grow_with_the_window_and_a_further_prompt_costs_less_than_the_first():
    config = Config.load("default", [*TINY, "data.patch_size=[16,16,8]"])
    model = create_model(config.model, 12)
    cost = model_cost(model, config, 12)
    assert cost["parameters"] == count_parameters(model) > 0 and cost["patch_size"] == [16, 16, 8]
    # the encoder runs once per window: a second prompt adds the decoder only
    assert 0 < cost["gflops_per_extra_prompt"] < cost["gflops_window_one_prompt"]
    double = model_cost(model, Config.load("default", [*TINY, "data.patch_size=[32,16,8]"]), 12)
    # convolutions dominate and scale with the voxels (the text path does not): about twice the window's FLOPs
    assert double["gflops_window_one_prompt"] / cost["gflops_window_one_prompt"] == pytest.approx(2.0, rel=0.05)
