"""medtextseg.models.conditioning: the ways the text enters the network, as registered blocks.

Importing the package registers the built-in kinds (``catalogue.py``) in the registry (``registry.py``), whatever
module of it is imported first, as timm registers its models on import: the registry never imports a kind.
"""

from medtextseg.models.conditioning import catalogue  # noqa: F401  (registers the built-in kinds)
