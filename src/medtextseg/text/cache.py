"""Memory + disk cache of prompt embeddings, keyed by encoder name and prompt text.

Training sees thousands of distinct texts (prompts, their left/right swaps, wordings, rewordings) over thousands
of steps: each is encoded once, ever (the disk cache survives runs), and the text encoder itself is only loaded
when a prompt is missing. Memory holds at most ``memory_limit`` embeddings (least recently used evicted), so it
does not grow with the number of texts: an evicted prompt is read back from its small ``.pt`` file.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from medtextseg.text.batch import PromptEmbedding, TextBatch
from medtextseg.text.encoders import TextEncoder
from medtextseg.utils.atomic import atomic_path

DEFAULT_MEMORY_PROMPTS = 1024  # ~20 MB of MiniLM embeddings; a step reads 8 prompts, a miss one ~20 KB file


def default_cache_dir() -> Path:
    return Path(os.environ.get("MEDTEXTSEG_CACHE", Path.home() / ".cache" / "medtextseg")) / "text"


class TextEmbeddingCache:
    """Encodes prompts through a cache: a bounded LRU in memory over the disk cache.

    Args:
        encoder_name: the encoder's ``name`` (part of every key), known before the encoder is loaded.
        encoder_factory: builds the encoder on first need (loading a transformer takes seconds).
        cache_dir: the disk cache folder; None disables the disk cache, and then memory is unbounded (an evicted
            prompt would have to be encoded again).
        memory_limit: the most embeddings held in memory (with a disk cache); None: unbounded.

    Attributes:
        encoded_count: how many prompts went through the encoder (tests check it stays constant).
    """

    def __init__(self, encoder_name: str, encoder_factory: Callable[[], TextEncoder],
                 cache_dir: str | Path | None = None, memory_limit: int | None = DEFAULT_MEMORY_PROMPTS) -> None:
        if memory_limit is not None and memory_limit < 1:
            raise ValueError(f"memory_limit must be at least 1 (or None), got {memory_limit}")
        self.encoder_name = encoder_name
        self._factory = encoder_factory
        self._encoder: TextEncoder | None = None
        self._memory: OrderedDict[str, PromptEmbedding] = OrderedDict()  # least recently used first
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", encoder_name)
        self.folder = Path(cache_dir) / slug if cache_dir is not None else None
        self.memory_limit = memory_limit if self.folder is not None else None
        self.encoded_count = 0

    def _disk_path(self, prompt: str) -> Path | None:
        if self.folder is None:
            return None
        return self.folder / f"{hashlib.sha1(prompt.encode('utf-8')).hexdigest()}.pt"

    def _remember(self, prompt: str, embedding: PromptEmbedding) -> None:
        self._memory[prompt] = embedding
        self._memory.move_to_end(prompt)
        if self.memory_limit is not None:
            while len(self._memory) > self.memory_limit:
                self._memory.popitem(last=False)

    def _read(self, prompt: str) -> PromptEmbedding | None:
        """The prompt's embedding from the disk cache, or None when it is not there."""
        path = self._disk_path(prompt)
        if path is None or not path.is_file():
            return None
        stored = torch.load(path, map_location="cpu", weights_only=True)
        if stored.get("prompt") != prompt:  # guard against hash collisions
            return None
        return PromptEmbedding(stored["pooled"], stored["tokens"])

    def _encode(self, prompts: list[str]) -> None:
        """Encode ``prompts`` in batches of 64 into memory and the disk cache."""
        for start in range(0, len(prompts), 64):
            chunk = prompts[start:start + 64]
            if self._encoder is None:
                self._encoder = self._factory()
            for prompt, embedding in zip(chunk, self._encoder.encode(chunk), strict=True):
                self._remember(prompt, embedding)
                self.encoded_count += 1
                path = self._disk_path(prompt)
                if path is not None:
                    with atomic_path(path) as tmp:
                        torch.save({"prompt": prompt, "pooled": embedding.pooled,
                                    "tokens": embedding.tokens}, tmp)

    def warm(self, prompts: Iterable[str]) -> None:
        """Make sure every prompt is encoded (in memory or in the disk cache), encoding the missing ones in
        batches. Prompts already on disk are not read here: a step reads the ones it needs."""
        unique = list(dict.fromkeys(prompts))
        self._encode([p for p in unique if p not in self._memory and not self._on_disk(p)])
        if unique and not self._memory:  # one embedding in memory gives ``dim`` without loading the encoder
            self._get(unique[0])

    def _on_disk(self, prompt: str) -> bool:
        path = self._disk_path(prompt)
        return path is not None and path.is_file()

    def _get(self, prompt: str) -> PromptEmbedding:
        """The prompt's embedding: from memory, else from disk, else encoded; it becomes the most recent."""
        embedding = self._memory.get(prompt)
        if embedding is None:
            embedding = self._read(prompt)
            if embedding is None:
                self._encode([prompt])
                return self._memory[prompt]
        self._remember(prompt, embedding)
        return embedding

    def __call__(self, prompts: list[str]) -> TextBatch:
        """Encode ``prompts`` (cached) into a :class:`TextBatch` of ``len(prompts)`` rows."""
        self.warm(prompts)
        return TextBatch.stack([self._get(p) for p in prompts])

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


def cached_text_encoder(encoder: str = "minilm", max_tokens: int = 32, cache_dir: str | Path | None = "default",
                        memory_limit: int | None = DEFAULT_MEMORY_PROMPTS, kind: str = "auto") -> TextEmbeddingCache:
    """The cache for a config's text section. ``cache_dir='default'`` uses ``~/.cache/medtextseg/text``;
    ``memory_limit``: the most embeddings held in memory (see :class:`TextEmbeddingCache`); ``kind``: the
    encoder kind (``text.encoder_kind``). The key names the model, its kind and the folder's identity
    (:func:`~medtextseg.text.encoders.encoder_cache_name`), so embeddings of two encoders never mix."""
    from medtextseg.text.encoders import create_text_encoder, encoder_cache_name

    name = encoder_cache_name(encoder, max_tokens, kind)
    folder = default_cache_dir() if cache_dir == "default" else cache_dir
    return TextEmbeddingCache(name, lambda: create_text_encoder(encoder, max_tokens, kind), folder, memory_limit)
