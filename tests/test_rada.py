"""RADA: sparse slice labels, label propagation, the dynamic head, and three-network co-training that learns."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch

from medtextseg.config import Config
from medtextseg.data.label_propagation import propagate_slice_label, slice_distance
from medtextseg.data.sparse_dataset import SparseSupervision
from medtextseg.data.sparse_labels import annotated_slices, sparsify_dataset, sparsify_label
from medtextseg.training.cotraining import alpha_at, beta_at, entropy_threshold
from medtextseg.utils.errors import MedTextSegError

PROMPT = "segment the prostate"
TINY = ["model.channels=[4,8,16]", "model.strides=[[1,1,1],[2,2,1],[2,2,2]]", "cotraining.uncertainty_passes=1",
        "cotraining.labelled_per_batch=2", "cotraining.unlabelled_per_batch=1", "train.val_cases=1",
        f"cotraining.prompt={PROMPT}", "model.norm=instance"]


@pytest.fixture(scope="module")
def sparse_pair(tmp_path_factory):
    from medtextseg.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("rada")
    dense = make_synthetic_dataset(root / "dense", num_cases=12, spatial_dims=3, seed=4)
    sparse = root / "sparse"
    summary = sparsify_dataset(dense, sparse, fraction=0.25, planes="SCA", rule="largest", seed=0)
    return dense, sparse, summary


# ------------------------------------------------------------------ sparse labels
def test_sparsify_label_keeps_one_slice_per_plane_and_annotated_slices_finds_them():
    label = np.zeros((10, 12, 8), dtype=np.int64)
    label[3:7, 2:9, 2:6] = 1
    label[5, 5, 4] = 2
    sparse, kept = sparsify_label(label, 9, "SCA", "largest")
    assert set(kept) == {"sagittal", "coronal", "axial"}
    found = annotated_slices(sparse == 9)
    assert found == {0: [kept["sagittal"]], 1: [kept["coronal"]], 2: [kept["axial"]]}
    for axis, index in zip((0, 1, 2), (kept["sagittal"], kept["coronal"], kept["axial"]), strict=True):
        assert np.array_equal(np.take(sparse, index, axis), np.take(label, index, axis))
    assert np.count_nonzero(sparse != 9) == 12 * 8 + 10 * 8 + 10 * 12 - 8 - 12 - 10 + 1
    assert annotated_slices(np.zeros((3, 4, 5), bool)) == {0: [0, 1, 2], 1: [0, 1, 2, 3], 2: [0, 1, 2, 3, 4]}
    assert sparsify_label(label, 9, "A", "middle")[1] == {"axial": 4}


def test_sparsify_dataset_layout_geometry_and_orientation(sparse_pair):
    from medtextseg.data.dataset import prepare_case
    from medtextseg.data.layout import load_dataset

    dense, sparse, summary = sparse_pair
    meta = json.loads((sparse / "dataset.json").read_text())
    ignore = meta["labels"]["ignore"]
    assert "ignore" not in json.loads((dense / "dataset.json").read_text())["labels"]  # the source is untouched
    assert ignore == max(v for k, v in meta["labels"].items() if k != "ignore") + 1
    layout = load_dataset(sparse)
    train = layout.splits["train"]
    labelled = [c for c in train if isinstance(summary[c], dict)]
    assert len(labelled) == max(1, round(0.25 * len(train)))
    assert all(summary[c] == "unlabelled" for c in train if c not in labelled)
    assert all(summary[c] == "dense" for c in layout.splits["val"] + layout.splits["test"])
    for case in labelled[:1] + [layout.splits["test"][0]]:
        source, out = nib.load(str(dense / "labelsTr" / f"{case}.nii.gz")), nib.load(str(sparse / "labelsTr" /
                                                                                          f"{case}.nii.gz"))
        assert out.shape == source.shape and np.allclose(out.affine, source.affine)
    # the slices were chosen in RAS order: what the trainer sees after reorientation is exactly them
    prepared = prepare_case(layout.cases[labelled[0]], None, 3)
    found = annotated_slices((prepared.label == ignore).numpy())
    kept = summary[labelled[0]]
    assert found == {0: [kept["sagittal"]], 1: [kept["coronal"]], 2: [kept["axial"]]}
    dense_prepared = prepare_case(load_dataset(dense).cases[labelled[0]], None, 3)
    annotated = prepared.label != ignore
    assert torch.equal(prepared.label[annotated], dense_prepared.label[annotated])
    with pytest.raises(MedTextSegError, match="already exists"):
        sparsify_dataset(dense, sparse)
    with pytest.raises(MedTextSegError, match="already sparse"):
        sparsify_dataset(sparse, sparse.parent / "again")


def test_standard_trainer_refuses_sparse_labels(sparse_pair, tmp_path):
    from medtextseg.training.engine import train

    config = Config.load("default", [f"data.root={sparse_pair[1]}", "train.steps=1"])
    with pytest.raises(MedTextSegError, match="co-training preset"):
        train(config, tmp_path / "run", progress=False)


# ------------------------------------------------------------------ propagation and weights
def test_propagation_follows_the_anatomy_better_than_copying_the_slice():
    from medtextseg.data.synthetic import make_case

    case = make_case(np.random.default_rng(3), shape=(48, 48, 16))
    truth = case.label > 0

    def dice(a, b):
        return 2 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)

    for axis in (0, 1):
        index = int(np.argmax(truth.sum(axis=tuple(a for a in range(3) if a != axis))))
        label_slice = np.take(truth, index, axis)
        propagated = propagate_slice_label(case.image[0], label_slice, axis, index)
        copied = np.broadcast_to(np.expand_dims(label_slice, axis), truth.shape)
        assert np.array_equal(np.take(propagated, index, axis), label_slice)
        assert dice(propagated, truth) > dice(copied, truth) + 0.1
        assert dice(propagated, truth) > 0.7
    assert slice_distance((3, 4, 2), 1, 1)[0, :, 0].tolist() == [1, 0, 1, 2]


def test_sparse_supervision_weights_follow_alpha_and_the_closest_plane():
    labels = torch.zeros(2, 4, 4, 4, dtype=torch.bool)
    labels[0, :, :, 1] = True   # plane 0 says "foreground" everywhere on its side
    distance = torch.stack([torch.from_numpy(slice_distance((4, 4, 4), 2, 1)).float(),
                            torch.from_numpy(slice_distance((4, 4, 4), 0, 3)).float()])
    supervision = SparseSupervision(labels, distance, dense=False)
    target, weight = supervision.target_and_weight(0.5)
    assert weight[0, 0, 1] == 1 and weight[3, 0, 0] == 1  # on an annotated slice
    assert math.isclose(float(weight[1, 2, 3]), max(0.5 ** 2, 0.5 ** 2))
    assert math.isclose(float(weight[2, 0, 0]), 0.5)  # 1 slice from plane 1, 1 from plane 0
    assert target[0, 0, 1] == 1 and target[3, 0, 0] == 0  # the plane with the larger weight says what it is
    _, at_zero = supervision.target_and_weight(0.0)
    assert set(at_zero.unique().tolist()) == {0.0, 1.0}  # alpha 0: only the annotated slices count
    dense_target, dense_weight = SparseSupervision(labels[:1], torch.zeros(1, 4, 4, 4), dense=True
                                                   ).target_and_weight(0.1)
    assert torch.equal(dense_target, labels[0].float()) and bool((dense_weight == 1).all())
    # a patch's targets and weights are the volume's, cropped (the trainer computes them for the patch only)
    window = (slice(1, 3), slice(0, 4), slice(0, 2))
    patch_target, patch_weight = supervision.crop(window).target_and_weight(0.5)
    assert torch.equal(patch_target, target[window]) and torch.equal(patch_weight, weight[window])
    assert supervision.foreground_voxels.tolist() == [[i, j, 1] for i in range(4) for j in range(4)]


def test_cotraining_patches_cut_and_flip_targets_and_weights_with_the_image(tmp_path):
    """The co-training patches come from the standard samples' pipeline: padded where the volume is smaller,
    cut around the labelled foreground, mirrored left-right with the prompt's sides; each patch voxel's target and
    weight are those of the image voxel it shows, and a padded voxel weighs 0."""
    from types import SimpleNamespace

    from medtextseg.config import CoTrainingConfig, DataConfig
    from medtextseg.data.dataset import PreparedCase
    from medtextseg.data.sparse_dataset import SparseCases

    shape = (12, 10, 6)
    source = torch.arange(1, math.prod(shape) + 1, dtype=torch.float32).reshape(shape)  # each voxel its own value
    label = torch.full(shape, 2)  # 2 = ignore
    label[4], label[:, 5] = 0, 0  # one sagittal and one coronal slice annotated
    label[4, 3:7, 1:4], label[2:9, 5, 2:5] = 1, 1
    layout = SimpleNamespace(labels={"background": 0, "lesion": 1, "ignore": 2}, root=tmp_path)
    config = CoTrainingConfig(prompt="segment the left lesion", views=["SC"], propagation=False,
                              labelled_per_batch=24)
    data = DataConfig(patch_size=[8, 8, 8], flip_left_right=0.5, intensity_augmentation=False)  # axis 2 padded
    cases = SparseCases(layout, [PreparedCase("c", source[None], label, {}, [])], ("segment the left lesion", (1,)),
                        config, data)
    whole_target, whole_weight = cases.labelled[0][1][0].target_and_weight(0.5)
    images, targets, weights, prompts = cases.labelled_batch(0, 0.5, np.random.default_rng(0))
    assert images.shape == targets.shape == weights.shape == (24, 1, 8, 8, 8)
    mirrored = []
    for image, target, weight, prompt in zip(images[:, 0], targets[:, 0], weights[:, 0], prompts, strict=True):
        shown = image.long() - 1  # the volume voxel each patch voxel shows; -1 where padded
        inside = shown >= 0
        assert bool((weight[~inside] == 0).all()) and bool((target[~inside] == 0).all())
        assert torch.equal(target[inside], whole_target.flatten()[shown[inside]])
        assert torch.equal(weight[inside], whole_weight.flatten()[shown[inside]])
        column = shown[:, 0, 2]  # along axis 0 (left-right): increasing, or decreasing when mirrored
        mirrored.append(bool(column[1] < column[0]))
        assert prompt == ("segment the right lesion" if mirrored[-1] else "segment the left lesion")
        assert bool((weight[inside] > 0).any())  # every patch meets an annotated slice here
    assert 0 < sum(mirrored) < len(mirrored)
    assert int((targets.flatten(1) > 0).any(1).sum()) >= 8  # most patches are cut around the labelled lesion


def test_schedules():
    config = Config.load("rada", ["train.steps=6000"])
    assert alpha_at(0, config) == pytest.approx(0.97)
    assert alpha_at(999, config) == pytest.approx(0.97)  # held for alpha_every steps
    assert alpha_at(3000, config) == pytest.approx(0.485)
    assert alpha_at(6000, config) == pytest.approx(0.0, abs=1e-12)
    assert beta_at(0, config) == pytest.approx(0.1 * math.exp(-5))
    assert beta_at(6000, config) == pytest.approx(0.1)
    assert beta_at(149, config) == beta_at(0, config)
    assert entropy_threshold(0, config) < entropy_threshold(6000, config) == pytest.approx(math.log(2))


# ------------------------------------------------------------------ model pieces
def test_dynamic_head_reads_the_prompt_and_the_region_prototype():
    from medtextseg.models.factory import create_model
    from medtextseg.text.batch import TextBatch

    config = Config.load("rada", TINY + ["model.region_dim=6"]).model
    torch.manual_seed(0)
    model = create_model(config, 8)
    assert len(model.members) == 3
    member = model.members[0].eval()
    with pytest.raises(ValueError, match="prototype"):
        member.region_fusion.set_prototype(torch.ones(5))
    image = torch.randn(1, 3, 16, 16, 8)
    texts = [TextBatch(torch.nn.functional.normalize(torch.randn(1, 8), dim=1), torch.zeros(1, 1, 8),
                       torch.ones(1, 1, dtype=torch.bool)) for _ in range(2)]
    for parameter in member.dynamic_bias.parameters():  # make the head's reading visible at initialisation
        torch.nn.init.normal_(parameter, std=0.5)
    with torch.no_grad():
        first, second = (member(image, t).logits for t in texts)
        member.region_fusion.set_prototype(torch.randn(6))
        regioned = member(image, texts[0]).logits
    assert not torch.allclose(first, second) and not torch.allclose(first, regioned)
    # the ensemble: the mean probability of its members, or one member
    model.eval()
    with torch.no_grad():
        mean = torch.stack([torch.sigmoid(m(image, texts[0]).logits) for m in model.members]).mean(0)
        assert torch.allclose(torch.sigmoid(model(image, texts[0]).logits), mean, atol=1e-5)
        assert torch.allclose(model(image, texts[0], network=1).logits, model.members[1](image, texts[0]).logits)
        with pytest.raises(ValueError, match="networks 0..2"):
            model(image, texts[0], network=3)


def test_config_checks():
    with pytest.raises(MedTextSegError, match="one view per network"):
        Config.load("rada", ["cotraining.views=[SC, AS]"])
    with pytest.raises(MedTextSegError, match="cotraining.views"):
        Config.load("rada", ["cotraining.views=[SX, AS, AC]"])
    with pytest.raises(MedTextSegError, match="cotraining.prompt_views: planes 'AX'"):
        Config.load("rada", ["cotraining.prompt_views=[A, AX, S]"])
    with pytest.raises(MedTextSegError, match="prompt_views has 2 entries for 3 views"):
        Config.load("rada", ["cotraining.prompt_views=[A, S]"])
    with pytest.raises(MedTextSegError, match="dynamic_head"):
        Config.load("default", ["model.region_dim=8"])
    with pytest.raises(MedTextSegError, match="inference.network"):
        Config.load("rada", ["inference.network=3"])


# ------------------------------------------------------------------ co-training
def _held_out_dice(run, data) -> float:
    from medtextseg.data.layout import load_dataset
    from medtextseg.inference.sliding import prompt_probabilities
    from medtextseg.models.factory import create_model
    from medtextseg.models.trained import load_checkpoint
    from medtextseg.training.inputs import prepare_cases, text_cache_for

    state = load_checkpoint(run)
    config = Config.from_dict(state["config"])
    model = create_model(config.model, int(state["text_dim"]))
    model.load_state_dict(state["model"])
    model.eval()
    layout = load_dataset(data)
    text = text_cache_for(config)
    scores = []
    for case in prepare_cases(layout, layout.splits["test"], config, False, ""):
        prediction = prompt_probabilities(model, case.image, text([PROMPT]), config.data.patch_size)[0] > 0.5
        truth = case.label > 0
        scores.append(2 * float((prediction & truth).sum()) / max(float(prediction.sum() + truth.sum()), 1.0))
    return float(np.mean(scores))


def test_three_view_cotraining_learns_from_three_slices_and_resumes(sparse_pair, tmp_path):
    from medtextseg.training.engine import train

    _, sparse, _ = sparse_pair
    common = [f"data.root={sparse}", *TINY, "model.region_dim=0", "train.val_every=5", "train.lr=0.05",
              "cotraining.beta_ramp_steps=20", "cotraining.beta_ramp_every=1", "cotraining.alpha_every=5"]
    untrained = tmp_path / "untrained"
    train(Config.load("rada", common + ["train.steps=1", "train.lr=1e-9"]), untrained, progress=False)
    run = tmp_path / "run"
    with pytest.raises(MedTextSegError, match="cotraining.prompt"):
        train(Config.load("rada", [*common, "cotraining.prompt=''"]), tmp_path / "no_prompt", progress=False)
    train(Config.load("rada", common + ["train.steps=10"]), run, progress=False)
    # a stopped run continues from last.pt to a longer budget (the saved config plus the new step count)
    resumed = Config.load(run / "config.yaml", ["train.steps=30"])
    train(resumed, run, resume=True, progress=False)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert log[0]["labelled_volumes"] >= 1 and log[0]["unlabelled_volumes"] >= 1
    assert [r["step"] for r in log if "val_dice" in r] == [5, 10, 15, 20, 25, 30]
    assert any("net2.pseudo" in r for r in log)  # cross pseudo supervision ran
    trained, baseline = _held_out_dice(run / "best.pt", sparse), _held_out_dice(untrained / "best.pt", sparse)
    assert trained > 0.5 and trained > baseline + 0.3, (trained, baseline)


def test_rada_presets_train_on_the_loss_terms_of_their_config(sparse_pair, tmp_path):
    """The co-training step's supervised loss is ``loss`` (RADA states (Dice + BCE) / 2 in YAML) and its
    pseudo-label loss ``cotraining.pseudo_loss``: changing a term changes the loss a step trains on."""
    from medtextseg.training.engine import train

    for preset in ("rada", "rada_text", "rada_single"):
        config = Config.load(preset)
        assert config.loss.terms == {"dice": 0.5, "bce": 0.5} and config.cotraining.pseudo_loss.terms == {"bce": 1.0}
    _, sparse, _ = sparse_pair
    common = [f"data.root={sparse}", *TINY, "train.steps=1", "train.val_every=1"]
    first = {}
    for name, terms in (("preset", []), ("dice", ["loss.terms.dice=1.0"]), ("tversky", ["loss.terms.tversky=1.0"])):
        run = train(Config.load("rada_single", common + terms), tmp_path / name, progress=False)
        log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        first[name] = next(r for r in log if "net0.supervised" in r)
    preset, dice, tversky = first["preset"], first["dice"], first["tversky"]
    assert preset["net0.supervised"] == pytest.approx(0.5 * preset["net0.dice"] + 0.5 * preset["net0.bce"])
    assert dice["net0.dice"] == pytest.approx(preset["net0.dice"])  # the same first batch and network
    assert dice["net0.supervised"] == pytest.approx(preset["net0.supervised"] + 0.5 * preset["net0.dice"])
    assert "net0.tversky" not in preset and tversky["net0.tversky"] > 0
    assert tversky["net0.supervised"] == pytest.approx(preset["net0.supervised"] + tversky["net0.tversky"])


def test_region_prototypes_come_from_the_annotated_slices(sparse_pair, tmp_path):
    from medtextseg.models.trained import load_checkpoint
    from medtextseg.training.engine import train

    _, sparse, _ = sparse_pair
    run = tmp_path / "rada"
    train(Config.load("rada", [f"data.root={sparse}", *TINY, "train.steps=1", "train.val_every=1"]), run,
          progress=False)
    state = load_checkpoint(run / "last.pt")
    prototypes = [state["model"][f"members.{k}.region_fusion.prototype"] for k in range(3)]
    assert all(p.shape == (1280,) and p.abs().sum() > 0 for p in prototypes)
    assert not torch.allclose(prototypes[0], prototypes[1])  # each network's own planes
    start = json.loads((run / "log.jsonl").read_text().splitlines()[0])
    assert start["region_slices"] == [2 * start["labelled_volumes"]] * 3
    # RADA's Fig. 5: the visual prompt's planes set apart from the supervision's (here one plane, then all three)
    apart = tmp_path / "apart"
    train(Config.load("rada", [f"data.root={sparse}", *TINY, "train.steps=1", "train.val_every=1",
                               "cotraining.prompt_views=[A, AS, SCA]"]), apart, progress=False)
    start = json.loads((apart / "log.jsonl").read_text().splitlines()[0])
    assert start["region_slices"] == [n * start["labelled_volumes"] for n in (1, 2, 3)]
    assert torch.allclose(load_checkpoint(apart / "last.pt")["model"]["members.1.region_fusion.prototype"],
                          prototypes[1])  # AS: network 1's own view, the same slices as before
    # SGTC scores one network of the last iteration: evaluate takes the checkpoint file and inference.network
    from typer.testing import CliRunner

    from medtextseg.cli import app

    scores = {}
    for name, settings in (("mean", []), ("network 1", ["--set", "inference.network=1"])):
        out = tmp_path / name.replace(" ", "_")
        result = CliRunner().invoke(app, ["evaluate", "-m", str(run / "last.pt"), "-d", str(sparse), "-o", str(out),
                                          "--no-save-masks", *settings])
        assert result.exit_code == 0, result.output
        scores[name] = [r["dice"] for r in json.loads((out / "metrics_per_prompt.json").read_text())]
    assert len(scores["mean"]) == len(scores["network 1"]) > 0 and scores["mean"] != scores["network 1"]
    refused = CliRunner().invoke(app, ["evaluate", "-m", str(run), "-d", str(sparse), "-o", str(tmp_path / "no"),
                                       "--set", "model.networks=1"])
    assert refused.exit_code == 2 and "prediction takes inference.* settings only" in refused.output


def test_pseudo_labels_keep_only_certain_voxels():
    from medtextseg.models.output import ModelOutput
    from medtextseg.text.batch import TextBatch
    from medtextseg.training.cotraining import certain_pseudo_labels

    class Sure(torch.nn.Module):  # confident where the image is bright, undecided (logit 0) elsewhere
        def forward(self, image, text):
            return ModelOutput(logits=torch.where(image[:, :1] > 0.5, 8.0, 0.0))

    image = torch.zeros(2, 1, 4, 4, 2)
    image[:, :, :2] = 1.0
    text = TextBatch(torch.zeros(2, 3), torch.zeros(2, 1, 3), torch.ones(2, 1, dtype=torch.bool))
    pseudo, mask = certain_pseudo_labels(Sure(), image, text, passes=3, std=0.1, clip=0.2, threshold=0.6)
    assert bool((pseudo[:, :, :2] == 1).all()) and bool((pseudo[:, :, 2:] == 0).all())
    assert bool((mask[:, :, :2] == 1).all()) and bool((mask[:, :, 2:] == 0).all())  # entropy ln 2 > 0.6 there


def test_cotraining_trains_with_the_optimiser_and_schedule_of_train(sparse_pair, tmp_path):
    """The co-trainer builds each network's optimiser from train.optimizer and sets the rate train.schedule gives
    (RADA's presets state SGD and the x0.1 step decay); configs saved with the former cotraining.momentum / lr_step /
    lr_gamma load as that SGD and step decay."""
    import warnings

    from medtextseg.training.engine import Trainer

    _, sparse, _ = sparse_pair
    common = [f"data.root={sparse}", *TINY, "model.region_dim=0", "train.steps=4", "train.val_every=4"]
    trainer = Trainer(Config.load("rada", [*common, "train.optimizer=adam", "train.schedule=step",
                                           "train.step_every=2", "train.step_gamma=0.5"]), tmp_path / "adam",
                      progress=False)
    trainer.run()
    assert {type(o).__name__ for o in trainer.policy.optimizers} == {"Adam"}
    assert trainer.policy.learning_rate() == pytest.approx(0.01 * 0.5)  # step 3: one halving after step 2

    saved = Config.load("rada", common).model_dump()
    saved["train"] |= {"optimizer": "adamw", "schedule": "cosine", "warmup_steps": 50, "nesterov": True}
    saved["cotraining"] |= {"momentum": 0.8, "lr_step": 7, "lr_gamma": 0.5}
    with pytest.warns(FutureWarning, match="train.optimizer: sgd"):
        migrated = Config.from_dict(saved)
    train = migrated.train
    assert (train.optimizer, train.momentum, train.nesterov, train.schedule, train.step_every, train.step_gamma,
            train.warmup_steps) == ("sgd", 0.8, False, "step", 7, 0.5, 0)
    standard = Config.load("default").model_dump()
    standard["cotraining"] |= {"momentum": 0.9, "lr_step": 2500, "lr_gamma": 0.1}  # every saved config held them
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Config.from_dict(standard).train == Config.load("default").train



@pytest.mark.parametrize(("override", "message"), [
    ("data.plan=true", "data.plan must be false and data.spacing null"),
    ("data.spacing=[1,1,1]", "data.plan must be false and data.spacing null"),
    ("model.coordinates=true", r"needs model.coordinates=false")])
def test_a_cotraining_config_that_would_move_the_annotated_slices_is_refused_at_load(override, message):
    with pytest.raises(MedTextSegError, match=message):
        Config.load("rada", [override])
