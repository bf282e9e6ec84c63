"""A MONAI ``ImageReader`` backed by SimpleITK, for MHA, NRRD and the other ITK formats.

MONAI's own ITK reader needs the large ``itk`` package; SimpleITK reads the same formats. Arrays come out
in file voxel order (i, j, k) with a RAS affine, exactly as MONAI's NibabelReader gives them, so every
transform downstream (and its inversion) treats both readers alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from monai.config import PathLike
from monai.data.image_reader import ImageReader, _copy_compatible_dict, _stack_images
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

ITK_ENDINGS = (".mha", ".mhd", ".nrrd", ".nhdr", ".nii", ".nii.gz", ".gipl", ".gipl.gz", ".hdr", ".img",
               ".tif", ".tiff", ".vtk")


def itk_to_ras_affine(image) -> np.ndarray:
    """4x4 voxel-to-world affine in RAS of a SimpleITK image (ITK's world is LPS: negate x and y)."""
    dims = image.GetDimension()
    affine = np.eye(4)
    direction = np.array(image.GetDirection()).reshape(dims, dims)
    affine[:dims, :dims] = direction * np.array(image.GetSpacing())[None, :]
    affine[:dims, 3] = image.GetOrigin()
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def itk_frame(affine: np.ndarray, dims: int = 3) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """``(origin, spacing, direction)`` of a ``dims``-D SimpleITK image on the grid of a 4x4 RAS affine (the
    inverse of :func:`itk_to_ras_affine`; direction row-major, as ``SetDirection`` takes it)."""
    from monai.data.utils import orientation_ras_lps

    lps = orientation_ras_lps(np.asarray(affine, dtype=float))[:dims]
    spacing = np.linalg.norm(lps[:, :dims], axis=0)
    direction = lps[:, :dims] / spacing[None, :]
    return tuple(lps[:, 3].tolist()), tuple(spacing.tolist()), tuple(direction.ravel().tolist())


class SimpleITKReader(ImageReader):
    """Reads ITK-format files for ``monai.transforms.LoadImage`` (pass ``reader=SimpleITKReader()``)."""

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        return all(str(f).lower().endswith(ITK_ENDINGS) for f in ensure_tuple(filename))

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs):
        import SimpleITK as sitk

        from medtextseg.data.dicom_series import is_dicom_series, series_image

        self.filenames = [str(f) for f in ensure_tuple(data)]
        images = [series_image(f) if is_dicom_series(f) else sitk.ReadImage(f) for f in self.filenames]
        return images if len(images) > 1 else images[0]

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        import SimpleITK as sitk

        arrays, meta = [], {}
        for image in img if isinstance(img, list | tuple) else [img]:  # an Image is iterable: no ensure_tuple
            array = sitk.GetArrayFromImage(image)  # ITK gives (k, j, i): reverse to file voxel order
            if image.GetNumberOfComponentsPerPixel() > 1:
                raise ValueError("multi-component (vector) images are not supported; split the channels")
            array = array.transpose(tuple(reversed(range(array.ndim))))
            header = {MetaKeys.AFFINE: itk_to_ras_affine(image), MetaKeys.ORIGINAL_AFFINE: itk_to_ras_affine(image),
                      MetaKeys.SPATIAL_SHAPE: np.asarray(array.shape), MetaKeys.SPACE: SpaceKeys.RAS,
                      MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan")}
            arrays.append(array)
            _copy_compatible_dict(header, meta)
        return _stack_images(arrays, meta), meta
