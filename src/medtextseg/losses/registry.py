"""Loss-term names, as written in ``loss.terms`` and ``loss.params`` of a config, and their classes."""

from __future__ import annotations

import difflib
import inspect
from typing import Any

from medtextseg.losses.base import LossTerm
from medtextseg.losses.boundary import HausdorffDTLoss
from medtextseg.losses.compound import DiceBCELoss
from medtextseg.losses.evidential import EvidentialCrossEntropyLoss, EvidentialKLLoss
from medtextseg.losses.pixelwise import BCELoss, FocalLoss, TopKBCELoss
from medtextseg.losses.region import DiceLoss, FocalTverskyLoss, JaccardLoss, TverskyLoss
from medtextseg.losses.similarity import PixelTextAlignLoss, PixelTextBCELoss, PixelTextHeatmapLoss
from medtextseg.utils.errors import MedTextSegError

LOSS_TERMS: dict[str, type[LossTerm]] = {
    "dice": DiceLoss,
    "jaccard": JaccardLoss,
    "tversky": TverskyLoss,
    "focal_tversky": FocalTverskyLoss,
    "hausdorff": HausdorffDTLoss,
    "bce": BCELoss,
    "focal": FocalLoss,
    "topk_bce": TopKBCELoss,
    "dice_bce": DiceBCELoss,
    # on more of the output than the mask logits (``OutputLossTerm``)
    "pixel_text_contrastive": PixelTextBCELoss,
    "pixel_text_heat": PixelTextHeatmapLoss,
    "pixel_text_align": PixelTextAlignLoss,
    "evidential_ce": EvidentialCrossEntropyLoss,
    "evidential_kl": EvidentialKLLoss,
}


def loss_term_names() -> list[str]:
    return sorted(LOSS_TERMS)


def check_loss_term_name(name: str) -> None:
    """Raises ``MedTextSegError`` naming the closest and every valid term when ``name`` is not registered."""
    if name not in LOSS_TERMS:
        hint = difflib.get_close_matches(name, LOSS_TERMS, n=1)
        raise MedTextSegError(f"unknown loss term {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                              + f"; valid: {', '.join(loss_term_names())}")


def create_loss_term(name: str, **params: Any) -> LossTerm:
    """Build the loss term registered as ``name`` with keyword ``params`` (e.g. ``tversky``, alpha=0.7).

    Raises:
        MedTextSegError: unknown name (with the closest and the valid ones), unknown parameter (with the valid
            ones), or a parameter value the term rejects.
    """
    check_loss_term_name(name)
    cls = LOSS_TERMS[name]
    valid = [p for p in inspect.signature(cls).parameters]
    for key in params:
        if key not in valid:
            hint = difflib.get_close_matches(key, valid, n=1)
            raise MedTextSegError(f"loss term {name!r} has no parameter {key!r}"
                                  + (f" (did you mean {hint[0]!r}?)" if hint else "")
                                  + f"; valid: {', '.join(valid) or 'none'}")
    try:
        return cls(**params)
    except MedTextSegError as error:
        raise MedTextSegError(f"loss term {name!r}: {error}") from None
