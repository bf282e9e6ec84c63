"""Training samples: a left-right flip mirrors image and targets, swaps the words, and keeps coordinates."""

import torch

from medtextseg.data.dataset import PreparedCase, PromptSampleDataset, collate_prompt_samples
from medtextseg.data.layout import PromptRecord
from medtextseg.data.transforms import coordinate_channels


def make_case() -> PreparedCase:
    image = torch.arange(3 * 8 * 6 * 4, dtype=torch.float32).reshape(3, 8, 6, 4)
    label = torch.zeros(8, 6, 4, dtype=torch.long)
    label[1:3, 2:4, 1:3] = 3  # small i: the patient's right in RAS
    prompts = [PromptRecord("c", "the lesion on the right", (3,), "single"),
               PromptRecord("c", "the lesion on the left", (), "absent")]
    return PreparedCase("c", image, label, {}, prompts)


def sample(flip: float) -> dict:
    dataset = PromptSampleDataset([make_case()], [8, 6, 4], prompts_per_image=2, kind_weights={},
                                  flip_left_right=flip, intensity_augmentation=False, coordinates=True)
    return dataset[0]


def test_flip_mirrors_image_and_targets_and_swaps_words_but_not_coordinates():
    plain, flipped = sample(0.0), sample(1.0)
    order = [plain["prompts"].index(p) for p in ("the lesion on the right", "the lesion on the left")]
    swapped = [flipped["prompts"].index(p) for p in ("the lesion on the left", "the lesion on the right")]
    assert torch.equal(flipped["image"][:3], plain["image"][:3].flip(1))
    coordinates = coordinate_channels([8, 6, 4])
    assert torch.equal(plain["image"][3:], coordinates) and torch.equal(flipped["image"][3:], coordinates)
    for before, after in zip(order, swapped, strict=True):
        assert torch.equal(flipped["targets"][after], plain["targets"][before].flip(1))
    # the lesion now lies at large i (patient left) and the prompt that names it says "left"
    left = flipped["prompts"].index("the lesion on the left")
    assert flipped["targets"][left, 0, 5:7].sum() == flipped["targets"][left].sum() > 0


def test_samples_are_reproducible_by_seed_and_epoch():
    dataset = PromptSampleDataset([make_case()], [8, 6, 4], 2, {}, 0.5, True, seed=4, coordinates=True)
    first = dataset[0]
    assert torch.equal(dataset[0]["image"], first["image"])
    dataset.epoch = 1
    different = [not torch.equal(dataset[0]["image"], first["image"]) for dataset.epoch in range(1, 6)]
    assert any(different)


def test_collate_maps_prompts_to_their_images():
    items = [sample(0.0), sample(1.0)]
    batch = collate_prompt_samples(items)
    assert batch["image"].shape == (2, 6, 8, 6, 4)
    assert batch["targets"].shape == (4, 1, 8, 6, 4)
    assert batch["image_index"].tolist() == [0, 0, 1, 1]


def test_kinds_with_zero_weight_are_never_drawn():
    dataset = PromptSampleDataset([make_case()], [8, 6, 4], prompts_per_image=3, kind_weights={"absent": 0.0},
                                  flip_left_right=0.0, intensity_augmentation=False)
    for epoch in range(5):
        dataset.epoch = epoch
        assert dataset[0]["kinds"] == ["single"] * 3


def test_structured_prompts_replace_the_listed_texts_with_their_probability_and_flip_with_them():
    structured = {"the lesion on the right": "location right; number one"}
    dataset = PromptSampleDataset([make_case()], [8, 6, 4], 2, {}, flip_left_right=0.0, intensity_augmentation=False,
                                  structured=structured, structured_probability=1.0)
    assert sorted(dataset[0]["prompts"]) == ["location right; number one", "the lesion on the left"]
    flipped = PromptSampleDataset([make_case()], [8, 6, 4], 2, {}, flip_left_right=1.0, intensity_augmentation=False,
                                  structured=structured, structured_probability=1.0)
    assert "location left; number one" in flipped[0]["prompts"]
    never = PromptSampleDataset([make_case()], [8, 6, 4], 2, {}, flip_left_right=0.0, intensity_augmentation=False,
                                structured=structured, structured_probability=0.0)
    assert "location right; number one" not in never[0]["prompts"]


def test_every_prompt_sees_its_target_in_the_patch_often_enough():
    """A patch much smaller than the image: each of three prompts' targets, two of them small, must be in
    view in a fair share of samples (centring on the union would favour the large target)."""
    shape = (64, 64, 16)
    label = torch.zeros(shape, dtype=torch.long)
    label[2:5, 2:5, 1:3] = 1  # small, in one corner
    label[59:62, 59:62, 13:15] = 2  # small, in the opposite corner
    label[20:44, 20:44, 4:12] = 3  # large, in the middle
    prompts = [PromptRecord("c", f"target {value}", (value,), kind="single") for value in (1, 2, 3)]
    case = PreparedCase("c", torch.randn(1, *shape), label, {}, prompts)
    dataset = PromptSampleDataset([case], [24, 24, 8], 3, {"single": 1.0}, flip_left_right=0.0,
                                  intensity_augmentation=False)
    seen = {p.prompt: 0 for p in prompts}
    draws = 150
    for epoch in range(draws):
        dataset.epoch = epoch
        item = dataset[0]
        for text, target in zip(item["prompts"], item["targets"], strict=True):
            seen[text] += bool(target.any())
    # each is the centre's target 2/3 x 1/3 of the time; the union centre gave the small ones about 1%
    assert min(seen.values()) >= 0.15 * draws, seen
