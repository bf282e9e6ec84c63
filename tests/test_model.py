"""Contract of the segmenters: gradients reach every parameter, text matters, shared encoder is exact."""

import pytest
import torch

from helpers import as_if_trained
from medtextseg.config import Config
from medtextseg.data.transforms import coordinate_channels
from medtextseg.models.factory import create_model
from medtextseg.text.batch import TextBatch
from medtextseg.utils.errors import MedTextSegError

# coordinates off: these tests feed the network directly (the data pipeline appends coordinate channels)
SMALL = ["model.channels=[4,8,16]", "model.strides=[[1,1,1],[2,2,1],[2,2,2]]", "model.coordinates=false",
         "model.spatial_film=false"]


def text_batch(rows: int, dim: int = 12, seed: int = 0) -> TextBatch:
    generator = torch.Generator().manual_seed(seed)
    return TextBatch(torch.randn(rows, dim, generator=generator), torch.randn(rows, 3, dim, generator=generator),
                     torch.ones(rows, 3, dtype=torch.bool))


@pytest.mark.parametrize("preset", ["default", "image_only", "default_2d", "prompt_head"])
def test_every_parameter_learns(preset):
    # the defaults keep their coordinate channels: their spatial FiLM (the prompt head) reads them, and must learn
    overrides = {"default": SMALL[:2], "image_only": SMALL, "prompt_head": SMALL[:2],
                 "default_2d": ["model.channels=[4,8,16]", "model.strides=[[1,1],[2,2],[2,2]]"]}[preset]
    config = Config.load(preset, overrides)
    torch.manual_seed(0)
    model = create_model(config.model, text_dim=12)
    shape = (2, 3, 16, 16, 8) if preset == "image_only" else (2, 3 + 2, 16, 16) if preset == "default_2d" \
        else (2, 3 + 3, 16, 16, 8)
    image, text = torch.randn(shape), text_batch(2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):  # FiLM starts as the identity (zero last layer): its first layer learns from step 2
        optimizer.zero_grad()
        out = model(image, text)
        loss = out.logits.square().mean() + (out.presence.square().mean() if out.presence is not None else 0)
        loss.backward()
        optimizer.step()
    assert out.logits.shape == (2, 1, *shape[2:])
    assert torch.isfinite(out.logits).all()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, f"{name} got no gradient"
    assert (out.presence is None) == (not config.model.blocks)


def test_text_changes_the_answer_only_when_conditioned():
    image = torch.randn(1, 3, 16, 16, 8)
    for conditioning, should_differ in (("film", True), ("prompt_head", True), ("none", False)):
        torch.manual_seed(0)
        model = as_if_trained(create_model(Config.load("default", [*SMALL, f"model.conditioning={conditioning}"]).model,
                                           12))
        out_a = model(image, text_batch(1, seed=1)).logits
        out_b = model(image, text_batch(1, seed=2)).logits
        assert (not torch.allclose(out_a, out_b)) == should_differ


@pytest.mark.parametrize(("preset", "overrides"), [
    ("default", []), ("atr", ["model.similarity_levels=[2]"]),
    ("textbcs_3d", ["model.vision_language_levels=[1,2]", "model.similarity_levels=[1,2]"]),
    ("prompt_head", ["model.deep_supervision=true"]), ("rada_single", [])])
def test_shared_encoder_equals_repeated_images(preset, overrides):
    """An image's prompts share its encoder features (and the skips' share of the decoder's first convolutions,
    or the whole decoder where no text enters before the head): outputs and gradients equal those of the image
    repeated once per prompt. The presets cover the plain FiLM decoder, one encoder per sequence with deep
    supervision, encoder stages that read the text (TextBCS), and a decoder shared by the prompts with the text
    after it (the prompt head, with deep supervision) or at the head (the dynamic head, in eval mode: its batch
    norm's batch statistics count an image once, not once per prompt)."""
    torch.manual_seed(0)
    model = as_if_trained(create_model(Config.load(preset, [*SMALL, *overrides]).model, 12))
    model.train(preset != "rada_single")
    images, text = torch.randn(2, 3, 16, 16, 8), text_batch(5)
    index = torch.tensor([0, 0, 1, 1, 1])
    results = []
    for args in ((images, text, index), (images[index], text)):
        model.zero_grad()
        out = model(*args)
        loss = out.logits.square().mean() + sum(m.square().mean() for m in out.deep_supervision)
        loss.backward()
        results.append((out, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}))
    (shared, shared_grads), (repeated, repeated_grads) = results
    torch.testing.assert_close(shared.logits, repeated.logits)
    if shared.presence is not None:
        torch.testing.assert_close(shared.presence, repeated.presence)
    assert shared_grads.keys() == repeated_grads.keys()
    for name, grad in shared_grads.items():
        torch.testing.assert_close(grad, repeated_grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize(("preset", "decoded_rows"), [("default", 5), ("prompt_head", 2), ("image_only", 2)])
def test_the_decoder_runs_once_per_image_where_no_text_enters_before_the_head(preset, decoded_rows):
    """FiLM conditions the decoder, which then runs once per prompt; the prompt head reads the text after the
    decoder, which then runs once per image whatever the number of prompts (what makes its prompts cheap)."""
    model = create_model(Config.load(preset, SMALL).model, 12)
    rows = []
    model.decoder.refinements[-1].register_forward_hook(lambda module, inputs, output: rows.append(output.shape[0]))
    out = model(torch.randn(2, 3, 16, 16, 8), text_batch(5), torch.tensor([0, 0, 1, 1, 1]))
    assert rows == [decoded_rows]
    assert out.logits.shape == (5, 1, 16, 16, 8)


def test_the_prompt_head_refuses_what_it_cannot_add_to():
    for override in ("model.head=evidential", "model.refiner=true"):
        with pytest.raises(MedTextSegError, match="model.blocks.prompt_head needs model.head=sigmoid"):
            Config.load("prompt_head", [override])


def test_prompt_image_count_mismatch_is_explained():
    model = create_model(Config.load("default", SMALL).model, 12)
    with pytest.raises(ValueError, match=r"3 prompts for 2 images: pass image_index"):
        model(torch.randn(2, 3, 16, 16, 8), text_batch(3))


def test_coordinates_add_one_input_channel_per_axis_and_reach_the_answer():
    torch.manual_seed(0)
    model = create_model(Config.load("default", [*SMALL[:2], "model.coordinates=true", "model.spatial_film=false"]
                                     ).model, 12).eval()
    image = torch.randn(1, 3, 16, 16, 8)
    coordinates = coordinate_channels([16, 16, 8])[None]
    out = model(torch.cat([image, coordinates], 1), text_batch(1))
    assert out.logits.shape == (1, 1, 16, 16, 8)
    mirrored = model(torch.cat([image, coordinates.flip(2)], 1), text_batch(1))  # same image, left/right swapped
    assert not torch.allclose(out.logits, mirrored.logits)
    with pytest.raises(RuntimeError, match="expected input.*to have 6 channels, but got 3"):
        model(image, text_batch(1))
