"""The text-blind MONAI UNet every accuracy benchmark carries (``benchmarks/monai_reference.py``): it trains in 2D
and 3D for a wall time or a number of steps, answers exactly the lesion prompts of the test split on the files'
grid, and learns the lesions (2D, 250 steps)."""

import sys
from pathlib import Path

import pytest

from medtextseg.config import Config
from medtextseg.data.layout import load_dataset
from medtextseg.data.synthetic import make_synthetic_dataset

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from monai_reference import LESION_KINDS, group_summary, score_unet, train_unet  # noqa: E402


@pytest.mark.parametrize("dims", [2, 3])
def test_the_reference_learns_lesions_for_a_wall_time_and_answers_every_lesion_prompt(tmp_path, dims):
    data = make_synthetic_dataset(tmp_path / "data", num_cases=16, spatial_dims=dims, seed=0)
    patch = ["data.patch_size=[48,48]"] if dims == 2 else ["data.patch_size=[48,48,16]"]
    config = Config.load("default_2d" if dims == 2 else "default", [f"data.root={data}", *patch])
    untrained, no_steps = train_unet(data, config, 0.0, tmp_path / "untrained.pt")
    trained, steps = train_unet(data, config, 120.0, tmp_path / "unet.pt", max_steps=250 if dims == 2 else 3)
    assert no_steps == 0 and steps == (250 if dims == 2 else 3)
    assert train_unet(data, config, 60.0, tmp_path / "unet.pt")[1] == steps  # read back, not trained again

    before, after = score_unet(untrained, data, config), score_unet(trained, data, config, mirror_axes=(0,))
    lesion_prompts = [(case.case, p.prompt) for case in load_dataset(data).split("test") for p in case.prompts
                      if p.kind in LESION_KINDS]
    assert [(r["case"], r["prompt"]) for r in after] == lesion_prompts
    assert all(0.0 <= r["dice"] <= 1.0 for r in after)
    summary = group_summary(after)
    assert sum(row["n"] for row in summary.values()) == len(lesion_prompts)
    assert all(row["hd95_inf"] <= row["n"] for row in summary.values())

    def all_lesions(records: list[dict]) -> float:
        scores = [r["dice"] for r in records if r["group"] == "all"]
        return sum(scores) / len(scores)

    if dims == 2:  # 3 steps teach 3D nothing (a 3D run needs minutes); its path is checked above
        assert all_lesions(after) > all_lesions(before) + 0.2
