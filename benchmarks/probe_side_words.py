"""Does a trained model's text path tell left from right? FiLM parameters of side-swapped vs rephrased prompts.

    .venv/bin/python benchmarks/probe_side_words.py work/runs/text [more runs ...]

For each run, the distance between the FiLM parameters (every conditioned stage, concatenated) that two prompts
produce: prompts that differ only in their side word (the answer must change), and rephrasings of one request
or prompts that differ in their zone (for scale). A model that ignores side words moves its FiLM parameters
less for a side swap than for a rephrasing.
"""

from __future__ import annotations

import argparse

import torch
from rich.console import Console
from rich.table import Table

from medtextseg.api import load_model

SIDE_SWAPS = [("the lesion in the left peripheral zone", "the lesion in the right peripheral zone"),
              ("find the right transition zone lesion", "find the left transition zone lesion"),
              ("the small left-sided lesion", "the small right-sided lesion")]
OTHERS = [("the lesion in the left peripheral zone", "outline the left PZ lesion"),
          ("find the right transition zone lesion", "segment the tumor within the right TZ"),
          ("the lesion in the left peripheral zone", "the lesion in the left transition zone")]


@torch.no_grad()
def film_parameters(predictor, prompt: str) -> torch.Tensor:
    """[P] the gamma, beta (and ramp) values of every FiLM layer of the model for one prompt."""
    network = predictor.model
    summary = network.text_summary(predictor.text([prompt]))
    return torch.cat([network.conditioners[level].mlp(summary)[0] for level in sorted(network.conditioners)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders or checkpoints of FiLM-conditioned models")
    args = parser.parse_args()
    table = Table(title="FiLM parameter distance between two prompts (distances compare within a run only)")
    for column in ("run", "side swaps", "rephrasings / zone swap", "mean side / mean other"):
        table.add_column(column)
    for index, run in enumerate(args.runs):
        predictor = load_model(run, device="cpu")
        if index == 0:  # what the frozen encoder itself makes of a side swap
            a, b = (predictor.text([text]) for text in SIDE_SWAPS[0])
            # the two prompts tokenise alike but for the side word, whose states differ most
            token_cosine = torch.cosine_similarity(a.tokens[0], b.tokens[0], dim=-1)[a.mask[0]]
            print(f"text encoder, {SIDE_SWAPS[0][0]!r} vs its swap: cosine of the sentence embeddings "
                  f"{torch.cosine_similarity(a.pooled, b.pooled).item():.3f}, of the side words' token states "
                  f"{token_cosine.min().item():.3f}")
            rephrased = [torch.cosine_similarity(*(predictor.text([text]).pooled for text in pair)).item()
                         for pair in OTHERS[:2]]
            print("cosine of the sentence embeddings of two rephrasings of one request: "
                  + ", ".join(f"{value:.3f}" for value in rephrased))
        side, other = ([float((film_parameters(predictor, a) - film_parameters(predictor, b)).norm()) for a, b in pairs]
                       for pairs in (SIDE_SWAPS, OTHERS))
        table.add_row(str(run), " ".join(f"{d:.0f}" for d in side), " ".join(f"{d:.0f}" for d in other),
                      f"{sum(side) / sum(other):.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
