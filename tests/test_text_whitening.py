"""Text whitening: identity until fitted, unit covariance after, saved with the weights, read by the model."""

import pytest
import torch

from medtextseg.config import Config
from medtextseg.models.conditioning.text_whitening import TextWhitening
from medtextseg.models.factory import create_model
from medtextseg.text.batch import TextBatch


def faint_direction_samples(pairs: int = 200, dim: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[2 * pairs, dim] samples in twins, as a prompt and its left/right swap: the twins spread widely together
    along every axis but the last, where they differ faintly. Returns the samples and the side of each."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(pairs, dim, generator=generator) * 3.0
    base[:, -1] = 0.0
    side = torch.cat([torch.zeros(pairs), torch.ones(pairs)]).long()
    samples = torch.cat([base, base])
    samples[:, -1] = 0.3 * (2 * side - 1) + 0.03 * torch.randn(2 * pairs, generator=generator)
    return samples, side


def test_identity_until_fitted_then_unit_covariance():
    samples, _ = faint_direction_samples()
    whitening = TextWhitening(samples.shape[1], shrinkage=0.0)
    assert torch.equal(whitening(samples), samples)
    whitening.fit(samples)
    whitened = whitening(samples)
    assert torch.allclose(whitened.mean(0), torch.zeros(samples.shape[1]), atol=1e-4)
    assert torch.allclose(torch.cov(whitened.T), torch.eye(samples.shape[1]), atol=1e-3)


def test_the_faint_direction_gains_on_the_others():
    samples, side = faint_direction_samples()
    whitening = TextWhitening(samples.shape[1])
    whitening.fit(samples)

    def separation(features: torch.Tensor) -> float:
        """Distance between twins over the mean distance between samples."""
        twins = features[side == 1] - features[side == 0]
        return float(twins.norm(dim=1).mean() / torch.cdist(features, features).mean())

    # shrinkage keeps directions the prompts hardly vary along from being blown up, so the gain is finite
    assert separation(whitening(samples)) > 2.5 * separation(samples)


def test_fit_refuses_a_single_sample():
    with pytest.raises(ValueError, match=r"needs \[N >= 2, D\] features, got \[1, 4\]"):
        TextWhitening(4).fit(torch.zeros(1, 4))


def test_the_model_keeps_its_fitted_statistics_in_the_state_dict():
    config = Config.load("default", ["model.channels=[4,8,16]", "model.strides=[[1,1,1],[2,2,1],[2,2,2]]",
                                     "model.text_whitening=true"]).model
    torch.manual_seed(0)
    model = create_model(config, text_dim=6)
    samples, _ = faint_direction_samples()
    text = TextBatch(samples, samples.reshape(100, 4, 6), torch.ones(100, 4, dtype=torch.bool))
    model.fit_text_statistics(text)
    restored = create_model(config, text_dim=6)
    restored.load_state_dict(model.state_dict())
    for name in ("pooled_whitening", "token_whitening"):
        fitted, loaded = getattr(model.text_summary, name), getattr(restored.text_summary, name)
        assert not torch.equal(fitted.transform, torch.eye(6))
        assert torch.equal(fitted.transform, loaded.transform) and torch.equal(fitted.mean, loaded.mean)
