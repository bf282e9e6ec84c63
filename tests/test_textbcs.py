"""TextBCS: bidirectional vision-language stages, pixel-text similarity, evidential head, their losses, and a
toy task on which the text must be read through the encoder's attention alone."""

from __future__ import annotations

import math

import pytest
import torch

from medtextseg.config import Config
from medtextseg.losses.evidential import EvidentialCrossEntropyLoss, EvidentialKLLoss
from medtextseg.losses.segmentation import build_loss
from medtextseg.losses.similarity import PixelTextAlignLoss, PixelTextBCELoss, PixelTextHeatmapLoss, area_target
from medtextseg.models.conditioning.bidirectional_attention import VisionLanguageStage, attention_heads
from medtextseg.models.evidential import dirichlet_belief, dirichlet_uncertainty, evidential_logits
from medtextseg.models.factory import create_model
from medtextseg.models.output import ModelOutput
from medtextseg.models.similarity import PixelTextSimilarity
from medtextseg.text.batch import TextBatch
from medtextseg.training.schedule import LossWeightSchedule
from medtextseg.utils.errors import MedTextSegError

SMALL_2D = ["model.channels=[8,16,16]", "model.strides=[[1,1],[2,2],[2,2]]", "model.vision_language_levels=[1,2]",
            "model.similarity_levels=[1,2]", "model.coordinates=false"]


def text_batch(rows: int, dim: int = 12, tokens: int = 5, seed: int = 0) -> TextBatch:
    generator = torch.Generator().manual_seed(seed)
    pooled = torch.nn.functional.normalize(torch.randn(rows, dim, generator=generator), dim=1)
    mask = torch.ones(rows, tokens, dtype=torch.bool)
    mask[0, tokens - 2:] = False  # a shorter first prompt: padding must not matter
    return TextBatch(pooled, torch.randn(rows, tokens, dim, generator=generator) * mask[..., None], mask)


def test_attention_heads_keep_at_least_eight_channels_each_and_divide_the_width():
    assert [attention_heads(c) for c in (8, 16, 24, 64, 128, 512)] == [1, 2, 3, 8, 8, 8]


def test_vision_language_stage_reads_the_words_and_ignores_padding():
    torch.manual_seed(0)
    stage = VisionLanguageStage(channels=16, text_in=12).eval()
    features, text = torch.randn(2, 16, 6, 5, 4), text_batch(2)
    out, words = stage(features, text.tokens, text.mask)
    assert out.shape == features.shape and words.shape == (2, 5, 16)
    padded = text.tokens.clone()
    padded[0, 3:] = 100.0  # values of padding tokens
    again, _ = stage(features, padded, text.mask)
    torch.testing.assert_close(again[0], out[0])
    other, _ = stage(features, text_batch(2, seed=1).tokens, text.mask)
    assert (other - out).abs().max() > 1e-3  # other words, other features


def test_encoder_runs_once_per_image_until_the_first_attention_stage():
    torch.manual_seed(0)
    model = create_model(Config.load("textbcs", SMALL_2D).model, text_dim=12).eval()
    calls = []
    model.encoder.stages[0].register_forward_hook(lambda module, args, output: calls.append(output.shape[0]))
    image, text = torch.randn(2, 3, 16, 16), text_batch(4)
    index = torch.tensor([0, 0, 1, 1])
    shared = model(image, text, index)
    repeated = model(image[index], text)
    assert calls == [2, 4]  # stage 0 saw 2 images with image_index, 4 when each prompt brought its own copy
    torch.testing.assert_close(shared.logits, repeated.logits)
    assert set(shared.similarity) == {"encoder_1", "encoder_2"}
    assert shared.similarity["encoder_1"].shape == (4, 1, 8, 8) and shared.evidence.shape == (4, 2, 16, 16)


def test_evidential_logit_is_the_expected_probability_and_masses_sum_to_one():
    evidence = torch.rand(3, 2, 4, 4) * 5
    alpha = evidence + 1
    torch.testing.assert_close(torch.sigmoid(evidential_logits(evidence)), alpha[:, 1:] / alpha.sum(1, keepdim=True))
    uncertainty = dirichlet_uncertainty(evidence)
    torch.testing.assert_close(dirichlet_belief(evidence).sum(1, keepdim=True) + uncertainty,
                               torch.ones_like(uncertainty))
    assert float(dirichlet_uncertainty(torch.zeros(1, 2, 1, 1))) == 1.0  # no evidence: all uncertainty


def test_evidential_losses_match_the_formulas_at_one_voxel():
    evidence = torch.tensor([0.5, 3.0]).reshape(1, 2, 1, 1)  # alpha = (1.5, 4), S = 5.5
    output = ModelOutput(logits=evidential_logits(evidence), evidence=evidence)
    target = torch.ones(1, 1, 1, 1)  # class 1
    expected_ce = torch.digamma(torch.tensor(5.5)) - torch.digamma(torch.tensor(4.0))
    torch.testing.assert_close(EvidentialCrossEntropyLoss()(output, target), expected_ce.reshape(1))
    # KL of Dir(1.5, 1) (the true class's evidence removed) from Dir(1, 1)
    a = torch.tensor([1.5, 1.0])
    expected_kl = (torch.lgamma(a.sum()) - math.lgamma(2) - torch.lgamma(a).sum()
                   + ((a - 1) * (torch.digamma(a) - torch.digamma(a.sum()))).sum())
    torch.testing.assert_close(EvidentialKLLoss()(output, target), expected_kl.reshape(1))
    right = ModelOutput(logits=output.logits, evidence=torch.tensor([0.0, 7.0]).reshape(1, 2, 1, 1))
    assert float(EvidentialKLLoss()(right, target)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(MedTextSegError, match="model.head=evidential"):
        EvidentialCrossEntropyLoss()(ModelOutput(logits=output.logits), target)


def test_similarity_is_a_bounded_cosine_over_temperature_learnable_or_fixed():
    head = PixelTextSimilarity(2, channels=8, text_dim=12, dim=4, temperature=0.07)
    logits = head(torch.randn(2, 8, 5, 5), torch.randn(2, 12))
    assert logits.shape == (2, 1, 5, 5) and logits.abs().max() <= 1 / 0.07 + 1e-4
    assert "log_temperature" in dict(head.named_parameters())
    fixed = PixelTextSimilarity(2, 8, 12, temperature=1.0, learnable_temperature=False)
    assert "log_temperature" not in dict(fixed.named_parameters()) and fixed.temperature == pytest.approx(1.0)


def test_similarity_losses_reward_a_map_that_lights_up_the_target():
    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:6, 2:6] = 1
    coarse = area_target(target, (4, 4))
    assert coarse.sum() == 4  # the 4 x 4 lesion covers 4 whole 2 x 2 cells
    good = ModelOutput(logits=target, similarity={"encoder_1": (coarse * 2 - 1) * 5})
    bad = ModelOutput(logits=target, similarity={"encoder_1": -(coarse * 2 - 1) * 5})
    for term in (PixelTextBCELoss(), PixelTextHeatmapLoss(), PixelTextAlignLoss()):
        assert float(term(good, target)) < float(term(bad, target)), type(term).__name__
    with pytest.raises(MedTextSegError, match="add the similarity block"):
        PixelTextBCELoss()(ModelOutput(logits=target), target)


def test_the_kl_term_is_annealed_and_schedules_of_unlisted_terms_fail():
    config = Config.load("textbcs", SMALL_2D)
    schedule = LossWeightSchedule(config.loss.schedules)
    assert [schedule.factors(step)["evidential_kl"] for step in (0, 149, 299, 900)] == [1 / 300, 0.5, 1.0, 1.0]
    model = create_model(config.model, text_dim=12)
    output, target = model(torch.randn(1, 3, 16, 16), text_batch(1)), torch.zeros(1, 1, 16, 16)
    loss = build_loss(config.loss)
    off, parts = loss(output, target, factors={"evidential_kl": 0.0})
    on, _ = loss(output, target, factors={"evidential_kl": 1.0})
    torch.testing.assert_close(on - off, 0.01 * torch.tensor(parts["evidential_kl"]))
    with pytest.raises(MedTextSegError, match="loss.schedules names"):
        Config.load("default", ["loss.schedules={evidential_kl: {ramp_steps: 10}}"])


def test_textbcs_preset_says_what_the_method_is():
    for preset in ("textbcs", "textbcs_3d"):
        config = Config.load(preset)
        assert config.model.head == "evidential" and list(config.model.blocks) == ["svli", "similarity"]
        assert config.model.blocks["svli"].levels == config.model.blocks["similarity"].levels == (1, 2, 3)
        assert {"evidential_ce", "evidential_kl", "pixel_text_contrastive"} <= set(config.loss.terms)
        assert config.loss.schedules["evidential_kl"].ramp_steps == 300


def test_the_encoder_attention_learns_what_only_the_text_says_and_text_blind_cannot():
    """Noise images and two prompts, one naming the top half and one the bottom half: only the text says which.
    A text-blind network cannot beat Dice ~0.67; with the decoder unconditioned, the prompt reaches the mask only
    through the encoder's vision-language attention. Scored on held-out images after seconds of training."""
    torch.manual_seed(0)
    prompts = text_batch(2, seed=3)

    def batch(n: int) -> tuple[torch.Tensor, TextBatch, torch.Tensor, torch.Tensor]:
        which = torch.arange(2 * n) % 2
        targets = torch.zeros(2 * n, 1, 16, 16)
        targets[which == 0, :, :8] = 1
        targets[which == 1, :, 8:] = 1
        text = TextBatch(prompts.pooled[which], prompts.tokens[which], prompts.mask[which])
        return torch.randn(n, 3, 16, 16), text, torch.arange(n).repeat_interleave(2), targets

    def held_out(overrides: list[str]) -> float:
        config = Config.load("textbcs", [*SMALL_2D, "model.presence=false", *overrides])
        model = create_model(config.model, text_dim=12)
        loss, schedule = build_loss(config.loss), LossWeightSchedule(config.loss.schedules)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for step in range(120):
            images, text, index, targets = batch(8)
            optimizer.zero_grad()
            loss(model(images, text, index), targets, factors=schedule.factors(step))[0].backward()
            optimizer.step()
        model.eval()
        images, text, index, targets = batch(16)
        with torch.no_grad():
            output = model(images, text, index)
        masks = (output.logits > 0).float()
        return float(2 * (masks * targets).sum() / (masks.sum() + targets.sum()))

    text_guided = held_out([])
    blind = held_out(["model.vision_language_levels=[]", "model.similarity_levels=[]",
                      "loss.terms.pixel_text_contrastive=0"])
    print(f"held-out Dice: encoder attention {text_guided:.3f}, text-blind {blind:.3f}")
    assert blind < 0.75 and text_guided > 0.9, (text_guided, blind)
