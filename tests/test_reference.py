"""The text-blind MONAI UNet every accuracy comparison carries (``medtextseg.evaluation.reference``): it trains
in 2D and 3D for a wall time or a number of steps, answers exactly the lesion prompts of the test split on the
files' grid, and learns the lesions (2D, 250 steps); on sparse labels it learns from the annotated voxels only."""

import pytest
import torch

from medtextseg.config import Config
from medtextseg.data.layout import load_dataset
from medtextseg.data.synthetic import make_synthetic_dataset
from medtextseg.evaluation.reference import (
    LESION_KINDS,
    ReferenceTask,
    group_summary,
    score_unet,
    train_unet,
)


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


def test_the_masked_loss_takes_no_gradient_from_unannotated_voxels():
    from medtextseg.evaluation.reference import _loss

    for task, target in ((ReferenceTask("named", (2,)), torch.ones(2, 1, 8, 8)),
                         (ReferenceTask("labels", classes=3), torch.full((2, 1, 8, 8), 2))):
        logits = torch.randn(2, task.out_channels, 8, 8, requires_grad=True)
        mask = torch.zeros(2, 1, 8, 8)
        mask[:, :, 3] = 1.0  # one annotated row
        _loss(task)(logits, target.float() if task.mode != "labels" else target, mask).backward()
        outside = logits.grad * (1 - mask)
        assert outside.abs().max() == 0.0 and logits.grad[:, :, 3].abs().max() > 0.0


def test_on_sparse_labels_the_reference_trains_on_the_labelled_volumes_and_centres_on_their_annotations(tmp_path):
    from medtextseg.data.io import read_array
    from medtextseg.data.layout import load_dataset as load
    from medtextseg.data.sparse_labels import sparsify_dataset
    from medtextseg.evaluation.reference import _samples, reference_task

    dense = make_synthetic_dataset(tmp_path / "dense", num_cases=16, spatial_dims=3, seed=0)
    sparse = tmp_path / "sparse"
    sparsify_dataset(dense, sparse, fraction=0.5, seed=0)
    config = Config.load("default", [f"data.root={sparse}", "data.patch_size=[32,32,16]"])
    layout = load(sparse)
    task = reference_task(layout, ["transition_zone"])
    assert task.mode == "named" and task.ignore == layout.labels["ignore"]
    samples = _samples(layout, config, task)
    labelled = [c for c in layout.splits["train"] if (read_array(layout.cases[c].label_path) != task.ignore).any()]
    assert 0 < len(samples) == len(labelled) < len(layout.splits["train"])

    for sample in samples:  # patches centre on the annotated target 2 times in 3, else on any other voxel
        seen = torch.as_tensor(sample["annotated"])[0].flatten().numpy() > 0
        inside = torch.as_tensor(sample["label"])[0].flatten().numpy() > 0
        assert (seen & inside)[sample["fg"]].all() and len(sample["fg"]) + len(sample["bg"]) == len(seen)
    _, steps = train_unet(sparse, config, 300.0, tmp_path / "unet.pt", max_steps=5, target_labels=["transition_zone"])
    assert steps == 5
    # before any step, the output's bias is the target's share of the annotated voxels, not one half
    untrained, _ = train_unet(sparse, config, 0.0, tmp_path / "untrained.pt", target_labels=["transition_zone"])
    share = torch.cat([torch.as_tensor(s["label"])[torch.as_tensor(s["annotated"]) > 0] for s in samples]).mean()
    output = [m for m in untrained.modules() if isinstance(m, torch.nn.Conv3d)][-1]
    assert torch.sigmoid(output.bias).item() == pytest.approx(share.item(), rel=1e-4) and share < 0.3
