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
