"""Anatomical planes named by the axis they cut, in RAS voxel order: ``S`` sagittal (axis 0), ``C`` coronal
(axis 1), ``A`` axial (axis 2). Shared by the config (``cotraining.views``) and the sparse labels that use them."""

from __future__ import annotations

from medtextseg.utils.errors import MedTextSegError

PLANE_AXES: dict[str, int] = {"S": 0, "C": 1, "A": 2}
PLANE_NAMES: dict[str, str] = {"S": "sagittal", "C": "coronal", "A": "axial"}


def plane_axes(planes: str, where: str) -> list[int]:
    """``"AS"`` -> ``[2, 0]``; raises naming ``where`` for letters other than S, C, A or repeats."""
    letters = planes.upper()
    if not letters or any(p not in PLANE_AXES for p in letters) or len(set(letters)) != len(letters):
        raise MedTextSegError(f"{where}: planes {planes!r} must be distinct letters among S (sagittal), "
                              "C (coronal), A (axial), e.g. 'SC'")
    return [PLANE_AXES[p] for p in letters]


__all__ = ["PLANE_AXES", "PLANE_NAMES", "plane_axes"]
