import torch

from helpers import CountingEncoder
from medtextseg.text.batch import PromptEmbedding, TextBatch
from medtextseg.text.cache import TextEmbeddingCache, cached_text_encoder


def test_text_batch_pads_and_masks():
    a = PromptEmbedding(torch.ones(3), torch.ones(2, 3))
    b = PromptEmbedding(torch.zeros(3), torch.full((4, 3), 2.0))
    batch = TextBatch.stack([a, b])
    assert batch.tokens.shape == (2, 4, 3)
    assert batch.mask.tolist() == [[True, True, False, False], [True, True, True, True]]
    assert batch.tokens[0, 2:].abs().sum() == 0
    assert "prompts=2" in repr(batch)


def test_cache_encodes_each_prompt_once_and_persists(tmp_path):
    encoder = CountingEncoder()
    cache = TextEmbeddingCache("counting", lambda: encoder, tmp_path)
    first = cache(["left lesion", "right lesion", "left lesion"])
    cache(["right lesion"])
    assert encoder.calls == ["left lesion", "right lesion"]
    assert torch.equal(first.pooled[0], first.pooled[2])
    # a new process (new cache object) reads the disk cache and never builds the encoder
    fresh = TextEmbeddingCache("counting", lambda: (_ for _ in ()).throw(AssertionError("encoder built")),
                               tmp_path)
    again = fresh(["left lesion", "right lesion"])
    assert torch.equal(again.pooled, first.pooled[:2])
    assert fresh.encoded_count == 0


def test_embedded_minilm_matches_sentence_transformers_and_separates_sides(tmp_path):
    from sentence_transformers import SentenceTransformer

    from medtextseg.text.encoders import embedded_minilm_path

    cache = cached_text_encoder("minilm", 32, tmp_path)
    prompts = ["the lesion in the left peripheral zone", "the lesion in the right peripheral zone"]
    batch = cache(prompts)
    assert batch.pooled.shape == (2, 384)
    reference = SentenceTransformer(str(embedded_minilm_path()), device="cpu").encode(prompts,
                                                                                      convert_to_tensor=True)
    assert torch.allclose(batch.pooled, reference, atol=1e-4)
    similarity = float(batch.pooled[0] @ batch.pooled[1])
    assert 0.5 < similarity < 0.999  # close sentences, but not the same vector: the words left/right survive


def test_local_hugging_face_folder_is_an_encoder_with_its_own_cache_key(tmp_path):
    import shutil

    from medtextseg.text.encoders import embedded_minilm_path

    folder = tmp_path / "my_bert"
    shutil.copytree(embedded_minilm_path(), folder)
    local = cached_text_encoder(str(folder), 16, tmp_path / "cache")
    embedded = cached_text_encoder("minilm", 16, tmp_path / "cache")
    assert local.encoder_name != embedded.encoder_name and "my_bert" in local.encoder_name
    assert torch.allclose(local(["the left caudate"]).pooled, embedded(["the left caudate"]).pooled, atol=1e-5)


def test_unknown_encoder_folder_is_explained(tmp_path):
    import pytest

    from medtextseg.text.encoders import create_text_encoder
    from medtextseg.utils.errors import MedTextSegError

    with pytest.raises(MedTextSegError, match=r"not 'minilm' and no such folder; models are loaded from local"):
        create_text_encoder(str(tmp_path / "bert-base-uncased"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedTextSegError, match=r"empty has no config.json"):
        create_text_encoder(str(tmp_path / "empty"))


def test_memory_stays_bounded_and_evicted_prompts_come_back_from_disk(tmp_path):
    encoder = CountingEncoder()
    cache = TextEmbeddingCache("counting", lambda: encoder, tmp_path, memory_limit=3)
    prompts = [f"{i:02d} lesion" + " word" * (i % 3) for i in range(10)]  # distinct embeddings and lengths
    first = {}
    for prompt in prompts:
        first[prompt] = cache([prompt])
        assert cache.in_memory <= 3
    cache.warm([f"{i:02d} more" for i in range(10, 20)])  # encoding many at once keeps the bound too
    assert cache.in_memory <= 3 and cache.encoded_count == 20
    again = cache(prompts)  # more rows than the bound: each still right, read back from disk
    assert cache.in_memory <= 3
    for row, prompt in enumerate(prompts):
        assert torch.equal(again.pooled[row], first[prompt].pooled[0])
        length = first[prompt].tokens.shape[1]
        assert torch.equal(again.tokens[row, :length], first[prompt].tokens[0])
        assert again.mask[row].sum() == length
    assert cache.encoded_count == 20 and len(encoder.calls) == 20  # never encoded again


def test_warm_reads_nothing_already_on_disk_and_dim_needs_no_encoder(tmp_path):
    TextEmbeddingCache("counting", CountingEncoder, tmp_path).warm(["left lesion", "right lesion", "the gland"])
    fresh = TextEmbeddingCache("counting", lambda: (_ for _ in ()).throw(AssertionError("encoder built")),
                               tmp_path, memory_limit=2)
    fresh.warm(["left lesion", "right lesion", "the gland"])
    assert fresh.in_memory == 1 and fresh.dim == 4  # one read for the width; the rest stay on disk until asked


def test_without_a_disk_cache_memory_is_unbounded(tmp_path):
    cache = TextEmbeddingCache("counting", CountingEncoder, None, memory_limit=2)
    cache([f"{i:02d} lesion" for i in range(5)])
    assert cache.memory_limit is None and cache.in_memory == 5 and cache.encoded_count == 5
