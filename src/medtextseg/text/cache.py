"""Memory + disk cache of prompt embeddings, keyed by encoder name and prompt text.

Training sees a few hundred distinct prompts over thousands of steps: each is encoded once, ever (the
disk cache survives runs), and the text encoder itself is only loaded when a prompt is missing.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from medtextseg.text.batch import PromptEmbedding, TextBatch
from medtextseg.text.encoders import TextEncoder
from medtextseg.utils.atomic import atomic_path


def default_cache_dir() -> Path:
    return Path(os.environ.get("MEDTEXTSEG_CACHE", Path.home() / ".cache" / "medtextseg")) / "text"


class TextEmbeddingCache:
    """Encodes prompts through a cache.

    Args:
        encoder_name: the encoder's ``name`` (part of every key), known before the encoder is loaded.
        encoder_factory: builds the encoder on first need (loading a transformer takes seconds).
        cache_dir: the disk cache folder; None disables the disk cache.

    Attributes:
        encoded_count: how many prompts went through the encoder (tests check it stays constant).
    """

    def __init__(self, encoder_name: str, encoder_factory: Callable[[], TextEncoder],
                 cache_dir: str | Path | None = None) -> None:
        self.encoder_name = encoder_name
        self._factory = encoder_factory
        self._encoder: TextEncoder | None = None
        self._memory: dict[str, PromptEmbedding] = {}
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", encoder_name)
        self.folder = Path(cache_dir) / slug if cache_dir is not None else None
        self.encoded_count = 0

    def _disk_path(self, prompt: str) -> Path | None:
        if self.folder is None:
            return None
        return self.folder / f"{hashlib.sha1(prompt.encode('utf-8')).hexdigest()}.pt"

    def warm(self, prompts: Iterable[str]) -> None:
        """Make sure every prompt is in memory, encoding the missing ones in one batch."""
        missing = []
        for prompt in dict.fromkeys(prompts):
            if prompt in self._memory:
                continue
            path = self._disk_path(prompt)
            if path is not None and path.is_file():
                stored = torch.load(path, map_location="cpu", weights_only=True)
                if stored.get("prompt") == prompt:  # guard against hash collisions
                    self._memory[prompt] = PromptEmbedding(stored["pooled"], stored["tokens"])
                    continue
            missing.append(prompt)
        for start in range(0, len(missing), 64):
            chunk = missing[start:start + 64]
            if self._encoder is None:
                self._encoder = self._factory()
            for prompt, embedding in zip(chunk, self._encoder.encode(chunk), strict=True):
                self._memory[prompt] = embedding
                self.encoded_count += 1
                path = self._disk_path(prompt)
                if path is not None:
                    with atomic_path(path) as tmp:
                        torch.save({"prompt": prompt, "pooled": embedding.pooled,
                                    "tokens": embedding.tokens}, tmp)

    def __call__(self, prompts: list[str]) -> TextBatch:
        """Encode ``prompts`` (cached) into a :class:`TextBatch` of ``len(prompts)`` rows."""
        self.warm(prompts)
        return TextBatch.stack([self._memory[p] for p in prompts])

    @property
    def in_memory(self) -> int:
        """How many prompt embeddings are held in memory now."""
        return len(self._memory)

    @property
    def dim(self) -> int:
        if self._memory:
            return int(next(iter(self._memory.values())).pooled.shape[-1])
        if self._encoder is None:
            self._encoder = self._factory()
        return self._encoder.dim


def cached_text_encoder(encoder: str = "minilm", max_tokens: int = 32,
                        cache_dir: str | Path | None = "default") -> TextEmbeddingCache:
    """The cache for a config's text section. ``cache_dir='default'`` uses ``~/.cache/medtextseg/text``."""
    from medtextseg.text.encoders import create_text_encoder

    if encoder == "minilm":
        label = "all-MiniLM-L6-v2"
    else:  # two local folders with the same name must not share cache entries
        resolved = str(Path(encoder).expanduser().resolve())
        label = f"{Path(resolved).name}-{hashlib.sha1(resolved.encode()).hexdigest()[:8]}"
    name = f"{label}-t{max_tokens}"
    folder = default_cache_dir() if cache_dir == "default" else cache_dir
    return TextEmbeddingCache(name, lambda: create_text_encoder(encoder, max_tokens), folder)
