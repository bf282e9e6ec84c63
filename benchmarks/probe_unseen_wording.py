"""Does the text encoder know the held-out words? The nearest training prompt of every unseen wording.

    .venv/bin/python benchmarks/probe_unseen_wording.py DATA [--encoder minilm]

For a dataset written by ``medtextseg synth --unseen-wording F``, every test prompt in an unseen wording
("Finding: 6 mm abnormality, R outer gland.") is embedded by the text encoder, and its nearest training prompt
by cosine similarity is looked up. The table gives, per prompt kind, how often that neighbour asks for the
same thing (same kind, or a lesion request either way for ``single`` / ``absent``, with the same side, zone,
size, shape or structure). No model is trained: this bounds what any network reading this encoder's embeddings
can recover from the words alone. A low share means the encoder places the new words near training prompts of
another meaning; no augmentation drawn from the training vocabulary can supply a synonym the encoder does not know.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from medtextseg.text.cache import cached_text_encoder

ATTRIBUTES = ("side", "zone", "size", "shape")


def meaning(record: dict) -> tuple:
    """What a synthetic prompt asks for, from its ``kind`` and ``meta``: lesion requests (single or absent) by
    the attributes they name, anatomy by structure, "all lesions" as one."""
    kind, meta = record["kind"], record.get("meta", {})
    if kind == "anatomy":
        return kind, meta["structure"]
    if kind == "all":
        return (kind,)
    named = meta.get("mentioned", ATTRIBUTES)
    return ("lesion", *sorted((key, meta[key]) for key in named if key in meta))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="a dataset written by medtextseg synth --unseen-wording F")
    parser.add_argument("--encoder", default="minilm", help="text encoder (as text.encoder in a config)")
    args = parser.parse_args()
    splits = json.loads((args.data / "splits.json").read_text())
    records = [json.loads(line) for line in (args.data / "prompts.jsonl").read_text().splitlines() if line.strip()]
    train_cases, test_cases = set(splits["train"]), set(splits["test"])
    training: dict[str, tuple] = {}
    for record in records:
        if record["case"] in train_cases:
            training.setdefault(record["prompt"], meaning(record))
    unseen = [r for r in records if r["case"] in test_cases and r.get("meta", {}).get("wording") == "unseen"]
    if not unseen:
        raise SystemExit(f"{args.data}: no test prompt has meta.wording = 'unseen' (medtextseg synth --unseen-wording)")
    encoder = cached_text_encoder(args.encoder, 32, None)
    texts = list(training)
    reference = torch.nn.functional.normalize(encoder(texts).pooled, dim=1)  # [T, D]
    queries = torch.nn.functional.normalize(encoder([r["prompt"] for r in unseen]).pooled, dim=1)  # [U, D]
    similarity, nearest = (queries @ reference.T).max(dim=1)
    same: dict[str, list[bool]] = defaultdict(list)
    examples: dict[str, tuple[str, str, float]] = {}
    for record, index, cosine in zip(unseen, nearest.tolist(), similarity.tolist(), strict=True):
        same[record["kind"]].append(meaning(record) == training[texts[index]])
        examples.setdefault(record["kind"], (record["prompt"], texts[index], cosine))
    table = Table(title=f"{args.encoder}: nearest training prompt of each unseen wording ({len(texts)} training texts)")
    for column in ("kind", "unseen prompts", "same meaning", "example", "its nearest training prompt", "cosine"):
        table.add_column(column)
    for kind in sorted(same):
        prompt, neighbour, cosine = examples[kind]
        table.add_row(kind, str(len(same[kind])), f"{sum(same[kind]) / len(same[kind]):.0%}", prompt, neighbour,
                      f"{cosine:.2f}")
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
