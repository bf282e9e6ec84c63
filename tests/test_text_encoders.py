"""Text encoders as plug-ins: tiny CLIP, open_clip (BiomedCLIP's format) and sentence-transformers models, built
here with random weights and saved to folders (no download), each read through ``text.encoder=PATH``."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from typer.testing import CliRunner

from medtextseg.text.cache import cached_text_encoder
from medtextseg.text.encoders import create_text_encoder, detect_encoder_kind, embedded_minilm_path
from medtextseg.utils.errors import MedTextSegError

PROMPTS = ["the lesion in the left peripheral zone", "the right kidney", "liver"]
CLIP_MERGES = ["l e", "le f", "lef t</w>", "r i", "ri g", "h t</w>", "rig ht</w>"]


def _byte_characters() -> list[str]:
    """The 256 characters byte-level BPE (GPT-2, CLIP) writes the bytes 0-255 as."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def build_clip(folder, projection: bool = True):
    """A tiny Hugging Face CLIP folder: a CLIPModel (tiny vision tower too) or a bare CLIPTextModel, with a
    CLIP BPE tokenizer over the 512 byte symbols and a few merges."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder.mkdir(parents=True)
    symbols = _byte_characters()
    vocab = [*symbols, *(s + "</w>" for s in symbols), *(m.replace(" ", "") for m in CLIP_MERGES),
             "<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(CLIP_MERGES) + "\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=40, bos_token_id=len(vocab) - 2,
                eos_token_id=len(vocab) - 1, pad_token_id=len(vocab) - 1)
    torch.manual_seed(0)
    if projection:
        vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      image_size=8, patch_size=4)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24))
    else:
        model = CLIPTextModel(CLIPTextConfig(**text))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_bert(folder, hidden: int = 32, heads: int = 2):
    """A tiny random BERT with the embedded MiniLM's word-piece tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(1)
    config = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=heads,
                        intermediate_size=2 * hidden, max_position_embeddings=64, initializer_range=0.5)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    AutoTokenizer.from_pretrained(embedded_minilm_path()).save_pretrained(folder)
    return folder


def build_sentence_transformer(folder):
    """A tiny sentence-transformers folder: Transformer (tiny BERT) -> mean Pooling -> Dense 32->24 ->
    Normalize, so the sentence embedding is narrower than the token states."""
    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers.sentence_transformer import modules
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers import models as modules
    bert = build_bert(folder.parent / f"{folder.name}_bert")
    torch.manual_seed(2)
    stack = [modules.Transformer(str(bert), max_seq_length=32), modules.Pooling(32, "mean"),
             modules.Dense(32, 24), modules.Normalize()]
    SentenceTransformer(modules=stack, device="cpu").save(str(folder))
    return folder


def open_clip_tower():
    """The tiny BERT text tower of :func:`build_open_clip` (64-d: one 64-d head, as BERT's convention reads it)."""
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=1,
                        intermediate_size=96, max_position_embeddings=64, initializer_range=0.5)
    return BertModel(config, add_pooling_layer=False).eval()


def build_open_clip(folder):
    """A tiny open_clip folder in BiomedCLIP's format: open_clip_config.json (a Hugging Face BERT text tower,
    mlp projection, CLS pooling), open_clip_pytorch_model.bin (text + a stand-in visual tower), tokenizer files;
    no config.json for the tower (its shapes are read off the weights, as for BiomedCLIP)."""
    from transformers import AutoTokenizer

    folder.mkdir(parents=True)
    torch.manual_seed(3)
    tower = open_clip_tower()
    state = {f"text.transformer.{key}": value for key, value in tower.state_dict().items()}
    state |= {"text.proj.0.weight": torch.randn(44, 64) / 8, "text.proj.2.weight": torch.randn(24, 44) / 7,
              "visual.trunk.patch_embed.proj.weight": torch.randn(4, 3, 2, 2), "logit_scale": torch.tensor(4.6)}
    torch.save(state, folder / "open_clip_pytorch_model.bin")
    text_config = {"hf_model_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                   "hf_tokenizer_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                   "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 256}
    config = {"model_cfg": {"embed_dim": 24, "vision_cfg": {"timm_model_name": "vit_base_patch16_224"},
                            "text_cfg": text_config}, "preprocess_cfg": {}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    AutoTokenizer.from_pretrained(embedded_minilm_path()).save_pretrained(folder)
    return folder


BUILDERS = {"clip": build_clip, "sentence_transformers": build_sentence_transformer, "open_clip": build_open_clip}


@pytest.fixture(scope="module")
def encoder_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoders")
    return {kind: build(root / kind) for kind, build in BUILDERS.items()}


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_each_kind_gives_pooled_tokens_and_mask_deterministically(encoder_folders, kind):
    folder = encoder_folders[kind]
    assert detect_encoder_kind(folder) == kind
    encoder = create_text_encoder(str(folder), max_tokens=16)
    assert encoder.dim == 24  # every kind's projection (or dense layer) maps to 24-d here
    batch = cached_text_encoder(str(folder), 16, None)(PROMPTS)
    assert batch.pooled.shape == (3, 24) and batch.tokens.shape[::2] == (3, 24)
    assert batch.mask.shape == batch.tokens.shape[:2] and batch.mask.sum(1).min() >= 2
    assert batch.tokens.shape[1] <= 16 and batch.mask[:, 0].all()
    assert torch.allclose(batch.pooled.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert (batch.tokens[~batch.mask] == 0).all()
    again = create_text_encoder(str(folder), max_tokens=16).encode(PROMPTS)
    for row, embedding in enumerate(again):
        assert torch.equal(embedding.pooled, batch.pooled[row])
        assert torch.equal(embedding.tokens, batch.tokens[row, batch.mask[row]])
    similarity = batch.pooled @ batch.pooled.T
    assert (similarity - torch.eye(3)).abs().max() < 0.999  # three prompts, three embeddings
    assert not torch.allclose(batch.pooled[0], batch.pooled[1], atol=1e-3)


def test_clip_pooled_is_the_projected_eos_state_and_a_bare_text_tower_pools_eos(encoder_folders, tmp_path):
    from transformers import CLIPModel, CLIPTokenizer

    folder = encoder_folders["clip"]
    embeddings = create_text_encoder(str(folder)).encode(PROMPTS)
    model, tokenizer = CLIPModel.from_pretrained(folder).eval(), CLIPTokenizer.from_pretrained(folder)
    with torch.no_grad():
        reference = model.get_text_features(**tokenizer(PROMPTS, padding=True, return_tensors="pt"))
    reference = getattr(reference, "pooler_output", reference)  # a tensor, or an output in newer releases
    reference = torch.nn.functional.normalize(reference, dim=-1)
    for row, embedding in enumerate(embeddings):
        assert torch.allclose(embedding.pooled, reference[row], atol=1e-5)
        eos = torch.nn.functional.normalize(embedding.tokens[-1], dim=-1)  # the last real token is EOS
        assert torch.allclose(eos, embedding.pooled, atol=1e-5)
    bare = create_text_encoder(str(build_clip(tmp_path / "text_only", projection=False)))
    assert detect_encoder_kind(tmp_path / "text_only") == "clip" and bare.dim == 32
    assert bare.encode(["the left lobe"])[0].tokens.shape[-1] == 32


def test_sentence_transformer_pooled_is_its_own_sentence_embedding(encoder_folders):
    from sentence_transformers import SentenceTransformer

    folder = encoder_folders["sentence_transformers"]
    reference = SentenceTransformer(str(folder), device="cpu").encode(PROMPTS, convert_to_tensor=True)
    for row, embedding in enumerate(create_text_encoder(str(folder)).encode(PROMPTS)):
        assert torch.allclose(embedding.pooled, reference[row], atol=1e-5)
        assert embedding.tokens.shape[-1] == 24  # token states through the same dense layer


def test_open_clip_tower_pools_cls_through_its_mlp_projection(encoder_folders, tmp_path):
    from transformers import AutoTokenizer

    folder = encoder_folders["open_clip"]
    state = torch.load(folder / "open_clip_pytorch_model.bin", weights_only=True)
    tower = open_clip_tower()
    tower.load_state_dict({k.removeprefix("text.transformer."): v for k, v in state.items()
                           if k.startswith("text.transformer.")})
    batch = AutoTokenizer.from_pretrained(folder)(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        cls = tower(**batch).last_hidden_state[:, 0]
        projected = torch.nn.functional.gelu(cls @ state["text.proj.0.weight"].T) @ state["text.proj.2.weight"].T
    reference = torch.nn.functional.normalize(projected, dim=-1)
    with_config = tmp_path / "with_tower_config"  # the tower's config.json beside the weights is used instead
    shutil.copytree(folder, with_config)
    tower.config.save_pretrained(with_config)
    for candidate in (folder, with_config):
        for row, embedding in enumerate(create_text_encoder(str(candidate)).encode(PROMPTS)):
            assert torch.allclose(embedding.pooled, reference[row], atol=1e-5)


def test_cache_keys_name_kind_and_folder_so_encoders_never_mix(encoder_folders, tmp_path):
    names = {kind: cached_text_encoder(str(folder), 32, None).encoder_name for kind, folder in encoder_folders.items()}
    assert all(f"{kind}-{kind}-" in name for kind, name in names.items())  # folder name, then kind
    assert cached_text_encoder("minilm", 32, None).encoder_name == "all-MiniLM-L6-v2-t32"  # unchanged default
    copy = tmp_path / "clip"
    shutil.copytree(encoder_folders["clip"], copy)
    assert cached_text_encoder(str(copy), 32, None).encoder_name != names["clip"]  # same name, other folder
    minilm = tmp_path / "minilm_copy"
    shutil.copytree(embedded_minilm_path(), minilm)  # has modules.json: read as sentence-transformers
    as_sentence = cached_text_encoder(str(minilm), 32, tmp_path / "cache")
    as_bert = cached_text_encoder(str(minilm), 32, tmp_path / "cache", kind="bert")
    assert as_sentence.encoder_name != as_bert.encoder_name and "-bert-" in as_bert.encoder_name
    assert torch.allclose(as_sentence(["the left caudate"]).pooled, as_bert(["the left caudate"]).pooled, atol=1e-5)
    before = as_bert.encoder_name
    (minilm / "model.safetensors").write_bytes((minilm / "model.safetensors").read_bytes() + b"\0")
    assert cached_text_encoder(str(minilm), 32, None, kind="bert").encoder_name != before  # weights replaced


def test_unusable_folders_are_explained_in_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "weights.bin").write_bytes(b"")
    with pytest.raises(MedTextSegError, match=r"empty has no config.json, modules.json or open_clip_config.json "
                                              r"\(it holds: weights.bin\)"):
        create_text_encoder(str(tmp_path / "empty"))
    vision = tmp_path / "vision"
    vision.mkdir()
    (vision / "config.json").write_text(json.dumps({"model_type": "clip_vision_model",
                                                    "architectures": ["CLIPVisionModel"]}))
    with pytest.raises(MedTextSegError, match="a CLIP vision tower"):
        create_text_encoder(str(vision))
    native = tmp_path / "native"
    native.mkdir()
    (native / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"embed_dim": 512, "text_cfg": {
        "context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}}}))
    with pytest.raises(MedTextSegError, match="open_clip's own transformer"):
        create_text_encoder(str(native))
    with pytest.raises(MedTextSegError, match="text.encoder_kind 'clap': must be one of auto, bert, clip") as error:
        create_text_encoder("minilm", kind="clap")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("kind", ["clip", "sentence_transformers", "open_clip"])
def test_trains_and_predicts_through_text_encoder_path(encoder_folders, tmp_path, dataset_2d, kind):
    import nibabel as nib

    from medtextseg.cli import app

    runner = CliRunner()
    tiny = ["--set", "model.channels=[4,8,16]", "--set", "model.strides=[[1,1],[2,2],[2,2]]",
            "--set", "data.patch_size=[48,48]", "--set", "train.steps=2", "--set", "train.val_cases=1"]
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data", str(dataset_2d), "--out", str(run), "--preset", "default_2d",
                                 *tiny, "--set", f"text.encoder={encoder_folders[kind]}"])
    assert result.exit_code == 0, result.output
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=False)
    assert state["text_dim"] == 24 and f"-{kind}-" in state["text_encoder"]
    images = sorted((dataset_2d / "imagesTr").glob("synth_000_*.nii.gz"))
    out = tmp_path / "pred"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = runner.invoke(app, ["predict", "-m", str(run), *[a for p in images for a in ("-i", str(p))],
                                     "-p", "the prostate gland", "-p", "a new prompt, never cached", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert not [w for w in caught if "text encoder" in str(w.message)]  # the same encoder as in training
    index = json.loads((out / "prompts.json").read_text())
    assert len(index) == 2
    assert nib.load(str(out / index[0]["mask"])).shape == nib.load(str(images[0])).shape
