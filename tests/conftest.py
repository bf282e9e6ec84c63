"""Shared fixtures: tiny synthetic datasets, an offline text cache in a temporary folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def text_cache_home(tmp_path_factory) -> Path:
    """Every test encodes prompts into one session cache, never into the user's home."""
    folder = tmp_path_factory.mktemp("medtextseg_cache")
    os.environ["MEDTEXTSEG_CACHE"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def dataset_3d(tmp_path_factory) -> Path:
    from medtextseg.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("synth3d"), num_cases=6, spatial_dims=3, seed=1)


@pytest.fixture(scope="session")
def dataset_2d(tmp_path_factory) -> Path:
    from medtextseg.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("synth2d"), num_cases=6, spatial_dims=2, seed=1)
