"""Left and right: a model trained on real anatomy (Colin27 + AAL, axial slices) answers "left X" on the left.

Slices show both members of a pair (left and right caudate, putamen, thalamus); only the side word says which
one a prompt means, and the left-right flip augmentation mirrors images and swaps the words, so a model that
ignored the word would be right half the time.
"""

import pytest
import torch

from medtextseg.config import Config
from medtextseg.converters.aal import ATLAS_FILE, DEFAULT_SRC, convert_aal
from medtextseg.data.layout import load_dataset
from medtextseg.inference.sliding import prompt_probabilities
from medtextseg.training import inputs as inputs_module
from medtextseg.training.engine import Trainer


def side_answers(model, cases, text, labels: dict[str, int], patch_size) -> list[bool]:
    """For every lateral prompt whose structure and mirror twin are both in the slice: does the predicted
    probability mass fall more on the named structure than on its twin?"""
    answers = []
    model.eval()
    for case in cases:
        prompts = [p for p in case.prompts if p.kind == "anatomy" and p.meta.get("side")]
        if not prompts:
            continue
        with torch.no_grad():
            probabilities = prompt_probabilities(model, case.image, text([p.prompt for p in prompts]), patch_size)
        for prompt, probability in zip(prompts, probabilities, strict=True):
            side = prompt.meta["side"]
            name = next(n for n, v in labels.items() if v == prompt.target[0])
            twin = name.replace(f"_{side}", "_right" if side == "left" else "_left")
            named, other = case.label == labels[name], case.label == labels[twin]
            if named.any() and other.any():
                answers.append(float((probability * named).sum()) > float((probability * other).sum()))
    return answers


@pytest.mark.skipif(not (DEFAULT_SRC / ATLAS_FILE).is_file(),
                    reason=f"{DEFAULT_SRC} has no AAL atlas: run bash scripts/setup_atlas.sh (installs mricron-data)")
@pytest.mark.parametrize("conditioning", [
    [],  # the default: FiLM with coordinate ramps at every decoder stage
    ["model.conditioning=prompt_head", "model.spatial_film=false"]])  # the text only after a shared decoder
def test_left_and_right_prompts_are_answered_on_the_named_side(tmp_path, conditioning):
    root = tmp_path / "aal2d"
    convert_aal(DEFAULT_SRC, root, spatial_dims=2, num_cases=120, structures="caudate,putamen,thalamus",
                bilateral=False)
    config = Config.load("default_2d", [
        *conditioning, f"data.root={root}", "model.in_channels=1", "data.prompt_sampling=true",
        "data.kind_weights={anatomy: 0.7, absent: 0.3}", "data.prompts_per_image=4", "train.batch_images=8",
        "train.steps=500", "train.val_every=5000", "train.val_cases=1"])
    trainer = Trainer(config, tmp_path / "run", progress=False)
    trainer.run()
    layout = load_dataset(root)
    held_out = inputs_module.prepare_cases(layout, layout.splits["test"], config, False, "")
    answers = side_answers(trainer.model, held_out, trainer.text, layout.labels, config.data.patch_size)
    print(f"named side chosen in {sum(answers)}/{len(answers)} held-out lateral prompts")
    assert len(answers) >= 30
    # a side-blind model is right half the time; seeds 0, 1, 2 of this training got 111, 134 and 134 of 134
    # (seed 0 got 126 before a change that only reordered floating-point sums): the bar leaves room for that
    assert sum(answers) / len(answers) >= 0.8
