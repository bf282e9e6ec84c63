"""CLIP-family text towers from local folders: Hugging Face CLIP, and open_clip with a Hugging Face text tower.

Pooled: the text embedding CLIP compares with images (the projection of the EOS state, or of the CLS state for
an open_clip BERT tower such as BiomedCLIP's). Tokens: every token state through the same projection, so the
token states and the pooled embedding share one space and width D (the projection's output; the hidden size
when the folder has no projection). For a Hugging Face CLIP tower the projected EOS token state is exactly the
pooled embedding, before normalisation.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from medtextseg.text.batch import PromptEmbedding
from medtextseg.text.encoder_parts import first_line, frozen, prompt_embeddings, quiet_loading, read_json
from medtextseg.utils.errors import MedTextSegError

OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pt")
OPEN_CLIP_POOLERS = ("cls_last_hidden_state_pooler", "cls_pooler", "mean_pooler")


def _tokenizer(folder: Path):
    """The folder's tokenizer: by its ``tokenizer_config.json`` class, else a BERT word-piece tokenizer
    (open_clip folders have no ``config.json`` to name the class)."""
    from transformers import AutoTokenizer, BertTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as error:
        if (folder / "vocab.txt").is_file() or (folder / "tokenizer.json").is_file():
            return BertTokenizer.from_pretrained(folder)
        raise MedTextSegError(f"text encoder folder {folder}: no usable tokenizer files (tokenizer.json, "
                              f"vocab.txt or vocab.json + merges.txt): {first_line(error)}") from None


class ClipTextEncoder:
    """The text tower of a local Hugging Face CLIP folder (``CLIPModel`` or ``CLIPTextModel[WithProjection]``),
    frozen, on the CPU.

    Args:
        folder: the model folder (``config.json``, weights, tokenizer files).
        max_tokens: prompts are truncated to this many tokens (at most the model's positions, 77 for CLIP).
        label: the short name used in ``name`` (defaults to the folder name).
    """

    def __init__(self, folder: str | Path, max_tokens: int = 32, label: str | None = None) -> None:
        from transformers import CLIPConfig, CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

        folder = Path(folder)
        config = read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
        architectures = " ".join(config.get("architectures") or [])
        self.projected = config.get("model_type") == "clip" or "WithProjection" in architectures
        model_class = CLIPTextModelWithProjection if self.projected else CLIPTextModel
        try:
            self.tokenizer = _tokenizer(folder)
            with quiet_loading():
                if config.get("model_type") == "clip":  # the text tower of a full CLIPModel: its projection's
                    full = CLIPConfig.from_pretrained(folder)  # width is the model's, not the text config's
                    text_config = full.text_config
                    text_config.projection_dim = full.projection_dim
                else:
                    text_config = CLIPTextConfig.from_pretrained(folder)
                self.model = frozen(model_class.from_pretrained(folder, config=text_config))
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise MedTextSegError(f"text encoder folder {folder}: not loadable as a Hugging Face CLIP text "
                                  f"model ({first_line(error)})") from None
        text_config = self.model.config
        self.max_tokens = min(max_tokens, int(text_config.max_position_embeddings))
        self.dim = int(text_config.projection_dim if self.projected else text_config.hidden_size)
        self.name = f"{label or folder.name}-t{max_tokens}"

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> list[PromptEmbedding]:
        batch = self.tokenizer(prompts, padding=True, truncation=True, max_length=self.max_tokens,
                               return_tensors="pt")
        output = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        hidden = output.last_hidden_state  # [B, T, hidden], after the final layer norm
        if self.projected:
            return prompt_embeddings(output.text_embeds, self.model.text_projection(hidden),
                                     batch["attention_mask"])
        return prompt_embeddings(output.pooler_output, hidden, batch["attention_mask"])


def _open_clip_state(folder: Path) -> dict[str, Tensor]:
    """The weights of an open_clip folder, ``module.`` prefixes (distributed training) removed."""
    for name in OPEN_CLIP_WEIGHTS:
        path = folder / name
        if path.is_file():
            break
    else:
        raise MedTextSegError(f"open_clip folder {folder}: no weights ({', '.join(OPEN_CLIP_WEIGHTS)})")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
    return {key.removeprefix("module."): value for key, value in state.items()}


def _bert_config_from_weights(folder: Path, state: dict[str, Tensor]):
    """A ``BertConfig`` read off the shapes of a BERT text tower's weights (64-d attention heads, BERT's
    convention, as in BiomedCLIP's PubMedBERT), for an open_clip folder without the tower's ``config.json``."""
    from transformers import BertConfig

    try:
        vocab_size, hidden = state["embeddings.word_embeddings.weight"].shape
        positions = state["embeddings.position_embeddings.weight"].shape[0]
        token_types = state["embeddings.token_type_embeddings.weight"].shape[0]
        intermediate = state["encoder.layer.0.intermediate.dense.weight"].shape[0]
    except KeyError as error:
        raise MedTextSegError(f"open_clip folder {folder}: its text tower is not laid out as BERT (no {error}); "
                              "put the text model's config.json (its hf_model_name's) in the folder") from None
    layers = 1 + max(int(key.split(".")[2]) for key in state if key.startswith("encoder.layer."))
    return BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=max(1, hidden // 64), intermediate_size=intermediate,
                      max_position_embeddings=positions, type_vocab_size=token_types)


def _projection(state: dict[str, Tensor]) -> nn.Module:
    """open_clip's text projection from its weights: ``proj.weight`` (linear), ``proj.0/2.weight`` (mlp: linear,
    GELU, linear), or none (identity)."""
    if "proj.weight" in state:
        out_features, in_features = state["proj.weight"].shape
        projection: nn.Module = nn.Linear(in_features, out_features, bias="proj.bias" in state)
    elif "proj.0.weight" in state and "proj.2.weight" in state:
        hidden, in_features = state["proj.0.weight"].shape
        out_features = state["proj.2.weight"].shape[0]
        projection = nn.Sequential(nn.Linear(in_features, hidden, bias="proj.0.bias" in state), nn.GELU(),
                                   nn.Linear(hidden, out_features, bias="proj.2.bias" in state))
    else:
        return nn.Identity()
    projection.load_state_dict({key.removeprefix("proj."): value for key, value in state.items()
                                if key.startswith("proj.")})
    return projection


class OpenClipTextEncoder:
    """The text tower of a local open_clip folder whose text model is a Hugging Face BERT (BiomedCLIP's
    format: ``open_clip_config.json`` with ``text_cfg.hf_model_name``, ``open_clip_pytorch_model.bin``, tokenizer
    files), read without open_clip, frozen, on the CPU.

    The tower is rebuilt from the folder's ``config.json`` when there is one, else from the weights' shapes;
    ``text_cfg.hf_pooler_type`` picks the pooled state (CLS for BiomedCLIP), and ``proj`` weights the
    projection. open_clip's own (OpenAI-style) text transformer is not read: convert such a model to a Hugging
    Face CLIP folder.

    Args:
        folder: the open_clip model folder.
        max_tokens: prompts are truncated to this many tokens (at most ``text_cfg.context_length``).
        label: the short name used in ``name`` (defaults to the folder name).
    """

    def __init__(self, folder: str | Path, max_tokens: int = 32, label: str | None = None) -> None:
        from transformers import AutoConfig, AutoModel, BertModel

        folder = Path(folder)
        config = read_json(folder / "open_clip_config.json")
        text_config = config.get("model_cfg", config).get("text_cfg") or {}
        if not text_config.get("hf_model_name"):
            raise MedTextSegError(f"open_clip folder {folder}: its text tower is open_clip's own transformer (no "
                                  "text_cfg.hf_model_name), which is only readable with open_clip; convert the "
                                  "model to a Hugging Face CLIP folder (transformers' CLIP conversion script)")
        self.pooler = text_config.get("hf_pooler_type") or text_config.get("pooler_type") or "cls_pooler"
        if self.pooler not in OPEN_CLIP_POOLERS:
            raise MedTextSegError(f"open_clip folder {folder}: text_cfg pooler {self.pooler!r} is not supported "
                                  f"(supported: {', '.join(OPEN_CLIP_POOLERS)})")
        state = {key.removeprefix("text."): value for key, value in _open_clip_state(folder).items()
                 if key.startswith("text.")}
        tower = {key.removeprefix("transformer."): value for key, value in state.items()
                 if key.startswith("transformer.") and not key.endswith("position_ids")}
        with_pooler = any(key.startswith("pooler.") for key in tower)
        try:
            with quiet_loading():
                if (folder / "config.json").is_file():  # the tower's own config (its hf_model_name's)
                    tower_config = AutoConfig.from_pretrained(folder)
                    try:
                        self.transformer = AutoModel.from_config(tower_config, add_pooling_layer=with_pooler)
                    except TypeError:  # a model without BERT's optional pooling layer
                        self.transformer = AutoModel.from_config(tower_config)
                else:
                    self.transformer = BertModel(_bert_config_from_weights(folder, tower),
                                                 add_pooling_layer=with_pooler)
            self.transformer.load_state_dict(tower)
        except (OSError, ValueError, RuntimeError) as error:
            raise MedTextSegError(f"open_clip folder {folder}: its text tower's weights do not fit "
                                  f"({first_line(error)})") from None
        frozen(self.transformer)
        self.projection = frozen(_projection(state))
        self.tokenizer = _tokenizer(folder)
        self.max_tokens = min(max_tokens, int(text_config.get("context_length", 77)))
        hidden = int(self.transformer.config.hidden_size)
        self.dim = int(self.projection(torch.zeros(1, hidden)).shape[-1])
        self.name = f"{label or folder.name}-t{max_tokens}"

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> list[PromptEmbedding]:
        batch = self.tokenizer(prompts, padding=True, truncation=True, max_length=self.max_tokens,
                               return_tensors="pt")
        mask = batch["attention_mask"]
        output = self.transformer(input_ids=batch["input_ids"], attention_mask=mask)
        hidden = output.last_hidden_state  # [B, T, hidden]
        if self.pooler == "mean_pooler":
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        elif self.pooler == "cls_pooler" and getattr(output, "pooler_output", None) is not None:
            pooled = output.pooler_output
        else:
            pooled = hidden[:, 0]
        return prompt_embeddings(self.projection(pooled), self.projection(hidden), mask)
