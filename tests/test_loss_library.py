"""The loss library: each term against MONAI or a value worked out by hand, weight maps, the composite loss."""

import math
import warnings

import monai.losses as monai_losses
import pytest
import torch
import torch.nn.functional as F

from medtextseg.config import Config, LossConfig
from medtextseg.losses.base import OutputLossTerm
from medtextseg.losses.boundary import HausdorffDTLoss
from medtextseg.losses.compound import DiceBCELoss
from medtextseg.losses.deep_supervision import downsample_target, level_weights
from medtextseg.losses.pixelwise import BCELoss, FocalLoss, TopKBCELoss
from medtextseg.losses.region import DiceLoss, FocalTverskyLoss, JaccardLoss, TverskyLoss
from medtextseg.losses.registry import LOSS_TERMS, create_loss_term
from medtextseg.losses.segmentation import PromptSegmentationLoss, build_loss
from medtextseg.models.output import ModelOutput
from medtextseg.utils.errors import MedTextSegError

SHAPES = {"2d": (3, 1, 7, 6), "3d": (3, 1, 5, 4, 3)}


def random_case(shape, seed=0):
    """Logits of every value different, and targets with a foreground blob in every sample."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=generator) * 2
    target = (torch.rand(shape, generator=generator) > 0.6).float()
    target.flatten(1)[:, 0] = 1.0  # never empty
    return logits, target


def row(*values):
    """A [1, 1, 1, N] 2D tensor: one sample, one row of voxels."""
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 1, -1)


# ---------------------------------------------------------------- against MONAI (weight None and all ones)
def monai_reference(name):
    """(our term, MONAI's per-sample value as a function of (logits, target)) for the terms MONAI has."""
    s = 1e-5

    def per_sample(loss):
        return lambda x, y: loss(x, y).flatten(1).mean(1)

    return {
        "dice": (DiceLoss(), per_sample(monai_losses.DiceLoss(sigmoid=True, reduction="none"))),
        "dice_squared": (DiceLoss(squared=True),
                         per_sample(monai_losses.DiceLoss(sigmoid=True, squared_pred=True, reduction="none"))),
        # MONAI's Jaccard doubles numerator and denominator, smoothing included: 2 s there is s here
        "jaccard": (JaccardLoss(smooth=s),
                    per_sample(monai_losses.DiceLoss(sigmoid=True, jaccard=True, smooth_nr=2 * s, smooth_dr=2 * s,
                                                     reduction="none"))),
        "tversky": (TverskyLoss(alpha=0.7, beta=0.3),
                    per_sample(monai_losses.TverskyLoss(sigmoid=True, alpha=0.7, beta=0.3, reduction="none"))),
        "focal_tversky": (FocalTverskyLoss(alpha=0.3, beta=0.7, gamma=1.5),
                          lambda x, y: monai_losses.TverskyLoss(sigmoid=True, alpha=0.3, beta=0.7,
                                                                reduction="none")(x, y).flatten(1)[:, 0] ** 1.5),
        "focal": (FocalLoss(), per_sample(monai_losses.FocalLoss(gamma=2.0, alpha=0.25, reduction="none"))),
        "hausdorff": (HausdorffDTLoss(), per_sample(monai_losses.HausdorffDTLoss(sigmoid=True, include_background=True,
                                                                              reduction="none"))),
    }[name]


@pytest.mark.parametrize("dims", SHAPES)
@pytest.mark.parametrize("name", ["dice", "dice_squared", "jaccard", "tversky", "focal_tversky", "focal",
                                  "hausdorff"])
def test_term_equals_monai_unweighted_and_with_all_ones_weights(name, dims):
    logits, target = random_case(SHAPES[dims])
    ours, reference = monai_reference(name)
    expected = reference(logits, target)
    assert expected.shape == (3,)
    torch.testing.assert_close(ours(logits, target), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours(logits, target, torch.ones_like(target)), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dims", SHAPES)
def test_bce_equals_torch_per_sample(dims):
    logits, target = random_case(SHAPES[dims])
    expected = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)
    torch.testing.assert_close(BCELoss()(logits, target), expected)
    torch.testing.assert_close(BCELoss()(logits, target, torch.ones(1)), expected)  # a scalar weight broadcasts
    # Top-K with 100 % of the voxels is BCE
    torch.testing.assert_close(TopKBCELoss(percent=100)(logits, target), expected)


def call(term, logits, target, weight=None):
    """A term on mask logits; an ``OutputLossTerm`` gets them as its similarity map and as Dirichlet evidence
    (expm1 of the positive part for the target, of the negative part for the background: large logits of the
    right sign are overwhelming evidence, as the minimum-at-the-truth check needs)."""
    if not isinstance(term, OutputLossTerm):
        return term(logits, target, weight)
    evidence = torch.cat([torch.expm1(F.relu(-logits)), torch.expm1(F.relu(logits))], dim=1)
    return term(ModelOutput(logits=logits, similarity={"encoder_1": logits}, evidence=evidence), target, weight)


@pytest.mark.parametrize("name", sorted(LOSS_TERMS))
def test_all_ones_weight_equals_no_weight_for_every_registered_term(name):
    logits, target = random_case(SHAPES["3d"], seed=3)
    term = create_loss_term(name)
    torch.testing.assert_close(call(term, logits, target, torch.ones_like(target)), call(term, logits, target))


# ---------------------------------------------------------------- weight maps
def test_binary_weight_on_region_terms_equals_monai_on_masked_inputs():
    logits, target = random_case(SHAPES["2d"], seed=1)
    mask = torch.zeros_like(target)
    mask[..., :4] = 1.0  # the first 4 of 6 columns are labelled
    masked_dice = monai_losses.MaskedDiceLoss(sigmoid=True, reduction="none")
    expected = masked_dice(logits, target, mask=mask).flatten()
    torch.testing.assert_close(DiceLoss()(logits, target, mask), expected)
    # Tversky: with m in {0, 1}, p m (1 - g m) = m p (1 - g), so MONAI on (p m, g m) is the weighted loss
    monai_tversky = monai_losses.TverskyLoss(alpha=0.7, beta=0.3, reduction="none")
    expected = monai_tversky(torch.sigmoid(logits) * mask, target * mask).flatten()
    torch.testing.assert_close(TverskyLoss(alpha=0.7, beta=0.3)(logits, target, mask), expected)


@pytest.mark.parametrize("term", [BCELoss(), BCELoss(label_smoothing=0.1), FocalLoss(), TopKBCELoss(percent=20),
                                  TopKBCELoss(percent=7, label_smoothing=0.05)],
                         ids=["bce", "bce_smoothed", "focal", "topk_20", "topk_7_smoothed"])
def test_pixelwise_zero_weight_voxels_are_removed_voxels(term):
    logits, target = random_case((2, 1, 6, 10), seed=2)
    weight = torch.ones_like(target)
    weight[..., 6:] = 0.0  # columns 6..9 unlabelled
    kept = term(logits[..., :6], target[..., :6])
    torch.testing.assert_close(term(logits, target, weight), kept)
    # and changing the prediction on unlabelled voxels changes nothing
    changed = logits.clone()
    changed[..., 6:] = 50.0
    torch.testing.assert_close(term(changed, target, weight), kept)
    # a sample with no labelled voxel at all weighs 0 (the composite leaves it out of the batch mean)
    torch.testing.assert_close(term(logits, target, torch.zeros_like(target)), torch.zeros(2))


def test_non_binary_weights_make_a_weighted_mean():
    # per-voxel BCE at logit 0 is ln 2 wherever the target is; at logit ln 3 with target 1 it is -ln(3/4)
    logits = row(0.0, math.log(3))
    target = row(0.0, 1.0)
    weight = row(1.0, 3.0)
    expected = (1 * math.log(2) + 3 * -math.log(0.75)) / 4
    assert math.isclose(float(BCELoss()(logits, target, weight)), expected, rel_tol=1e-6)


def test_weighted_dice_by_hand():
    # p = 1/2 everywhere, g = [1, 1, 0, 0], w = [2, 0, 1, 1]:
    # 2 sum wpg = 2 * 1 = 2;  sum wp + sum wg = (2 + 0 + 1 + 1)/2 + 2 = 4  -> loss 1 - 2/4 = 0.5
    loss = DiceLoss(smooth=1e-9)(row(0, 0, 0, 0), row(1, 1, 0, 0), row(2, 0, 1, 1))
    assert math.isclose(float(loss), 0.5, rel_tol=1e-6)


# ---------------------------------------------------------------- values worked out by hand
def test_region_terms_by_hand():
    half = row(0, 0, 0, 0, 0, 0)  # p = 1/2 on 6 voxels
    target = row(1, 1, 0, 0, 0, 0)
    # TP = 2 * 1/2 = 1, FP = 4 * 1/2 = 2, FN = 2 * 1/2 = 1, sum p = 3, sum g = 2
    assert math.isclose(float(DiceLoss(smooth=1e-9)(half, target)), 1 - 2 / 5, rel_tol=1e-6)
    # squared: sum p^2 = 6/4 = 1.5, sum g^2 = 2 -> 1 - 2/3.5
    assert math.isclose(float(DiceLoss(smooth=1e-9, squared=True)(half, target)), 1 - 2 / 3.5, rel_tol=1e-6)
    # Jaccard: union = 3 + 2 - 1 = 4 -> 1 - 1/4
    assert math.isclose(float(JaccardLoss(smooth=1e-9)(half, target)), 0.75, rel_tol=1e-6)
    # alpha weighs FP: 1 - 1/(1 + 0.7*2 + 0.3*1) = 1 - 1/2.7; swapped: 1 - 1/(1 + 0.3*2 + 0.7*1) = 1 - 1/2.3
    assert math.isclose(float(TverskyLoss(0.7, 0.3, smooth=1e-9)(half, target)), 1 - 1 / 2.7, rel_tol=1e-6)
    assert math.isclose(float(TverskyLoss(0.3, 0.7, smooth=1e-9)(half, target)), 1 - 1 / 2.3, rel_tol=1e-6)
    focal_tversky = FocalTverskyLoss(0.7, 0.3, gamma=0.75, smooth=1e-9)(half, target)
    assert math.isclose(float(focal_tversky), (1 - 1 / 2.7) ** 0.75, rel_tol=1e-6)


def test_pixelwise_terms_by_hand():
    # logit ln 3 -> p = 3/4. Target 1 smoothed by e = 0.1 -> 0.95: -(0.95 ln 3/4 + 0.05 ln 1/4)
    smoothed = BCELoss(label_smoothing=0.1)(row(math.log(3)), row(1.0))
    assert math.isclose(float(smoothed), -(0.95 * math.log(0.75) + 0.05 * math.log(0.25)), rel_tol=1e-6)
    # focal at p = 1/2: (1 - p_t)^2 ln 2 = ln2 / 4, times alpha = 0.25 (target 1) or 0.75 (target 0)
    focal = FocalLoss(gamma=2.0, alpha=0.25)(torch.zeros(2, 1, 1, 1), torch.tensor([1.0, 0.0]).view(2, 1, 1, 1))
    torch.testing.assert_close(focal, torch.tensor([0.25, 0.75]) * math.log(2) / 4)
    # Top-K: target 0, BCE = softplus(x). 10 voxels, 20 % -> the 2 largest; 25 % -> ceil(2.5) = 3 largest
    logits = row(-3, 4, 0, 1, -1, 2, 3, -2, 0.5, -4)
    softplus = F.softplus(torch.tensor([4.0, 3.0, 2.0]))
    target = torch.zeros_like(logits)
    assert math.isclose(float(TopKBCELoss(percent=20)(logits, target)), float(softplus[:2].mean()), rel_tol=1e-6)
    assert math.isclose(float(TopKBCELoss(percent=25)(logits, target)), float(softplus.mean()), rel_tol=1e-6)


def test_hausdorff_by_hand():
    # target [1, 1, 0, 0, 0]: distance to its boundary d_G = [2, 1, 1, 2, 3]
    # prediction [1, 1, 1, 0, 0] (logits +-30): d_P = [3, 2, 1, 1, 2]
    # (p - g)^2 = [0, 0, 1, 0, 0] -> mean = 1 * (1^2 + 1^2) / 5 = 0.4
    loss = HausdorffDTLoss()(row(30, 30, 30, -30, -30), row(1, 1, 0, 0, 0))
    assert math.isclose(float(loss), 0.4, rel_tol=1e-6)


# ---------------------------------------------------------------- shapes, gradients, minimum
@pytest.mark.parametrize("dims", SHAPES)
@pytest.mark.parametrize("name", sorted(LOSS_TERMS))
def test_every_term_gives_per_sample_values_gradients_and_a_minimum_at_the_truth(name, dims):
    logits, target = random_case(SHAPES[dims], seed=4)
    term = create_loss_term(name)
    logits.requires_grad_(True)
    value = call(term, logits, target)
    assert value.shape == (3,) and torch.isfinite(value).all()
    value.sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    perfect = call(term, (target * 2 - 1) * 20, target)
    worst = call(term, (1 - 2 * target) * 20, target)
    assert perfect.max() < 1e-4 and (worst > 0.1).all()


def test_bad_inputs_name_the_problem():
    logits, target = random_case(SHAPES["2d"])
    with pytest.raises(MedTextSegError, match=r"logits \[3, 1, 7, 6\] and target \[3, 1, 7, 5\]"):
        DiceLoss()(logits, target[..., :5])
    with pytest.raises(MedTextSegError, match=r"weight map \[2, 1, 7, 6\] does not broadcast"):
        BCELoss()(logits, target, torch.ones(2, 1, 7, 6))
    with pytest.raises(MedTextSegError, match=r"weight map must be non-negative, got a minimum of -1"):
        BCELoss()(logits, target, -torch.ones(1))
    with pytest.raises(MedTextSegError, match=r"expected logits \[B, 1, \*spatial\] of a sigmoid head"):
        DiceLoss()(torch.zeros(2, 2, 3, 3), torch.zeros(2, 2, 3, 3))
    with pytest.raises(MedTextSegError, match=r"HausdorffDTLoss: expected 2D or 3D logits"):
        HausdorffDTLoss()(torch.zeros(2, 1, 3), torch.zeros(2, 1, 3))
    with pytest.raises(MedTextSegError, match=r"TverskyLoss: alpha must be >= 0, got -0.1"):
        TverskyLoss(alpha=-0.1)
    with pytest.raises(MedTextSegError, match=r"TopKBCELoss: percent must be > 0 and <= 100, got 0"):
        TopKBCELoss(percent=0)


# ---------------------------------------------------------------- the composite loss
def old_default_loss(output, targets):
    """The default loss before the library, as it was: MONAI Dice over non-empty targets + BCE + presence."""
    dice_loss = monai_losses.DiceLoss(sigmoid=True, batch=False, reduction="none", smooth_nr=1e-5, smooth_dr=1e-5)
    logits = output.logits.float()
    present = targets.flatten(1).amax(1) > 0
    bce = F.binary_cross_entropy_with_logits(logits, targets)
    dice = dice_loss(logits[present], targets[present]).mean() if present.any() else logits.sum() * 0.0
    presence = F.binary_cross_entropy_with_logits(output.presence.float(), present.float())
    parts = {"dice": float(dice.detach()), "bce": float(bce.detach()), "presence": float(presence.detach())}
    return dice + bce + 0.5 * presence, parts


@pytest.mark.parametrize("dims", SHAPES)
def test_default_composite_equals_the_old_default_loss(dims):
    shape = (5,) + SHAPES[dims][1:]
    logits, targets = random_case(shape, seed=5)
    targets[1] = 0.0
    targets[3] = 0.0  # two absent targets
    presence = torch.randn(5, generator=torch.Generator().manual_seed(6))
    new_logits = logits.clone().requires_grad_(True)
    old_logits = logits.clone().requires_grad_(True)
    total, parts = build_loss(Config.load("default").loss)(ModelOutput(new_logits, presence), targets)
    old_total, old_parts = old_default_loss(ModelOutput(old_logits, presence), targets)
    assert parts.keys() == old_parts.keys()
    for key, value in old_parts.items():
        assert math.isclose(parts[key], value, rel_tol=1e-5), key
    torch.testing.assert_close(total, old_total)
    total.backward()
    old_total.backward()
    torch.testing.assert_close(new_logits.grad, old_logits.grad)


def test_region_terms_skip_empty_targets_and_pixel_terms_count_all():
    logits, targets = random_case((3, 1, 4, 5), seed=7)
    targets[2] = 0.0
    config = LossConfig(terms={"tversky": 1.0, "focal": 2.0}, params={"tversky": {"alpha": 0.7, "beta": 0.3}},
                        presence_weight=0)
    total, parts = build_loss(config)(ModelOutput(logits), targets)
    tversky = TverskyLoss(0.7, 0.3)(logits, targets)
    focal = FocalLoss()(logits, targets)
    assert math.isclose(parts["tversky"], float(tversky[:2].mean()), rel_tol=1e-6)
    assert math.isclose(parts["focal"], float(focal.mean()), rel_tol=1e-6)
    assert math.isclose(float(total), parts["tversky"] + 2 * parts["focal"], rel_tol=1e-6)


def test_dice_bce_enters_as_its_components():
    logits, targets = random_case((3, 1, 4, 5), seed=8)
    targets[0] = 0.0
    standalone = DiceBCELoss()(logits, targets)
    torch.testing.assert_close(standalone, DiceLoss()(logits, targets) + BCELoss()(logits, targets))
    _, parts = build_loss(LossConfig(terms={"dice_bce": 1.0}, presence_weight=0))(ModelOutput(logits), targets)
    _, reference = build_loss(LossConfig(terms={"dice": 1.0, "bce": 1.0}, presence_weight=0))(ModelOutput(logits),
                                                                                             targets)
    assert parts == {"dice_bce.dice": reference["dice"], "dice_bce.bce": reference["bce"]}


def test_composite_weight_map_drops_unlabelled_voxels_and_samples():
    logits, targets = random_case((3, 1, 4, 6), seed=9)
    weight = torch.ones_like(targets)
    weight[..., 4:] = 0.0  # columns 4, 5 unlabelled in every sample
    weight[1] = 0.0  # sample 1 unlabelled altogether
    loss = build_loss(LossConfig(terms={"dice": 1.0, "bce": 1.0, "topk_bce": 1.0}, presence_weight=0))
    total, parts = loss(ModelOutput(logits), targets, weight)
    keep = torch.tensor([0, 2])
    expected_total, expected = loss(ModelOutput(logits[keep][..., :4]), targets[keep][..., :4])
    assert parts == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(total, expected_total)


def test_terms_of_weight_zero_are_off_and_presence_is_bce_against_target_present():
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).view(2, 1, 1, 2)
    output = ModelOutput(logits=torch.zeros(2, 1, 1, 2), presence=torch.tensor([0.0, 0.0]))
    total, parts = build_loss(LossConfig(terms={"dice": 0.0}, presence_weight=1.0))(output, targets)
    assert parts == pytest.approx({"presence": math.log(2)})
    assert math.isclose(float(total), math.log(2), rel_tol=1e-6)


# ---------------------------------------------------------------- deep supervision
def test_max_pooling_keeps_a_one_voxel_target():
    target = torch.zeros(1, 1, 8, 8, 4)
    target[0, 0, 5, 2, 3] = 1.0
    low = downsample_target(target, (2, 2, 1))
    assert low.sum() == 1 and low[0, 0, 1, 0, 0] == 1  # voxel (5, 2, 3) lies in cell (5//4, 2//4, 3//4)


def test_deep_supervision_sums_levels_with_halving_weights():
    assert level_weights(3, "halving") == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    assert level_weights(2, [3.0, 1.0]) == pytest.approx([0.75, 0.25])
    logits, targets = random_case((2, 1, 8, 8), seed=10)
    deep = [torch.randn(2, 1, 4, 4), torch.randn(2, 1, 2, 2)]
    config = LossConfig(terms={"dice": 1.0, "bce": 0.5}, presence_weight=0)
    total, parts = build_loss(config)(ModelOutput(logits, deep_supervision=deep), targets)
    per_level = [build_loss(config)(ModelOutput(level), F.adaptive_max_pool2d(targets, level.shape[2:]))[0]
                 for level in [logits, *deep]]
    expected = sum(w * value for w, value in zip([4 / 7, 2 / 7, 1 / 7], per_level, strict=True))
    torch.testing.assert_close(total, expected)
    assert math.isclose(float(total), parts["dice"] + 0.5 * parts["bce"], rel_tol=1e-6)
    # switched off: the deep-supervision maps are ignored
    off = LossConfig(terms={"dice": 1.0, "bce": 0.5}, presence_weight=0, deep_supervision_weights=None)
    torch.testing.assert_close(build_loss(off)(ModelOutput(logits, deep_supervision=deep), targets)[0],
                               per_level[0])
    wrong = LossConfig(deep_supervision_weights=[1.0, 0.5])
    with pytest.raises(MedTextSegError, match=r"'loss.deep_supervision_weights' has 2 weights but the model "
                                              r"returns 3 outputs"):
        build_loss(wrong)(ModelOutput(logits, deep_supervision=deep), targets)


# ---------------------------------------------------------------- configuration
def test_config_names_terms_and_params():
    config = Config.load("default", ["loss.terms={tversky: 1, topk_bce: 1}",
                                     "loss.params={tversky: {alpha: 0.3, beta: 0.7}, topk_bce: {percent: 10}}"])
    loss = build_loss(config.loss)
    assert isinstance(loss, PromptSegmentationLoss)
    assert loss.names == ["tversky", "topk_bce"]
    assert (loss.term("tversky").alpha, loss.term("tversky").beta) == (0.3, 0.7)
    assert loss.term("topk_bce").percent == 10


def test_unknown_term_fails_at_load_with_the_valid_names():
    with pytest.raises(MedTextSegError, match=r"config field 'loss.terms'.*unknown loss term 'dicee' \(did you "
                                              r"mean 'dice'\?\); valid: bce, dice, dice_bce, evidential_ce, "
                                              r"evidential_kl, focal, focal_tversky, hausdorff, jaccard, "
                                              r"pixel_text_align, pixel_text_contrastive, pixel_text_heat, "
                                              r"topk_bce, tversky"):
        Config.load("default", ["loss.terms={dicee: 1}"])


def test_bad_term_parameters_fail_at_load():
    with pytest.raises(MedTextSegError, match=r"loss term 'tversky' has no parameter 'alpah' \(did you mean "
                                              r"'alpha'\?\); valid: alpha, beta, smooth"):
        Config.load("default", ["loss.params={tversky: {alpah: 0.7}}"])
    with pytest.raises(MedTextSegError, match=r"loss term 'focal': FocalLoss: alpha must be >= 0 and <= 1, got 2"):
        Config.load("default", ["loss.params.focal.alpha=2"])
    with pytest.raises(MedTextSegError, match=r"config field 'loss.terms.dice'.*greater than or equal to 0"):
        Config.load("default", ["loss.terms.dice=-1"])


def test_configs_saved_before_the_library_still_load():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = Config.from_dict({"loss": {"dice_weight": 0.0, "bce_weight": 2.0, "presence_weight": 0.5}})
    assert config.loss.terms == {"dice": 0.0, "bce": 2.0}
    assert any("loss.terms" in str(w.message) for w in caught if issubclass(w.category, FutureWarning))
