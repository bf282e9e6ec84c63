"""Text whitening: identity until fitted, unit covariance after, saved with the weights, read by the model."""

import pytest
import torch

from medtextseg.config import Config
from medtextseg.models.conditioning.text_whitening import FeatureMoments, TextWhitening
from medtextseg.models.factory import create_model
from medtextseg.text.batch import PromptEmbedding, TextBatch
from medtextseg.text.cache import TextEmbeddingCache
from medtextseg.training.inputs import WHITENING_CHUNK, fit_text_whitening


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


def test_moments_streamed_in_chunks_equal_the_batch_statistics():
    generator = torch.Generator().manual_seed(1)
    samples = (torch.randn(1000, 5, generator=generator) * torch.tensor([3.0, 1.0, 0.1, 0.01, 2.0]) + 10.0).double()
    moments = FeatureMoments(5)
    start = 0
    for size in (0, 1, 7, 300, 2, 690):  # uneven chunks, an empty one and a single row among them
        moments.update(samples[start:start + size])
        start += size
    assert moments.count == 1000
    assert torch.allclose(moments.mean, samples.mean(0), atol=1e-10)
    assert torch.allclose(moments.covariance(), torch.cov(samples.T), rtol=1e-9, atol=1e-12)
    batch, streamed = TextWhitening(5), TextWhitening(5)
    batch.fit(samples.float())
    streamed.fit_moments(moments)
    assert torch.allclose(streamed.mean, batch.mean, atol=1e-5)
    assert torch.allclose(streamed.transform, batch.transform, atol=1e-5)
    single = FeatureMoments(5)
    single.update(samples[:1])
    with pytest.raises(ValueError, match=r"needs moments of >= 2 samples, got 1"):
        TextWhitening(5).fit_moments(single)


class RandomEncoder:
    """A fake encoder: a seeded random pooled vector [6] and 2-9 token states [T, 6] per prompt."""

    name, dim = "random", 6

    def encode(self, prompts):
        out = []
        for prompt in prompts:
            generator = torch.Generator().manual_seed(sum(map(ord, prompt)) * 7919 + len(prompt))
            tokens = torch.randn(2 + len(prompt) % 8, 6, generator=generator) * torch.arange(1.0, 7.0) + 0.5
            out.append(PromptEmbedding(torch.nn.functional.normalize(tokens.mean(0), dim=0), tokens))
        return out


def test_training_whitening_streams_every_text_and_matches_the_old_batch_fit(tmp_path):
    """Below the old cap of 5,000 texts the streamed fit (through a bounded cache that evicts most of them)
    gives the statistics of the former one-batch fit over the same texts."""
    config = Config.load("default", ["model.channels=[4,8,16]", "model.strides=[[1,1,1],[2,2,1],[2,2,2]]",
                                     "model.text_whitening=true"]).model
    texts = [f"prompt {i} " + "word " * (i % 5) for i in range(3 * WHITENING_CHUNK + 17)]
    cache = TextEmbeddingCache("random", RandomEncoder, tmp_path, memory_limit=40)
    model = create_model(config, text_dim=6)
    fit_text_whitening(model, cache, texts, torch.device("cpu"))
    assert cache.in_memory <= 40 and cache.encoded_count == len(texts)
    everything = TextBatch.stack(RandomEncoder().encode(texts))  # the former fit: all texts in one batch
    for name, features in (("pooled_whitening", everything.pooled),
                           ("token_whitening", everything.tokens[everything.mask])):
        reference = TextWhitening(6)
        reference.fit(features)
        fitted = getattr(model.text_summary, name)
        assert torch.allclose(fitted.mean, reference.mean, atol=1e-5)
        assert torch.allclose(fitted.transform, reference.transform, atol=1e-5)
