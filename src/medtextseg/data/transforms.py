"""MONAI pipelines that bring any input into the model's space: channels stacked, RAS, spacing, z-score.

The same ``preparation`` serves training and prediction; prediction inverts it (``monai.transforms.Invertd``)
to write outputs on the input file's grid.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.data import NibabelReader
from monai.transforms import (
    AddCoordinateChannels,
    Compose,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    NormalizeIntensity,
    NormalizeIntensityd,
    Orientationd,
    Spacingd,
)

from medtextseg.data.sitk_reader import SimpleITKReader

# MONAI warns on every image reader it builds when nvImageCodec (a CUDA DICOM decoder) is missing; on the
# CPU that is expected and the warning would fill the terminal once per case.
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")


def _as_dicts(rules: Sequence[Any]) -> list[dict]:
    """Per-channel rules as plain dicts, whether given as dicts or as ``config.ChannelNormalization`` objects."""
    return [dict(r) if isinstance(r, Mapping) else r.model_dump() for r in rules]


def normalization_rules(normalization: Sequence[Any] | None) -> list[dict] | None:
    """``normalization`` as plain dicts, or None when every channel is z-scored (the default preparation)."""
    if normalization is None:
        return None
    rules = _as_dicts(normalization)
    return rules if any(r["scheme"] != "zscore" for r in rules) else None


class NormalizeChannelsd(MapTransform):
    """Each channel of ``image`` by its own rule (``config.ChannelNormalization``, as dicts or objects):
    ``zscore`` by the image's own mean and std (MONAI ``NormalizeIntensity``), ``ct`` clipped to ``clip`` and
    then by the given ``mean`` and ``std``. ``image``: [C, *spatial]; one rule per channel."""

    def __init__(self, rules: Sequence[Any], key: str = "image") -> None:
        super().__init__([key])
        self.rules = _as_dicts(rules)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from medtextseg.utils.errors import MedTextSegError

        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            if image.shape[0] != len(self.rules):
                raise MedTextSegError(f"config field 'data.normalization' has {len(self.rules)} entries but the "
                                      f"image has {image.shape[0]} channels")
            out = image.clone().float()
            for channel, rule in enumerate(self.rules):
                if rule["scheme"] == "ct":
                    low, high = rule["clip"]
                    out[channel] = (out[channel].clamp(low, high) - rule["mean"]) / rule["std"]
                else:
                    out[channel:channel + 1] = NormalizeIntensity(channel_wise=True)(out[channel:channel + 1])
            d[key] = out
        return d


def preparation(spacing: Sequence[float] | None = None, label_keys: Sequence[str] = (),
                normalization: Sequence[Any] | None = None, load: bool = True) -> Compose:
    """Load ``image`` (a list of co-registered channel files) and optional masks, orient to RAS,
    resample to ``spacing`` (mm; None keeps the file's), and normalise each image channel: z-scored, or by
    ``normalization`` (one ``config.ChannelNormalization`` per channel, e.g. ``ct`` for a CT channel).
    ``load=False``: ``image`` is already a MetaTensor [C, *spatial] with its affine, as loading gives it
    (:func:`medtextseg.data.image_input.in_memory_image`); every later step is the same.

    Output dict: ``image`` MetaTensor [C, X, Y, Z] float32 (RAS+ voxel order: X toward patient Right,
    Y toward Anterior, Z toward Superior); each label key [1, X, Y, Z] on the same grid.
    """
    keys = ["image", *label_keys]
    # NIfTI through nibabel, every other format through SimpleITK (MONAI tries the last reader first)
    steps = [LoadImaged(keys, reader=[SimpleITKReader(), NibabelReader()], ensure_channel_first=True,
                        image_only=True)] if load else []
    steps.append(Orientationd(keys, axcodes="RAS", labels=None))
    if spacing is not None:
        # a non-positive value keeps that axis' spacing (2D data stored as X x Y x 1 keep their slice)
        pixdim = [*spacing, -1.0] if len(spacing) == 2 else list(spacing)
        steps.append(Spacingd(keys, pixdim=pixdim, mode=["bilinear", *["nearest"] * len(label_keys)]))
    rules = normalization_rules(normalization)
    steps += [
        NormalizeChannelsd(rules) if rules else NormalizeIntensityd("image", channel_wise=True),
        EnsureTyped(keys, dtype=None, track_meta=True),
    ]
    return Compose(steps)


def coordinate_channels(spatial_shape: Sequence[int]) -> torch.Tensor:
    """[S, *spatial] voxel coordinates in [-1, 1] over the whole image (S = number of spatial axes).

    Appended to the image after augmentation and before cropping or windowing, they tell the network
    where a voxel lies in the image (RAS: channel 0 grows toward patient Right), which a convolution alone
    only learns slowly, from padding, and which decides prompts such as "the left-sided lesion".
    """
    dims = len(spatial_shape)
    return AddCoordinateChannels(spatial_dims=tuple(range(dims)))(torch.zeros(1, *spatial_shape))[1:].float()
