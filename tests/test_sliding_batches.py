"""Several sliding windows per network call (``inference.sw_batch_size``) give the maps one window per call gives."""

import pytest
import torch

from helpers import as_if_trained
from medtextseg.config import Config
from medtextseg.inference.sliding import gated_probabilities, prompt_maps
from medtextseg.models.factory import create_model
from medtextseg.text.batch import TextBatch

TINY = ["model.channels=[4,8,16]", "model.strides=[[1,1,1],[2,2,1],[2,2,2]]"]


@pytest.fixture(autouse=True)
def fixed_weights():
    """The tiny models' weights from one seed: torch seeds each process at random, and with about three seeds in four
    the presence logits never close the gate between 0.4 and 0.6 (the second test then failed at random)."""
    torch.manual_seed(1)


def prompts(rows: int) -> TextBatch:
    generator = torch.Generator().manual_seed(1)
    return TextBatch(torch.randn(rows, 12, generator=generator), torch.randn(rows, 3, 12, generator=generator),
                     torch.ones(rows, 3, dtype=torch.bool))


@pytest.mark.parametrize("overrides", [[], ["model.head=evidential"]], ids=["sigmoid", "evidential"])
def test_windows_batched_give_the_same_maps_with_mirrors_and_presence(overrides):
    model = as_if_trained(create_model(Config.load("default", [*TINY, *overrides]).model, 12)).eval()
    image = torch.randn(3, 20, 18, 12, generator=torch.Generator().manual_seed(0))  # 3 x 3 x 2 windows of 8 x 8 x 8
    text, swapped = prompts(3), prompts(3).index([2, 1, 0])
    one = prompt_maps(model, image, text, [8, 8, 8], presence_threshold=0.3, mirror_axes=[0, 2],
                      mirrored_text=swapped, sw_batch_size=1)
    assert one.probability.shape == (3, 20, 18, 12) and one.probability.std() > 0.01  # not a constant answer
    for windows in (2, 5):  # 5 does not divide the 18 windows: a short last call
        batched = prompt_maps(model, image, text, [8, 8, 8], presence_threshold=0.3, mirror_axes=[0, 2],
                              mirrored_text=swapped, sw_batch_size=windows)
        torch.testing.assert_close(batched.probability, one.probability, atol=1e-5, rtol=0)
        torch.testing.assert_close(batched.uncertainty, one.uncertainty, atol=1e-5, rtol=0)


def test_every_presence_threshold_in_one_pass_does_not_depend_on_the_windows_per_call():
    model = as_if_trained(create_model(Config.load("default", TINY).model, 12)).eval()
    image = torch.randn(3, 20, 18, 12, generator=torch.Generator().manual_seed(0))
    thresholds = [0.0, 0.4, 0.5, 0.6]
    one = gated_probabilities(model, image, prompts(4), [8, 8, 8], thresholds, sw_batch_size=1)
    assert one.shape == (4, 4, 20, 18, 12)
    assert len({round(float(one[row].sum()), 1) for row in range(4)}) >= 3  # the thresholds gate different windows
    torch.testing.assert_close(gated_probabilities(model, image, prompts(4), [8, 8, 8], thresholds, sw_batch_size=4),
                               one, atol=1e-5, rtol=0)
    for row, threshold in enumerate(thresholds):  # and each row is what prompt_maps gives at that threshold
        alone = prompt_maps(model, image, prompts(4), [8, 8, 8], presence_threshold=threshold, sw_batch_size=3)
        torch.testing.assert_close(one[row], alone.probability, atol=1e-5, rtol=0)
