"""A local sentence-transformers folder (``modules.json``) as a text encoder.

Pooled: the model's own sentence embedding (its pooling, dense layers and normalisation as saved). Tokens: its
``token_embeddings`` (the transformer's last hidden states); when dense layers after the pooling change the
width, every token state goes through them too, so tokens and pooled share one width D.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from medtextseg.text.batch import PromptEmbedding
from medtextseg.text.encoder_parts import first_line, frozen, prompt_embeddings, quiet_loading
from medtextseg.utils.errors import MedTextSegError


class SentenceTransformerEncoder:
    """``SentenceTransformer(folder)``, frozen, on the CPU.

    Args:
        folder: a sentence-transformers model folder (``modules.json`` and its modules' folders).
        max_tokens: prompts are truncated to this many tokens (at most the model's ``max_seq_length``).
        label: the short name used in ``name`` (defaults to the folder name).

    Raises:
        MedTextSegError: the folder does not load, or its model gives no token states (not transformer-based).
    """

    def __init__(self, folder: str | Path, max_tokens: int = 32, label: str | None = None) -> None:
        from sentence_transformers import SentenceTransformer

        folder = Path(folder)
        try:
            with quiet_loading():
                self.model = frozen(SentenceTransformer(str(folder), device="cpu", local_files_only=True))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise MedTextSegError(f"text encoder folder {folder}: not loadable as a sentence-transformers model "
                                  f"({first_line(error)})") from None
        limit = self.model.max_seq_length
        self.model.max_seq_length = min(max_tokens, limit) if limit else max_tokens
        names = [type(module).__name__ for module in self.model]
        after_pooling = list(self.model)[names.index("Pooling") + 1:] if "Pooling" in names else []
        self._dense = [module for module in after_pooling if type(module).__name__ == "Dense"]
        dimension = getattr(self.model, "get_embedding_dimension", None) or \
            self.model.get_sentence_embedding_dimension
        self.dim = int(dimension())
        self.folder = folder
        self.name = f"{label or folder.name}-t{max_tokens}"

    def _to_sentence_width(self, tokens: Tensor) -> Tensor:
        """Token states [B, T, H] through the dense layers after the pooling, to [B, T, D]."""
        for module in self._dense:
            key = getattr(module, "module_input_name", "sentence_embedding")
            tokens = module({key: tokens})[getattr(module, "module_output_name", "sentence_embedding")]
        if tokens.shape[-1] != self.dim:
            raise MedTextSegError(f"sentence-transformers model {self.folder}: its token states are "
                                  f"{tokens.shape[-1]}-d, its sentence embedding {self.dim}-d, and no dense layer "
                                  "maps one to the other")
        return tokens

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> list[PromptEmbedding]:
        preprocess = getattr(self.model, "preprocess", None) or self.model.tokenize
        output = self.model(preprocess(prompts))
        if "token_embeddings" not in output:
            raise MedTextSegError(f"sentence-transformers model {self.folder} gives no token states (modules: "
                                  f"{', '.join(type(m).__name__ for m in self.model)}); use a transformer-based one")
        tokens = output["token_embeddings"]
        if tokens.shape[-1] != self.dim:
            tokens = self._to_sentence_width(tokens)
        return prompt_embeddings(output["sentence_embedding"], tokens, output["attention_mask"])
