"""Prompt vocabularies: the file format and its errors, built-in wordings, reading with the dataset, and random
phrasing per sample per step in training (every phrasing encoded once, before step 1)."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from helpers import CountingEncoder
from medtextseg.config import Config
from medtextseg.data.dataset import PreparedCase, PromptSampleDataset
from medtextseg.data.layout import PromptRecord, load_dataset
from medtextseg.data.vocabulary import (
    VOCABULARY_FILE,
    PromptVocabulary,
    default_vocabulary_for,
    normalise_class_name,
    synonyms_for,
)
from medtextseg.text.cache import TextEmbeddingCache
from medtextseg.training import inputs as inputs_module
from medtextseg.training.engine import Trainer
from medtextseg.training.steps.standard import StandardStep

TEMPLATES = ["segment the {name}", "outline the {name}", "where is the {name}?", "your goal is to spot the {name}"]
SYNONYMS = {"liver": ["liver", "hepatic parenchyma"], "kidney_left": ["left kidney", "left renal parenchyma"]}


def vocabulary() -> PromptVocabulary:
    return PromptVocabulary(TEMPLATES, SYNONYMS)


# ------------------------------------------------------------------------ the vocabulary itself
def test_phrasings_are_every_template_with_every_synonym():
    phrasings = vocabulary().phrasings("kidney_left")
    assert len(phrasings) == 8 and len(set(phrasings)) == 8
    assert "where is the left renal parenchyma?" in phrasings
    assert vocabulary().canonical("kidney_left") == "segment the left kidney"


def test_render_draws_from_the_phrasings_and_is_reproducible_by_seed():
    words = vocabulary()
    drawn = [words.render("liver", np.random.default_rng(seed)) for seed in range(40)]
    assert set(drawn) <= set(words.phrasings("liver"))
    assert len(set(drawn)) >= 6  # 8 possible: random templates and synonyms, not always the first
    assert drawn[7] == words.render("liver", np.random.default_rng(7))


def test_braces_other_than_the_placeholder_stay_text():
    words = PromptVocabulary(["segment the {name} {not a field}"], {"liver": ["liver"]})
    assert words.phrasings("liver") == ["segment the liver {not a field}"]


def test_file_round_trip_and_optional_templates(tmp_path):
    path = tmp_path / VOCABULARY_FILE
    vocabulary().save(path)
    assert PromptVocabulary.load(path).to_dict() == {"templates": TEMPLATES, "synonyms": SYNONYMS}
    path.write_text(json.dumps({"synonyms": {"spleen": ["spleen"]}}))
    loaded = PromptVocabulary.load(path)
    assert loaded.canonical("spleen") == "segment the spleen" and len(loaded.templates) > 4


@pytest.mark.parametrize(("content", "message"), [
    ({"templates": ["segment the {name}", "outline the organ"], "synonyms": SYNONYMS},
     r"templates\[1\] 'outline the organ' has no \{name\} placeholder"),
    ({"templates": TEMPLATES, "synonyms": {"liver": []}}, r"synonyms\['liver'\]: class 'liver' has no synonyms"),
    ({"templates": TEMPLATES, "synonyms": {"liver": "liver"}}, r"synonyms\['liver'\] must be a list"),
    ({"templates": TEMPLATES, "synonym": SYNONYMS}, r"unknown key 'synonym'"),
    ({"templates": TEMPLATES}, r"missing key 'synonyms'"),
    ({"templates": [], "synonyms": SYNONYMS}, r"'templates' must be a non-empty list"),
])
def test_invalid_vocabulary_files_are_named_with_the_key(tmp_path, content, message):
    path = tmp_path / VOCABULARY_FILE
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=rf"^{tmp_path}/{VOCABULARY_FILE}: .*{message}") as error:
        PromptVocabulary.load(path)
    assert "\n" not in str(error.value)


def test_broken_json_and_unknown_class_are_explained(tmp_path):
    path = tmp_path / VOCABULARY_FILE
    path.write_text('{"synonyms": {"liver": ["liver"],}}')
    with pytest.raises(ValueError, match=r"prompt_vocabulary.json: not valid JSON .* at line 1"):
        PromptVocabulary.load(path)
    with pytest.raises(ValueError, match=r"no synonyms for class 'spleen'; classes are liver, kidney_left"):
        vocabulary().render("spleen", np.random.default_rng(0))


# ------------------------------------------------------------------------ built-in wordings
@pytest.mark.parametrize(("label", "expected"), [
    ("liver", ("liver", "hepatic parenchyma", "liver parenchyma")),
    ("kidney_L", ("left kidney", "left renal parenchyma")),
    ("Kidney_right", ("right kidney", "right renal parenchyma")),
    ("left_adrenal_gland", ("left adrenal gland", "left suprarenal gland")),
    ("left atrium", ("left atrium", "left atrial cavity", "left atrial blood pool")),
    ("non-enhancing tumor", ("non-enhancing tumour core", "necrotic and non-enhancing tumour",
                             "necrotic tumour core")),
    ("edema", ("peritumoural oedema", "oedema around the tumour", "FLAIR hyperintense oedema")),
    ("PZ", ("peripheral zone", "prostatic peripheral zone", "PZ of the prostate")),
    ("caudate_L", ("left caudate",)),
    ("Frontal_Sup_2_R", ("right frontal sup 2",)),
    ("IVC_stent", ("IVC stent",)),
])
def test_synonyms_come_from_the_tables_or_the_label_name(label, expected):
    assert synonyms_for(label) == expected


def test_default_vocabulary_is_keyed_by_label_name_without_background():
    words = default_vocabulary_for(["background", "liver", "kidney_left", "glioma", "meningioma",
                                    "pituitary tumor", "whole_tumor", "breast tumour", "prostate"])
    assert "background" not in words and words.classes[0] == "liver"
    assert words.synonyms["pituitary tumor"][:2] == ("pituitary tumour", "pituitary adenoma")
    assert words.synonyms["whole_tumor"][0] == "whole tumour"
    assert words.canonical("kidney_left") == "segment the left kidney"
    assert normalise_class_name("Non-Enhancing  Tumor") == "non_enhancing_tumour"


# ------------------------------------------------------------------------ reading with the dataset
def write_dataset(root, prompts, vocabulary_content=None, cases=4):
    """A tiny 2D dataset: 16 x 16 one-channel slices, liver = 1 and left kidney = 2 in every case."""
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    names = [f"case_{i}" for i in range(cases)]
    rng = np.random.default_rng(0)
    for name in names:
        label = np.zeros((16, 16, 1), np.uint8)
        label[2:8, 3:9] = 1
        label[10:14, 10:14] = 2
        image = rng.normal(size=(16, 16, 1)).astype(np.float32) + label
        nib.save(nib.Nifti1Image(image, np.eye(4)), root / "imagesTr" / f"{name}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label, np.eye(4)), root / "labelsTr" / f"{name}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1"}, "labels": {"background": 0, "liver": 1, "kidney_left": 2},
        "file_ending": ".nii.gz", "medtextseg": {"spatial_dims": 2}}))
    lines = [json.dumps({"case": name, **prompt}) for name in names for prompt in prompts]
    (root / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    (root / "splits.json").write_text(json.dumps({"train": names[:-1], "val": names[-1:], "test": []}))
    if vocabulary_content is not None:
        (root / VOCABULARY_FILE).write_text(json.dumps(vocabulary_content))
    return root


CLASS_PROMPTS = [{"prompt": "segment the liver", "target": [1], "kind": "anatomy", "class": "liver"},
                 {"prompt": "segment the left kidney", "target": [2], "kind": "anatomy", "class": "kidney_left"},
                 {"prompt": "the organs", "target": [1, 2], "kind": "all"}]


def test_dataset_reads_the_vocabulary_and_each_prompt_class(tmp_path):
    root = write_dataset(tmp_path / "data", CLASS_PROMPTS, {"templates": TEMPLATES, "synonyms": SYNONYMS})
    layout = load_dataset(root)
    assert layout.vocabulary is not None and layout.vocabulary.synonyms["liver"] == ("liver", "hepatic parenchyma")
    prompts = layout.cases["case_0"].prompts
    assert [p.class_name for p in prompts] == ["liver", "kidney_left", None]


def test_dataset_without_vocabulary_or_classes_is_unchanged(tmp_path):
    root = write_dataset(tmp_path / "data", [CLASS_PROMPTS[2]])
    layout = load_dataset(root)
    assert layout.vocabulary is None and layout.cases["case_0"].prompts[0].class_name is None


def test_prompt_class_missing_from_the_vocabulary_is_named(tmp_path):
    prompts = [*CLASS_PROMPTS, {"prompt": "the spleen", "target": [], "kind": "absent", "class": "spleen"}]
    root = write_dataset(tmp_path / "data", prompts, {"templates": TEMPLATES, "synonyms": SYNONYMS})
    with pytest.raises(ValueError, match=r"prompts.jsonl:4: class 'spleen' is not in .*prompt_vocabulary.json "
                                         r"\(classes: liver, kidney_left\)"):
        load_dataset(root)
    (root / VOCABULARY_FILE).unlink()
    with pytest.raises(ValueError, match=r"prompts.jsonl:1: class 'liver' needs a prompt_vocabulary.json in"):
        load_dataset(root)


def test_invalid_vocabulary_stops_loading_with_its_file_name(tmp_path):
    root = write_dataset(tmp_path / "data", CLASS_PROMPTS, {"templates": ["liver"], "synonyms": SYNONYMS})
    with pytest.raises(ValueError, match=r"prompt_vocabulary.json: templates\[0\] 'liver' has no \{name\}"):
        load_dataset(root)


# ------------------------------------------------------------------------ sampling in training samples
def class_case() -> PreparedCase:
    label = torch.zeros(8, 6, 4, dtype=torch.long)
    label[1:3, 2:4, 1:3] = 2
    label[5:7, 1:5, 0:2] = 1
    prompts = [PromptRecord("c", "segment the liver", (1,), "anatomy", class_name="liver"),
               PromptRecord("c", "segment the left kidney", (2,), "anatomy", class_name="kidney_left"),
               PromptRecord("c", "the organs", (1, 2), "all")]
    image = torch.arange(8 * 6 * 4, dtype=torch.float32).reshape(1, 8, 6, 4)
    return PreparedCase("c", image, label, {}, prompts)


def sampler(vocabulary_or_none, flip=0.0, seed=0) -> PromptSampleDataset:
    return PromptSampleDataset([class_case()], [8, 6, 4], prompts_per_image=3, kind_weights={},
                               flip_left_right=flip, intensity_augmentation=False, seed=seed,
                               vocabulary=vocabulary_or_none)


def liver_text(item: dict) -> str:
    return next(t for t, target in zip(item["prompts"], item["targets"], strict=True)
                if target.sum() == 16)  # the liver is the 2 x 4 x 2 block


def test_sampling_rewords_class_prompts_differently_across_epochs():
    words = vocabulary()
    dataset = sampler(words)
    texts = []
    for epoch in range(8):
        dataset.epoch = epoch
        item = dataset[0]
        assert "the organs" in item["prompts"]  # a prompt without a class keeps its text
        texts.append(liver_text(item))
    assert set(texts) <= set(words.phrasings("liver"))
    assert len(set(texts)) >= 3


def test_sampling_is_reproducible_by_seed_and_leaves_image_and_targets_alone():
    words = vocabulary()
    first, again = sampler(words, seed=3)[0], sampler(words, seed=3)[0]
    assert first["prompts"] == again["prompts"]
    plain = sampler(None, seed=3)[0]
    assert torch.equal(first["image"], plain["image"]) and torch.equal(first["targets"], plain["targets"])


def test_sampling_off_keeps_the_stored_prompts():
    dataset = sampler(None)
    for epoch in range(4):
        dataset.epoch = epoch
        assert sorted(dataset[0]["prompts"]) == ["segment the left kidney", "segment the liver", "the organs"]


def test_left_right_flip_swaps_the_rendered_words():
    dataset = sampler(vocabulary(), flip=1.0)
    kidney_words = set()
    for epoch in range(6):
        dataset.epoch = epoch
        item = dataset[0]
        kidney = [t for t in item["prompts"] if "renal" in t or "kidney" in t]
        assert kidney and all("right" in t and "left" not in t for t in kidney), item["prompts"]
        kidney_words.update(kidney)
    assert len(kidney_words) >= 2


TINY = ["model.in_channels=1", "model.channels=[4,8]", "model.strides=[[1,1],[2,2]]", "data.patch_size=[16,16]",
        "train.batch_images=1", "data.prompts_per_image=3", "train.val_every=100", "train.val_cases=1",
        "train.warmup_steps=1", "train.steps=4"]


def run_training(root, run_dir, monkeypatch, sampling: bool, text_dir=None,
                 memory_limit=None) -> tuple[CountingEncoder, list[int], list[list[str]]]:
    """Train TINY with a counting encoder behind a text cache (``text_dir``: its disk folder, None: none)."""
    encoder = CountingEncoder()
    caches = []

    def text_cache_for(config):
        caches.append(TextEmbeddingCache("counting", lambda: encoder, text_dir, memory_limit))
        return caches[-1]

    monkeypatch.setattr(inputs_module, "text_cache_for", text_cache_for)
    encoded_before_step, batches = [], []
    original = StandardStep.learn

    def recording_step(self, batch, step):
        encoded_before_step.append(len(encoder.calls))
        batches.append(list(batch["prompts"]))
        return original(self, batch, step)

    monkeypatch.setattr(StandardStep, "learn", recording_step)
    config = Config.load("default_2d", [*TINY, f"data.root={root}", f"data.prompt_sampling={str(sampling).lower()}"])
    Trainer(config, run_dir, progress=False).run()
    encoder.caches = caches
    return encoder, encoded_before_step, batches


def test_training_encodes_every_phrasing_before_step_one(tmp_path, monkeypatch):
    words = {"templates": TEMPLATES, "synonyms": SYNONYMS}
    root = write_dataset(tmp_path / "data", CLASS_PROMPTS, words)
    encoder, encoded_before_step, batches = run_training(root, tmp_path / "run", monkeypatch, sampling=True)
    vocabulary_ = PromptVocabulary.from_dict(words)
    expected = set(vocabulary_.phrasings("liver") + vocabulary_.phrasings("kidney_left"))
    expected |= {t.replace("left", "right") for t in expected} | {"the organs"}
    assert set(encoder.calls) == expected and len(encoder.calls) == len(expected)  # each once, all up front
    assert encoded_before_step == [len(expected)] * 4  # nothing encoded during the steps (nor in validation)
    seen = {t for batch in batches for t in batch}
    assert seen <= expected and len(seen - {"the organs", "segment the liver", "segment the left kidney"}) >= 1


def test_training_through_a_bounded_text_cache_encodes_each_text_once(tmp_path, monkeypatch):
    """With a disk cache, memory holds 2 embeddings: the whitening and every step read the rest from disk."""
    words = {"templates": TEMPLATES, "synonyms": SYNONYMS}
    root = write_dataset(tmp_path / "data", CLASS_PROMPTS, words)
    encoder, encoded_before_step, _ = run_training(root, tmp_path / "run", monkeypatch, sampling=True,
                                                   text_dir=tmp_path / "text", memory_limit=2)
    assert len(encoder.calls) == len(set(encoder.calls)) > 2  # each once, none again after eviction
    assert encoded_before_step == [len(encoder.calls)] * 4
    assert all(cache.in_memory <= 2 for cache in encoder.caches)


def test_training_without_sampling_encodes_only_the_stored_prompts(tmp_path, monkeypatch):
    root = write_dataset(tmp_path / "data", CLASS_PROMPTS, {"templates": TEMPLATES, "synonyms": SYNONYMS})
    encoder, _, batches = run_training(root, tmp_path / "run", monkeypatch, sampling=False)
    assert set(encoder.calls) == {"segment the liver", "segment the left kidney", "segment the right kidney",
                                  "the organs"}
    assert {t for batch in batches for t in batch} <= set(encoder.calls)


def test_sampling_without_a_vocabulary_file_is_refused(tmp_path):
    root = write_dataset(tmp_path / "data", [CLASS_PROMPTS[2]])
    config = Config.load("default_2d", [*TINY, f"data.root={root}", "data.prompt_sampling=true"])
    with pytest.raises(ValueError, match=r"'data.prompt_sampling' is on but .* has no prompt_vocabulary.json"):
        Trainer(config, tmp_path / "run", progress=False).run()
