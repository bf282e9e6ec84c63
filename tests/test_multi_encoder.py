"""Backbone options of Align-then-Refine: one encoder per sequence fused at every stage, and deep supervision."""

from __future__ import annotations

import pytest
import torch

from medtextseg.config import Config
from medtextseg.losses.segmentation import build_loss
from medtextseg.models.backbone import MultiSequenceEncoder
from medtextseg.models.factory import count_parameters, create_model
from medtextseg.text.batch import TextBatch
from medtextseg.utils.errors import MedTextSegError

SMALL = ["model.channels=[8,16,16]", "model.strides=[[1,1],[2,2],[2,2]]", "model.coordinates=false",
         "model.conditioning=none", "model.presence=false"]


def blank_text(rows: int) -> TextBatch:
    return TextBatch(torch.zeros(rows, 4), torch.zeros(rows, 1, 4), torch.ones(rows, 1, dtype=torch.bool))


def test_each_encoder_reads_only_its_own_sequence_plus_the_shared_channels():
    torch.manual_seed(0)
    encoder = MultiSequenceEncoder(2, groups=[1, 1, 1], shared_channels=2, channels=[8, 16], strides=[[1, 1], [2, 2]])
    seen = []
    for sub in encoder.encoders:
        sub.register_forward_hook(lambda module, args, output: seen.append(args[0]))
    image = torch.randn(2, 5, 8, 8)
    features = encoder(image)
    assert [f.shape for f in features] == [(2, 8, 8, 8), (2, 16, 4, 4)]
    for index, inputs in enumerate(seen):
        torch.testing.assert_close(inputs, torch.cat([image[:, index:index + 1], image[:, 3:]], dim=1))


def test_multi_encoder_model_has_one_encoder_per_sequence_and_the_same_output():
    single = create_model(Config.load("default_2d", [*SMALL, "model.spatial_film=false"]).model, 4)
    multi = create_model(Config.load("default_2d", [*SMALL, "model.spatial_film=false", "model.encoders=3"]).model, 4)
    assert len(multi.encoder.encoders) == 3 and count_parameters(multi) > count_parameters(single)
    image = torch.randn(2, 3, 16, 16)
    assert multi(image, blank_text(2)).logits.shape == single(image, blank_text(2)).logits.shape == (2, 1, 16, 16)


def test_deep_supervision_heads_feed_the_loss_highest_resolution_first():
    config = Config.load("default_2d", [*SMALL, "model.spatial_film=false", "model.deep_supervision=true",
                                        "model.channels=[8,16,16,16]", "model.strides=[[1,1],[2,2],[2,2],[2,2]]"])
    model = create_model(config.model, 4)
    output = model(torch.randn(2, 3, 16, 16), blank_text(2))
    assert [tuple(d.shape[2:]) for d in output.deep_supervision] == [(8, 8), (4, 4)]
    target = torch.zeros(2, 1, 16, 16)
    target[:, :, 4:12, 4:12] = 1
    loss, _ = build_loss(config.loss)(output, target)
    loss.backward()
    for head in model.decoder.deep_heads.values():
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.encoders=2"], "must divide model.in_channels=3"),
    (["model.encoders=3", "model.vision_language_levels=[1]"], "needs model.encoders=1"),
    (["model.deep_supervision=true", "model.head=evidential"], "needs model.head=sigmoid"),
])
def test_impossible_backbone_options_are_named(overrides, message):
    with pytest.raises(MedTextSegError, match=message):
        Config.load("default", overrides)


def test_the_multi_encoder_learns_a_pattern_of_one_sequence():
    """The target is a square that only the second sequence shows (the others are noise); after a few seconds of
    training the fused encoders find it on held-out images, far above the untrained network."""
    torch.manual_seed(0)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, targets = torch.randn(n, 3, 16, 16), torch.zeros(n, 1, 16, 16)
        for row in range(n):
            i, j = torch.randint(0, 10, (2,)).tolist()
            targets[row, 0, i:i + 6, j:j + 6] = 1
        images[:, 1:2] += 3 * targets
        return images, targets

    config = Config.load("default_2d", [*SMALL, "model.spatial_film=false", "model.encoders=3"])
    model, loss = create_model(config.model, 4), build_loss(config.loss)

    def held_out_dice() -> float:
        images, targets = batch(16)
        with torch.no_grad():
            masks = (model.eval()(images, blank_text(16)).logits > 0).float()
        model.train()
        return float(2 * (masks * targets).sum() / (masks.sum() + targets.sum() + 1e-6))

    untrained = held_out_dice()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        images, targets = batch(8)
        optimizer.zero_grad()
        loss(model(images, blank_text(8)), targets)[0].backward()
        optimizer.step()
    trained = held_out_dice()
    print(f"held-out Dice: untrained {untrained:.3f}, trained {trained:.3f}")
    assert trained > 0.9 and trained > untrained + 0.3, (untrained, trained)
