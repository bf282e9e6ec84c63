"""Images given in memory, brought to what ``LoadImaged`` gives for files: one MetaTensor [C, *spatial] with its
RAS affine, plus the :class:`~medtextseg.data.io.Geometry` outputs are written on.

One item per channel, as with files, in the model's channel order:

* a numpy array (or a torch tensor) [*spatial] in the voxel order of nibabel's ``get_fdata()``: index (i, j, k),
  with either ``affine`` (4x4, (i, j, k) -> RAS+ world mm, nibabel's convention) or SimpleITK's ``spacing``
  [``origin``, ``direction``] (LPS world mm, direction columns = the i, j, k axes, row-major; defaults: origin 0,
  identity direction). Note that an array from ``sitk.GetArrayFromImage`` is (k, j, i): pass the image instead.
* a nibabel image (its affine; a NIfTI header is kept for the outputs);
* a SimpleITK image (its origin, spacing and direction; read by the same reader as ITK files);
* a MONAI MetaTensor, channel first [C, *spatial] as ``LoadImage(ensure_channel_first=True)`` returns it, with the
  affine of its meta (``space`` LPS is converted); one MetaTensor may carry all channels.

The channels must lie on one grid. A 2D slice may be [X, Y] or [X, Y, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.utils import correct_nifti_header_if_necessary, orientation_ras_lps, to_affine_nd
from monai.utils import MetaKeys, SpaceKeys

from medtextseg.data.io import Geometry
from medtextseg.data.sitk_reader import SimpleITKReader, itk_to_ras_affine
from medtextseg.utils.errors import MedTextSegError

EXPECTED = ("a file path, a numpy array (with affine= or spacing=), a nibabel image, a SimpleITK image or a MONAI "
            "MetaTensor")


@dataclass
class InMemoryImage:
    """An image's channels ready for the preparation pipeline.

    Attributes:
        image: MetaTensor [C, *spatial] float32, file voxel order, ``affine`` RAS+; a 2D slice as [C, X, Y, 1].
        geometry: the grid outputs are written on (shape as given: [X, Y] stays 2D).
        name: what was given (its first item), for messages, e.g. "numpy array 48 x 48 x 16".
    """

    image: MetaTensor
    geometry: Geometry
    name: str


def is_path(item: Any) -> bool:
    return isinstance(item, str | PathLike)


def _describe(item: Any) -> str:
    shape = getattr(item, "shape", None)
    if shape is None and hasattr(item, "GetSize"):
        shape = item.GetSize()
    kind = {"MetaTensor": "MetaTensor", "ndarray": "numpy array", "Tensor": "torch tensor"}.get(
        type(item).__name__, f"{type(item).__module__.split('.')[0]} {type(item).__name__}")
    return f"{kind} {' x '.join(str(int(s)) for s in shape)}" if shape is not None else kind


def _checked_affine(affine: Any, what: str) -> np.ndarray:
    try:
        matrix = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=float)
    except (TypeError, ValueError):
        raise MedTextSegError(f"{what}: affine must be a 4x4 matrix of numbers, got {type(affine).__name__}") from None
    if matrix.shape == (3, 3):  # a 2D affine (MONAI's, for a slice)
        matrix = to_affine_nd(3, matrix)
    if matrix.shape != (4, 4) or not np.isfinite(matrix).all() or abs(np.linalg.det(matrix[:3, :3])) < 1e-12:
        raise MedTextSegError(f"{what}: affine must be a finite, invertible 4x4 matrix (voxel (i, j, k) -> RAS+ "
                              f"mm; 3x3 for a slice), got shape {matrix.shape}")
    return matrix


def _itk_geometry(dims: int, spacing: Any, origin: Any, direction: Any,
                  what: str) -> tuple[np.ndarray, tuple[tuple[float, ...], ...]]:
    """The RAS affine and exact ITK frame of SimpleITK's ``spacing``, ``origin``, ``direction`` (SimpleITK checks
    them, as it does for a file)."""
    import SimpleITK as sitk

    image = sitk.Image([1] * dims, sitk.sitkUInt8)
    try:
        image.SetSpacing([float(s) for s in spacing])
        if origin is not None:
            image.SetOrigin([float(o) for o in origin])
        if direction is not None:
            image.SetDirection([float(d) for d in np.asarray(direction, dtype=float).ravel()])
    except Exception as error:  # SimpleITK raises RuntimeError with a long ITK trace; numpy TypeError/ValueError
        first = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise MedTextSegError(f"{what}: spacing/origin/direction do not make a {dims}D SimpleITK image "
                              f"(spacing {dims} positive values, origin {dims} values, direction {dims}x{dims}): "
                              f"{first}") from None
    return itk_to_ras_affine(image), (image.GetOrigin(), image.GetSpacing(), image.GetDirection())


def _one_channel_array(array: np.ndarray, what: str) -> np.ndarray:
    if array.ndim not in (2, 3):
        raise MedTextSegError(f"{what}: one array per channel, [*spatial] (2 or 3 axes), got {array.ndim} axes; "
                              "for channel-first data pass list(array)")
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise MedTextSegError(f"{what}: voxels must be real numbers, got dtype {array.dtype}")
    return array


def _channels(item: Any, index: int, geometry_args: dict[str, Any]) -> tuple[list[np.ndarray], Geometry, np.ndarray]:
    """``item``'s channels (each [*spatial], float32), the grid outputs are written on, and the affine the
    preparation reads (the same but for a nibabel header MONAI would correct, as it does for a file)."""
    what = f"image {index} ({_describe(item)})"
    if isinstance(item, MetaTensor):
        if item.ndim not in (3, 4):
            raise MedTextSegError(f"{what}: a MetaTensor is channel first, [C, *spatial] (3 or 4 axes), got "
                                  f"{item.ndim} axes")
        affine = _checked_affine(item.affine, what)
        if item.meta.get(MetaKeys.SPACE) == SpaceKeys.LPS:
            affine = orientation_ras_lps(affine)
        data = item.detach().cpu().as_tensor().numpy()
        return [_one_channel_array(c, what).astype(np.float32) for c in data], Geometry(data.shape[1:], affine), affine
    if isinstance(item, np.ndarray | torch.Tensor):
        array = _one_channel_array(item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else item, what)
        if geometry_args.get("affine") is not None:
            if any(geometry_args.get(k) is not None for k in ("spacing", "origin", "direction")):
                raise MedTextSegError(f"{what}: give affine or spacing/origin/direction, not both")
            affine = _checked_affine(geometry_args["affine"], what)
            return [array.astype(np.float32)], Geometry(array.shape, affine), affine
        if geometry_args.get("spacing") is None:
            raise MedTextSegError(f"{what}: an array has no geometry; pass affine= (4x4, voxel (i, j, k) -> RAS+ mm, "
                                  "as nibabel's) or spacing= [origin=, direction=] (SimpleITK's, LPS)")
        affine, frame = _itk_geometry(array.ndim, geometry_args["spacing"], geometry_args.get("origin"),
                                      geometry_args.get("direction"), what)
        return [array.astype(np.float32)], Geometry(array.shape, affine, itk_frame=frame), affine
    if type(item).__module__.startswith("nibabel"):
        import nibabel as nib

        if not isinstance(item, nib.spatialimages.SpatialImage):
            raise MedTextSegError(f"image {index}: got {type(item).__module__}.{type(item).__qualname__}; "
                                  f"expected {EXPECTED}")
        corrected = correct_nifti_header_if_necessary(item)  # what MONAI's NibabelReader reads from a file
        array = _one_channel_array(np.asanyarray(corrected.dataobj), what)
        header = item.header.copy() if isinstance(item, nib.Nifti1Image) else None
        return ([array.astype(np.float32)], Geometry(array.shape, _checked_affine(item.affine, what),
                                                     nifti_header=header),
                _checked_affine(corrected.affine, what))
    if type(item).__name__ == "Image" and type(item).__module__.startswith("SimpleITK"):
        try:
            array, _ = SimpleITKReader().get_data(item)  # as an ITK file is read: (i, j, k), RAS affine
        except ValueError as error:
            raise MedTextSegError(f"{what}: {error}") from None
        array = _one_channel_array(array, what)
        affine = itk_to_ras_affine(item)
        frame = (item.GetOrigin(), item.GetSpacing(), item.GetDirection())
        return [array.astype(np.float32)], Geometry(array.shape, affine, itk_frame=frame), affine
    raise MedTextSegError(f"image {index}: got {type(item).__module__}.{type(item).__qualname__}; expected {EXPECTED}")


def in_memory_image(items: Sequence[Any], affine: Any = None, spacing: Any = None, origin: Any = None,
                    direction: Any = None) -> InMemoryImage:
    """The channels of one image given in memory (see the module's docstring), stacked as ``LoadImaged`` stacks
    files: float32 voxels, the first channel's affine.

    ``affine`` or ``spacing``/``origin``/``direction`` give the grid of numpy arrays and torch tensors (all of
    them: the channels share one grid); images that carry their own grid refuse them.

    Raises:
        MedTextSegError: an item of another type (naming it), an array without a grid or with two, a channel
            of other than 2 or 3 axes, channels on different grids.
    """
    geometry_args = {"affine": affine, "spacing": spacing, "origin": origin, "direction": direction}
    given = [key for key, value in geometry_args.items() if value is not None]
    if given and not any(isinstance(item, np.ndarray | torch.Tensor) and not isinstance(item, MetaTensor)
                         for item in items):
        raise MedTextSegError(f"{'/'.join(given)} applies to numpy arrays; the images given carry their own grid")
    channels: list[np.ndarray] = []
    geometry: Geometry | None = None
    for index, item in enumerate(items, start=1):
        if is_path(item):
            raise MedTextSegError(f"image {index}: a path among images in memory; give every channel as a file, "
                                  "or every channel in memory")
        arrays, grid, read_affine = _channels(item, index, geometry_args)
        if geometry is None:
            geometry, image_affine, name = grid, read_affine, _describe(item)
        elif not grid.same_grid(geometry):
            raise MedTextSegError(f"image {index} ({_describe(item)}): not on the grid of image 1 ({name}); the "
                                  "channels of one image must be co-registered on one grid")
        channels += arrays
    if geometry is None:
        raise MedTextSegError("no image given")
    # C-contiguous as MONAI's loaders give files: the same memory layout sums in the same order (same bits)
    stacked = np.ascontiguousarray(np.stack(channels))
    if stacked.ndim == 3:  # a 2D slice is prepared as X x Y x 1, as a file of one slice is
        stacked = stacked[..., None]
    affine_tensor = torch.as_tensor(image_affine, dtype=torch.float64)
    meta = {MetaKeys.ORIGINAL_AFFINE: image_affine.copy(), MetaKeys.SPATIAL_SHAPE: np.asarray(stacked.shape[1:]),
            MetaKeys.SPACE: SpaceKeys.RAS, MetaKeys.ORIGINAL_CHANNEL_DIM: 0, "filename_or_obj": name}
    return InMemoryImage(MetaTensor(torch.from_numpy(stacked), affine=affine_tensor, meta=meta), geometry, name)
