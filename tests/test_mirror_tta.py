"""Mirror test-time augmentation that knows left from right: the left-right pass reads the swapped prompt."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medtextseg.inference.sliding import prompt_maps
from medtextseg.models.input_spec import InputSpec
from medtextseg.models.output import ModelOutput
from medtextseg.text.batch import TextBatch


class SideModel(nn.Module):
    """A stand-in segmenter that learnt what training teaches: text value +1 means "right", -1 "left", and the
    side is read from the whole-image coordinate channel (i grows toward the patient's right in RAS), which the
    flip augmentation never mirrors. It answers with the named half, whatever the image shows."""

    input_spec = InputSpec(spatial_dims=2, in_channels=1, coordinates=True)

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.seen: list[float] = []

    def forward(self, window: torch.Tensor, text: TextBatch, index: torch.Tensor, *, refine: bool = True,
                network: int | None = None) -> ModelOutput:
        side = text.pooled[:, 0]  # [P]
        self.seen += side.tolist()
        position = window[index, 1:2]  # [P, 1, *w]: the i coordinate channel, -1 (left) .. 1 (right)
        return ModelOutput(logits=20 * position * side.view(-1, 1, 1, 1) + self.weight)


def text(side: float) -> TextBatch:
    return TextBatch(torch.tensor([[side, 0.0]]), torch.zeros(1, 1, 2), torch.ones(1, 1, dtype=torch.bool))


def image() -> torch.Tensor:
    return torch.randn(1, 8, 6, generator=torch.Generator().manual_seed(0))


def test_left_right_mirror_reads_the_swapped_prompt_and_agrees_with_the_plain_pass():
    model = SideModel()
    plain = prompt_maps(model, image(), text(1.0), [8, 6]).probability
    assert plain[0, 4:].min() > 0.75 and plain[0, :4].max() < 0.25  # "right" -> the right half
    model.seen.clear()
    mirrored = prompt_maps(model, image(), text(1.0), [8, 6], mirror_axes=[0], mirrored_text=text(-1.0)).probability
    assert sorted(set(model.seen)) == [-1.0, 1.0]  # the mirrored pass read "left"
    torch.testing.assert_close(mirrored, plain)  # "left" on the mirrored image, flipped back: the same right half
    wrong = prompt_maps(model, image(), text(1.0), [8, 6], mirror_axes=[0], mirrored_text=text(1.0)).probability
    assert (wrong - 0.5).abs().max() < 0.01  # without swapping the words the two passes cancel out


def test_other_axes_keep_the_prompt_and_bad_axes_are_refused():
    model = SideModel()
    plain = prompt_maps(model, image(), text(1.0), [8, 6]).probability
    model.seen.clear()
    torch.testing.assert_close(prompt_maps(model, image(), text(1.0), [8, 6], mirror_axes=[1]).probability, plain)
    assert set(model.seen) == {1.0}
    with pytest.raises(ValueError, match="needs mirrored_text"):
        prompt_maps(model, image(), text(1.0), [8, 6], mirror_axes=[0])
    with pytest.raises(ValueError, match="must be spatial axes 0..1"):
        prompt_maps(model, image(), text(1.0), [8, 6], mirror_axes=[2])


def test_config_refuses_axes_beyond_the_model():
    from medtextseg.config import Config
    from medtextseg.utils.errors import MedTextSegError

    with pytest.raises(MedTextSegError, match=r"inference.mirror_axes \[2\] must be spatial axes 0..1"):
        Config.load("default_2d", ["inference.mirror_axes=[2]"])


def test_new_runs_mirror_what_training_flips_and_saved_runs_keep_their_setting(tmp_path):
    """Unset, ``inference.mirror_axes`` is the flip training makes: [0] with left-right flips, [] without; a
    run's saved config states it, and a config saved before (``[]``) keeps predicting as it did."""
    from medtextseg.config import Config

    assert Config().inference.mirror_axes == [0]
    assert Config.load("default_2d").inference.mirror_axes == [0]
    assert Config.load("default", ["data.flip_left_right=0"]).inference.mirror_axes == []
    assert Config.load("default", ["inference.mirror_axes=[]"]).inference.mirror_axes == []
    assert Config.load("default", ["inference.mirror_axes=[1, 2]"]).inference.mirror_axes == [1, 2]
    saved = tmp_path / "config.yaml"
    saved.write_text(Config.load("default", ["inference.mirror_axes=[]"]).to_yaml())
    assert Config.load(saved).inference.mirror_axes == []
    assert "mirror_axes:\n  - 0" in Config().to_yaml()
