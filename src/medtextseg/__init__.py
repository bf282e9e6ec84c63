"""medtextseg: text-guided medical image segmentation.

The public API is small: ``load_model`` and ``segment`` (see :mod:`medtextseg.api`).
"""

__version__ = "0.1.0"

from medtextseg.utils.errors import MedTextSegError  # noqa: E402

__all__ = ["MedTextSegError", "__version__", "load_model", "segment"]


def __getattr__(name: str):
    # Lazy: importing medtextseg (e.g. for `--help`) must not import torch.
    if name in ("load_model", "segment"):
        from medtextseg import api

        return getattr(api, name)
    raise AttributeError(f"module 'medtextseg' has no attribute {name!r}")
