"""The default loss, the presence logit and mask post-processing, on tiny inputs with answers worked out by hand."""

import math

import torch

from medtextseg.config import LossConfig
from medtextseg.losses.segmentation import PromptSegmentationLoss
from medtextseg.models.output import ModelOutput
from medtextseg.models.presence import topk_presence


def test_topk_presence_is_the_mean_of_the_k_best_voxels():
    logits = torch.tensor([[[-5.0, 3.0, 1.0, -2.0]], [[-4.0, -3.0, -1.0, -6.0]]])  # [B=2, 1, 4]
    assert topk_presence(logits, 2).tolist() == [2.0, -2.0]
    assert topk_presence(logits, 10).tolist() == [-0.75, -3.5]  # k larger than the image: all voxels


def test_dice_ignores_empty_targets_and_bce_covers_everything():
    big = 20.0
    targets = torch.tensor([[[1.0, 1.0, 0.0, 0.0]], [[0.0, 0.0, 0.0, 0.0]]])  # sample 2: absent target
    logits = (targets * 2 - 1) * big  # confident and right everywhere
    loss = PromptSegmentationLoss(LossConfig(presence_weight=0.0))
    total, parts = loss(ModelOutput(logits=logits), targets)
    assert parts["dice"] < 1e-6 and parts["bce"] < 1e-6 and float(total) < 1e-6
    # painting the absent target is not a Dice matter (undefined for an empty target) but BCE sees it
    wrong = logits.clone()
    wrong[1, 0, 0] = big
    _, parts = loss(ModelOutput(logits=wrong), targets)
    assert parts["dice"] < 1e-6
    assert math.isclose(parts["bce"], big / 8, rel_tol=1e-4)  # one voxel of 8 with loss ~20


def test_presence_term_is_bce_against_target_present():
    targets = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]]])
    output = ModelOutput(logits=torch.zeros(2, 1, 2), presence=torch.tensor([0.0, 0.0]))
    total, parts = PromptSegmentationLoss(LossConfig(terms={}, presence_weight=1.0))(output, targets)
    assert math.isclose(parts["presence"], math.log(2), rel_tol=1e-5)
    assert math.isclose(float(total), math.log(2), rel_tol=1e-5)


def test_small_components_are_dropped_and_large_ones_kept():
    import numpy as np

    from medtextseg.inference.postprocessing import remove_small_components

    mask = np.zeros((10, 10, 3), bool)
    mask[1:4, 1:4, 1] = True  # 9 voxels
    mask[7, 7, 0:2] = True  # 2 voxels
    mask[8, 8, 2] = True  # touches the pair diagonally: full connectivity makes them one component of 3
    kept = remove_small_components(mask, 4)
    assert kept.sum() == 9 and kept[1:4, 1:4, 1].all()
    assert remove_small_components(mask, 3).sum() == 12
    assert remove_small_components(mask, 0) is mask
    # the largest component stays even when below the minimum (Align-then-Refine's "largest + >= m")
    assert remove_small_components(mask, 20, keep_largest=True).sum() == 9
    assert remove_small_components(mask, 20).sum() == 0
