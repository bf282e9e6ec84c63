"""FiLM/CBN blocks and preset: each link of the fusion chain does what its equation says, the ablation
switches build what they name, and every parameter of the 2D and 3D presets learns."""

import pytest
import torch
import torch.nn.functional as F

from helpers import as_if_trained
from medtextseg.config import Config
from medtextseg.models.blocks.cbam import CBAM
from medtextseg.models.conditioning.cbn import ConditionalBatchNorm
from medtextseg.models.conditioning.film import FiLM
from medtextseg.models.conditioning.fusion import ConcatFusion, FusionChain, ResidualConditionalBatchNorm
from medtextseg.models.factory import count_parameters, create_model
from medtextseg.text.batch import TextBatch

SMALL_2D = ["model.channels=[4,8,16,16]", "model.coordinates=false"]
ABLATION = {  # the steps of METHODS.md 3.8 Table 6, as in studies/filmcbn_ablation.yaml
    "concat": ["model.conditioning=concat", "model.block_attention=[]"],
    "film": ["model.fusion_se=false", "model.fusion_cbn=false", "model.block_attention=[]"],
    "film_cbn": ["model.fusion_se=false", "model.block_attention=[]"],
    "film_cbn_se": ["model.block_attention=[se]"],
    "full": [],
}


def text_batch(rows: int, dim: int = 12, seed: int = 0) -> TextBatch:
    generator = torch.Generator().manual_seed(seed)
    return TextBatch(torch.randn(rows, dim, generator=generator), torch.randn(rows, 3, dim, generator=generator),
                     torch.ones(rows, 3, dtype=torch.bool))


def test_fusion_chain_output_has_unit_channel_norm_and_film_residual_alone_keeps_direction():
    torch.manual_seed(0)
    features, text = torch.randn(3, 8, 5, 5), torch.randn(3, 12)
    full = FusionChain(2, 12, 8)
    norms = full(features, text).norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))  # Eq. 15
    film_only = FusionChain(2, 12, 8, se=False, cbn=False)
    # untrained FiLM is the identity, so (F + F) / ||2F|| = F / ||F||
    torch.testing.assert_close(film_only(features, text), F.normalize(features, dim=1))


def test_conditional_batch_norm_is_batch_norm_with_text_affine():
    torch.manual_seed(0)
    cbn = ConditionalBatchNorm(2, text_dim=4, channels=3)
    with torch.no_grad():
        cbn.affine.weight.normal_()
        cbn.affine.bias.normal_()
    x, t = torch.randn(6, 3, 4, 4) * 3 + 2, torch.randn(6, 4)
    gamma, beta = cbn.affine(t).chunk(2, dim=-1)
    mean, var = x.mean((0, 2, 3), keepdim=True), x.var((0, 2, 3), unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-5) * (1 + gamma[..., None, None]) + beta[..., None, None]
    torch.testing.assert_close(cbn(x, t), expected)
    cbn.eval()  # running statistics, not the batch's: one image at a time gives the same answer
    torch.testing.assert_close(cbn(x[:1], t[:1]), cbn(x, t)[:1])


def test_cbam_gates_values_and_spatial_only_variant_has_no_mlp():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 6, 4)
    for block in (CBAM(3, 8), CBAM(3, 8, channel_attention=False)):
        out = block(x)
        assert out.shape == x.shape
        assert torch.all(out.abs() <= x.abs() + 1e-6)  # sigmoid gates only attenuate
        assert not torch.allclose(out, x)
    assert CBAM(3, 8, channel_attention=False).mlp is None


def test_concat_fusion_reads_the_text():
    torch.manual_seed(0)
    fusion = ConcatFusion(2, 12, 8)
    x = torch.randn(1, 8, 4, 4)
    assert not torch.allclose(fusion(x, torch.randn(1, 12)), fusion(x, torch.randn(1, 12)))


@pytest.mark.parametrize("step", list(ABLATION))
def test_ablation_steps_build_what_they_name(step):
    model = create_model(Config.load("filmcbn", [*SMALL_2D, *ABLATION[step]]).model, 12)
    bottleneck = model.conditioners["3"]
    assert list(model.conditioners) == ["3"]  # the text enters at the bottleneck only
    if step == "concat":
        assert isinstance(bottleneck, ConcatFusion)
        return
    assert isinstance(bottleneck, FusionChain)
    assert (bottleneck.cbn is not None) == (step != "film")
    assert (bottleneck.se is not None) == (step in ("film_cbn_se", "full"))
    blocks = {type(m).__name__ for m in model.encoder.refinements.modules()}
    assert ("ChannelSELayer" in blocks) == (step in ("film_cbn_se", "full"))
    assert ("CBAM" in blocks) == (step == "full")


def test_ablation_steps_add_parameters_in_order():
    counts = [count_parameters(create_model(Config.load("filmcbn", [*SMALL_2D, *ABLATION[s]]).model, 12))
              for s in ("film", "film_cbn", "film_cbn_se", "full")]
    assert counts == sorted(counts) and len(set(counts)) == 4


def test_cbn_in_the_decoder_sits_one_stage_above_full_resolution():
    model = create_model(Config.load("filmcbn", [*SMALL_2D, "model.cbn_position=both"]).model, 12)
    assert isinstance(model.conditioners["1"], ResidualConditionalBatchNorm)
    assert model.conditioners["3"].cbn is not None
    decoder_only = create_model(Config.load("filmcbn", [*SMALL_2D, "model.cbn_position=decoder"]).model, 12)
    assert decoder_only.conditioners["3"].cbn is None


@pytest.mark.parametrize("preset", ["filmcbn", "filmcbn_3d"])
def test_every_parameter_of_the_preset_learns_and_text_changes_the_answer(preset):
    config = Config.load(preset, ["model.coordinates=false"])
    torch.manual_seed(0)
    model = create_model(config.model, text_dim=12)
    shape = (2, 3, 32, 32) if config.model.spatial_dims == 2 else (2, 3, 32, 32, 16)
    image, index = torch.randn(shape), torch.tensor([0, 0, 1, 1])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):  # zero-initialised text layers learn from step 2
        optimizer.zero_grad()
        out = model(image, text_batch(4), index)
        (out.logits.square().mean() + out.presence.square().mean()).backward()
        optimizer.step()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, f"{name} got no gradient"
    model = as_if_trained(create_model(config.model, text_dim=12)).eval()
    fused = []
    model.conditioners["3"].register_forward_hook(lambda module, args, output: fused.append(output))
    logits = [model(image[:1], text_batch(1, seed=seed)).logits for seed in (1, 2)]
    # the prompt changes the fused bottleneck (unit norm per voxel) and, through it, the logits; before training
    # the logits move little: the decoder's skips are not normalised, the bottleneck is
    assert (fused[0] - fused[1]).abs().max() > 0.05
    assert not torch.equal(logits[0], logits[1])


def test_maxpool_encoder_halves_resolution_per_stage():
    model = create_model(Config.load("filmcbn", SMALL_2D).model, 12)
    shapes = [tuple(f.shape[2:]) for f in model.encoder(torch.randn(1, 3, 32, 32))]
    assert shapes == [(32, 32), (16, 16), (8, 8), (4, 4)]


def test_spatial_film_ramp_follows_the_coordinate_axis():
    film = FiLM(text_dim=2, channels=1, coordinate_axes=1)
    with torch.no_grad():
        film.mlp[-1].bias.copy_(torch.tensor([0.0, 0.0, 1.0]))  # gamma 0, beta 0, ramp +1 along axis 0
    coordinates = torch.linspace(-1, 1, 5).reshape(1, 1, 5, 1).expand(1, 1, 5, 3)
    out = film(torch.zeros(1, 1, 5, 3), torch.zeros(1, 2), coordinates)
    torch.testing.assert_close(out, coordinates)
    with pytest.raises(ValueError, match="needs coordinates"):
        film(torch.zeros(1, 1, 5, 3), torch.zeros(1, 2))


@pytest.mark.parametrize("step", ["concat", "film", "full"])
def test_the_fusion_learns_what_only_the_text_says_and_text_blind_cannot(step):
    """Noise images, two prompts: one names the top half, the other the bottom half. Only the text says which,
    so a text-blind network cannot beat Dice ~0.67 (answering the whole image), while the bottleneck fusion
    must carry the prompt to the mask. Scored on held-out images after a few seconds of training."""
    from medtextseg.losses.segmentation import build_loss

    torch.manual_seed(0)
    prompts = text_batch(2, seed=3)

    def batch(n: int) -> tuple[torch.Tensor, TextBatch, torch.Tensor, torch.Tensor]:
        images = torch.randn(n, 3, 16, 16)
        which = torch.arange(2 * n) % 2  # each image with both prompts
        targets = torch.zeros(2 * n, 1, 16, 16)
        targets[which == 0, :, :8] = 1
        targets[which == 1, :, 8:] = 1
        text = TextBatch(prompts.pooled[which], prompts.tokens[which], prompts.mask[which])
        return images, text, torch.arange(n).repeat_interleave(2), targets

    def held_out_dice(conditioning: str, overrides: list[str]) -> float:
        config = Config.load("filmcbn", [*SMALL_2D, "model.channels=[8,16,16]", "model.strides=[[1,1],[2,2],[2,2]]",
                                         f"model.conditioning={conditioning}", "model.presence=false", *overrides])
        model = create_model(config.model, text_dim=12)
        loss = build_loss(config.loss)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for _ in range(120):
            images, text, index, targets = batch(8)
            optimizer.zero_grad()
            loss(model(images, text, index), targets)[0].backward()
            optimizer.step()
        model.eval()
        images, text, index, targets = batch(16)
        with torch.no_grad():
            masks = (model(images, text, index).logits > 0).float()
        return float(2 * (masks * targets).sum() / (masks.sum() + targets.sum()))

    text_guided = held_out_dice("concat" if step == "concat" else "fusion", ABLATION[step])
    blind = held_out_dice("none", ["model.block_attention=[]"])
    print(f"{step}: held-out Dice text-guided {text_guided:.3f}, text-blind {blind:.3f}")
    assert blind < 0.75 and text_guided > 0.9, (text_guided, blind)
