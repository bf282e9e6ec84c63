"""predict over many cases with one model load: an nnU-Net folder, a .txt list or a jobs file -> OUT/{case}/,
one index per run, no stale files after a rerun, --continue after an interruption, refusals before any write."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medtextseg import __version__
from medtextseg.cli import app
from medtextseg.config import Config
from medtextseg.inference import ensemble
from medtextseg.inference.batch_predict import INDEX_FILE, predict_cases, prompt_slug, unique_slugs
from medtextseg.inference.case_inputs import requested_cases
from medtextseg.inference.predictor import Predictor
from medtextseg.models.checkpoint import save_checkpoint
from medtextseg.models.factory import create_model
from medtextseg.utils.errors import MedTextSegError

runner = CliRunner()
PROMPTS = ["the prostate gland", "The prostate gland!", "the lesion in the left PZ"]
# three cases on three different grids: sizes and oblique affines differ, so a mask on the wrong grid cannot pass
GRIDS = {"case_a": ((20, 24, 12), 0.0), "case_b": ((18, 22, 10), 12.0), "case_c": ((24, 20, 14), -20.0)}


def tilted_affine(degrees: float, shift: float) -> np.ndarray:
    angle = np.deg2rad(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-0.9, -0.8, 2.5])
    affine[:3, 3] = [40.0 + shift, 25.0, -30.0]
    return affine


def write_case(folder: Path, case: str, shape: tuple[int, int, int], degrees: float, channels: int = 2) -> list[Path]:
    """``{case}_0000.nii.gz`` ... : every voxel different (a ramp), one affine per case."""
    folder.mkdir(parents=True, exist_ok=True)
    ramp = np.arange(np.prod(shape), dtype=np.float32).reshape(shape) % 89
    paths = []
    for channel in range(channels):
        path = folder / f"{case}_{channel:04d}.nii.gz"
        nib.save(nib.Nifti1Image(ramp + 7 * channel, tilted_affine(degrees, len(case))), str(path))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny untrained 3D model of 2 channels (no training needed: the tests check files, not answers)."""
    config = Config.load("default", ["model.channels=[4,8]", "model.strides=[[1,1,1],[2,2,2]]",
                                     "data.patch_size=[16,16,8]", "model.in_channels=2"])
    torch.manual_seed(0)
    model = create_model(config.model, 384)
    return save_checkpoint(tmp_path_factory.mktemp("folder_model") / "best.pt",
                           {"model": model.state_dict(), "config": config.model_dump(), "text_dim": 384,
                            "channel_names": ["t2w", "adc"]})


@pytest.fixture
def cases_folder(tmp_path) -> Path:
    folder = tmp_path / "imagesTs"
    for case, (shape, degrees) in GRIDS.items():
        write_case(folder, case, shape, degrees)
    return folder


def predict(checkpoint: Path, source: list[str], out: Path, prompts: list[str], *extra: str):
    args = ["predict", "-m", str(checkpoint.parent), *source, "-o", str(out),
            *[a for p in prompts for a in ("-p", p)], *extra]
    return runner.invoke(app, args)


def files_below(folder: Path) -> dict[str, int]:
    """Every file below ``folder`` (hidden ones too) -> its modification time in ns."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_folder_of_cases_is_predicted_in_one_call_with_one_model_load(checkpoint, cases_folder, tmp_path,
                                                                        monkeypatch):
    loads = []

    class CountingPredictor(Predictor):
        def __init__(self, *args, **kwargs) -> None:
            loads.append(args)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(ensemble, "Predictor", CountingPredictor)  # predict_cases loads through it
    out = tmp_path / "out"
    result = predict(checkpoint, ["-i", str(cases_folder)], out, PROMPTS, "--probabilities")
    assert result.exit_code == 0, result.output
    assert len(loads) == 1
    assert "predicted 3 case(s), 9 mask(s)" in result.output
    index = json.loads((out / INDEX_FILE).read_text())
    records = index["masks"]
    assert [(r["case"], r["prompt"]) for r in records] == [(c, p) for c in GRIDS for p in PROMPTS]
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    for record in records:
        reference = nib.load(str(cases_folder / f"{record['case']}_0000.nii.gz"))
        for key in ("file", "probability"):
            written = nib.load(str(out / record[key]))
            assert written.shape == reference.shape
            assert np.array_equal(written.affine, reference.affine)  # exactly the case's grid
        mask = np.asarray(nib.load(str(out / record["file"])).dataobj)
        assert record["voxels"] == int(mask.sum())
        spacing = np.linalg.norm(reference.affine[:3, :3], axis=0)
        assert record["volume_mm3"] == pytest.approx(record["voxels"] * float(np.prod(spacing)), abs=1e-3)
        assert record["checkpoint_sha256"] == digest and record["checkpoint"] == str(checkpoint.resolve())
        assert record["model_run"] == str(checkpoint.parent.resolve())
        assert record["threshold"] == 0.5 and record["medtextseg_version"] == __version__
        assert record["inputs"] == [str(cases_folder / f"{record['case']}_{c:04d}.nii.gz") for c in range(2)]
    # names by case and prompt; two prompts of one slug stay apart
    assert sorted(p.name for p in (out / "case_b").iterdir()) == sorted([
        "case.json", "the_prostate_gland.nii.gz", "the_prostate_gland_2.nii.gz", "the_lesion_in_the_left_pz.nii.gz",
        "the_prostate_gland.probability.nii.gz", "the_prostate_gland_2.probability.nii.gz",
        "the_lesion_in_the_left_pz.probability.nii.gz"])
    assert json.loads((out / "case_b" / "case.json").read_text()) == [r for r in records if r["case"] == "case_b"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_a_rerun_with_fewer_prompts_leaves_no_stale_files(checkpoint, cases_folder, tmp_path):
    out = tmp_path / "out"
    assert predict(checkpoint, ["-i", str(cases_folder)], out, PROMPTS, "--probabilities").exit_code == 0
    result = predict(checkpoint, ["-i", str(cases_folder)], out, ["the lesion in the left PZ"])
    assert result.exit_code == 0, result.output
    for case in GRIDS:
        assert sorted(p.name for p in (out / case).iterdir()) == ["case.json", "the_lesion_in_the_left_pz.nii.gz"]
    records = json.loads((out / INDEX_FILE).read_text())["masks"]
    assert [(r["case"], r["prompt"]) for r in records] == [(c, "the lesion in the left PZ") for c in GRIDS]
    assert sorted(files_below(out)) == sorted([INDEX_FILE, *[f"{c}/{n}" for c in GRIDS for n in (
        "case.json", "the_lesion_in_the_left_pz.nii.gz")]])


def test_continue_after_an_interruption_predicts_only_the_rest(checkpoint, cases_folder, tmp_path, monkeypatch):
    out = tmp_path / "out"
    cases = requested_cases([cases_folder], None, PROMPTS[:2])
    calls = []
    original = Predictor.iter_predict

    def counting(self, image_paths, prompts, uncertainty=True):
        calls.append(Path(image_paths[0]).name)
        return original(self, image_paths, prompts, uncertainty=uncertainty)

    def interrupted(self, image_paths, prompts, uncertainty=True):
        if len(calls) == 1:
            raise KeyboardInterrupt  # Ctrl-C while the second case is predicted
        return counting(self, image_paths, prompts, uncertainty)

    monkeypatch.setattr(Predictor, "iter_predict", interrupted)
    with pytest.raises(KeyboardInterrupt):
        predict_cases(checkpoint, cases, out)
    assert [r["case"] for r in json.loads((out / INDEX_FILE).read_text())["masks"]] == ["case_a", "case_a"]
    assert not (out / "case_b").exists()
    (out / ".partial-case_b-x1y2z3").mkdir()  # what a SIGKILL mid-case leaves (no cleanup ran)
    (out / ".partial-case_b-x1y2z3" / "the_prostate_gland.nii.gz").write_bytes(b"half")
    before = files_below(out / "case_a")

    monkeypatch.setattr(Predictor, "iter_predict", counting)
    calls.clear()
    result = predict(checkpoint, ["-i", str(cases_folder)], out, PROMPTS[:2], "--continue")
    assert result.exit_code == 0, result.output
    assert "predicted 2 case(s), 4 mask(s), 1 skipped (already done)" in result.output
    assert calls == ["case_b_0000.nii.gz", "case_c_0000.nii.gz"]
    assert files_below(out / "case_a") == before  # the finished case was not written again
    records = json.loads((out / INDEX_FILE).read_text())["masks"]
    assert [(r["case"], r["prompt"]) for r in records] == [(c, p) for c in GRIDS for p in PROMPTS[:2]]
    assert all((out / r["file"]).is_file() for r in records)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # the killed run's leftover is gone

    # --continue with another prompt list, or after a case's files are removed, predicts those cases again
    (out / "case_c" / "the_prostate_gland.nii.gz").unlink()
    calls.clear()
    result = predict(checkpoint, ["-i", str(cases_folder)], out, PROMPTS[:2], "--continue")
    assert result.exit_code == 0, result.output
    assert calls == ["case_c_0000.nii.gz"]


def test_continue_after_a_killed_run_finishes_the_rest(checkpoint, cases_folder, tmp_path):
    """SIGKILL a real predict process once its index records a case; --continue predicts only the others."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "medtextseg.cli", "predict", "-m", str(checkpoint.parent), "-i",
               str(cases_folder), "-o", str(out), "-p", PROMPTS[0], "-p", PROMPTS[2]]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    deadline = time.monotonic() + 300
    while not (out / INDEX_FILE).exists():
        assert process.poll() is None and time.monotonic() < deadline, "predict ended before writing its index"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = list(dict.fromkeys(r["case"] for r in json.loads((out / INDEX_FILE).read_text())["masks"]))
    assert 1 <= len(done) < len(GRIDS), done  # killed mid-run
    before = {case: files_below(out / case) for case in done}
    result = predict(checkpoint, ["-i", str(cases_folder)], out, [PROMPTS[0], PROMPTS[2]], "--continue")
    assert result.exit_code == 0, result.output
    assert f"predicted {len(GRIDS) - len(done)} case(s)" in result.output
    assert f"{len(done)} skipped (already done)" in result.output
    assert {case: files_below(out / case) for case in done} == before
    records = json.loads((out / INDEX_FILE).read_text())["masks"]
    assert sorted((r["case"], r["prompt"]) for r in records) == sorted((c, p) for c in GRIDS
                                                                       for p in (PROMPTS[0], PROMPTS[2]))
    assert all((out / r["file"]).is_file() for r in records)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_continue_predicts_again_under_another_threshold(checkpoint, cases_folder, tmp_path):
    out = tmp_path / "out"
    assert predict(checkpoint, ["-i", str(cases_folder)], out, PROMPTS[:1]).exit_code == 0
    result = predict(checkpoint, ["-i", str(cases_folder)], out, PROMPTS[:1], "--continue", "--threshold", "0.3",
                     "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "predicted 3 case(s)" in result.output
    records = json.loads((out / INDEX_FILE).read_text())["masks"]
    assert {r["threshold"] for r in records} == {0.3}
    result = predict(checkpoint, ["-i", str(cases_folder)], out, PROMPTS[:1], "--continue", "--threshold", "0.3")
    assert "predicted 0 case(s), 0 mask(s), 3 skipped (already done)" in result.output


def test_a_case_with_too_few_channels_is_refused_in_one_line_and_nothing_is_written(checkpoint, cases_folder,
                                                                                    tmp_path):
    (cases_folder / "case_b_0001.nii.gz").unlink()
    out = tmp_path / "out"
    result = predict(checkpoint, ["-i", str(cases_folder)], out, PROMPTS)
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == [f"error: case 'case_b' ({cases_folder}): 1 channel file(s) (case_b_0000.nii.gz), the model "
                      "takes 2 (t2w, adc), one per channel, in that order"]
    assert not out.exists()


def test_a_gap_in_channel_numbers_is_refused(checkpoint, cases_folder, tmp_path):
    (cases_folder / "case_c_0001.nii.gz").rename(cases_folder / "case_c_0002.nii.gz")
    result = predict(checkpoint, ["-i", str(cases_folder)], tmp_path / "out", PROMPTS)
    assert result.exit_code == 2
    assert "error: case 'case_c'" in result.output and "channel files numbered 0000, 0002; expected 0000 to 0001" \
        in result.output
    assert not (tmp_path / "out").exists()


def test_a_case_off_its_own_grid_is_refused_before_any_case_is_written(checkpoint, cases_folder, tmp_path):
    write_case(cases_folder / "other", "case_c", (24, 20, 15), 0.0)
    (cases_folder / "other" / "case_c_0001.nii.gz").replace(cases_folder / "case_c_0001.nii.gz")
    result = predict(checkpoint, ["-i", str(cases_folder)], tmp_path / "out", PROMPTS)
    assert result.exit_code == 2
    assert f"error: case 'case_c' ({cases_folder}): {cases_folder / 'case_c_0001.nii.gz'}: not on the grid of" \
        in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["inside", "foreign"])
def test_the_output_folder_is_checked_against_every_input_before_anything_is_written(checkpoint, cases_folder,
                                                                                   tmp_path, where):
    out = cases_folder if where == "inside" else tmp_path / "out"
    if where == "foreign":
        (out / "case_b").mkdir(parents=True)
        (out / "case_b" / "notes.txt").write_text("mine")
    before = files_below(out)
    result = predict(checkpoint, ["-i", str(cases_folder)], out, PROMPTS)
    assert result.exit_code == 2
    message = (f"error: --out {out}: holds the input {cases_folder / 'case_a_0000.nii.gz'}" if where == "inside"
               else f"error: --out {out}: {out / 'case_b'} exists and was not written by predict (no case.json)")
    assert message in result.output
    assert files_below(out) == before


def test_a_jobs_file_gives_each_case_its_own_files_and_prompts(checkpoint, tmp_path):
    first = write_case(tmp_path / "data", "p1", (16, 18, 9), 5.0)
    second = write_case(tmp_path / "data", "p2", (14, 16, 8), -5.0)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join(json.dumps(job) for job in [
        {"case": "patient one", "images": [f"data/{p.name}" for p in first], "prompts": ["the gland"]},
        {"images": [str(p) for p in second]},  # no prompts: the -p ones
    ]) + "\n")
    out = tmp_path / "out"
    result = predict(checkpoint, ["--jobs", str(jobs)], out, ["the lesion", "the zone"])
    assert result.exit_code == 0, result.output
    records = json.loads((out / INDEX_FILE).read_text())["masks"]
    assert [(r["case"], r["prompt"], r["file"]) for r in records] == [
        ("patient one", "the gland", "patient one/the_gland.nii.gz"),
        ("p2", "the lesion", "p2/the_lesion.nii.gz"), ("p2", "the zone", "p2/the_zone.nii.gz")]
    assert records[0]["inputs"] == [str(p) for p in first]
    assert nib.load(str(out / records[1]["file"])).shape == (14, 16, 8)


def test_a_text_file_lists_one_case_per_line(checkpoint, tmp_path):
    first = write_case(tmp_path / "data", "p1", (16, 18, 9), 5.0)
    second = write_case(tmp_path / "data", "p2", (14, 16, 8), -5.0)
    listing = tmp_path / "cases.txt"
    listing.write_text(f"# case files, channel order\n{' '.join(f'data/{p.name}' for p in first)}\n\n"
                       + "\t".join(str(p) for p in second) + "\n")
    result = predict(checkpoint, ["-i", str(listing)], tmp_path / "out", ["the gland"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p1", "p2", INDEX_FILE]


@pytest.mark.parametrize(("jobs", "message"), [
    ([{"images": ["a_0000.nii.gz"], "prompt": ["x y"]}], "job 1: unknown key 'prompt'; a job has case, images, "
                                                         "prompts"),
    ([{"prompts": ["the gland"]}], "job 1: no 'images'"),
    ([{"images": 3}], "job 1: 'images' must be a string or a non-empty list of strings, got a number"),
    ([{"case": "../up", "images": ["a.nii.gz"]}], "job 1: the case name '../up' cannot name an output folder"),
    ([{"case": ".hidden", "images": ["a.nii.gz"]}], "job 1: the case name '.hidden' cannot name an output folder"),
    ([{"images": ["x_0000.nii.gz"]}, {"images": ["x_0000.nii.gz"]}], "job 2: case 'x' is also named by"),
    ([{"case": "Case_A", "images": ["a.nii.gz"]}, {"case": "case_a", "images": ["b.nii.gz"]}],
     "job 2: case 'case_a' is also named by"),
    ([{"images": ["a.nii.gz"], "prompts": [" "]}], "job 1 prompt 1: the prompt is empty"),
    ({"images": ["a.nii.gz"]}, "expected a list of jobs, got an object"),
])
def test_a_bad_jobs_file_is_refused_naming_the_job(tmp_path, jobs, message):
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps(jobs))
    with pytest.raises(MedTextSegError) as caught:
        requested_cases([], path, ["the gland"])
    assert message in str(caught.value)


def test_single_case_inputs_and_dicom_folders_keep_the_single_case_mode(tmp_path):
    files = write_case(tmp_path / "one", "c", (8, 8, 4), 0.0)
    assert requested_cases(files, None, ["the gland"]) is None  # channel files of one case, as before
    dicom = tmp_path / "series"
    dicom.mkdir()
    (dicom / "IM0001.dcm").write_bytes(b"")
    assert requested_cases([dicom], None, ["the gland"]) is None  # a folder without {case}_0000 files: DICOM
    with pytest.raises(MedTextSegError, match="a folder of cases is given alone"):
        requested_cases([tmp_path / "one", files[0]], None, ["the gland"])
    with pytest.raises(MedTextSegError, match="give -i or --jobs, not both"):
        requested_cases(files, tmp_path / "jobs.json", ["the gland"])
    with pytest.raises(MedTextSegError, match="has no prompt: pass -p"):
        requested_cases([tmp_path / "one"], None, [])


def test_continue_and_device_errors_are_one_line(checkpoint, cases_folder, tmp_path):
    single = ["-i", str(cases_folder / "case_a_0000.nii.gz"), "-i", str(cases_folder / "case_a_0001.nii.gz")]
    result = predict(checkpoint, single, tmp_path / "out", PROMPTS, "--continue")
    assert result.exit_code == 2 and "error: --continue applies to many cases" in result.output
    result = predict(checkpoint, ["-i", str(cases_folder)], tmp_path / "out", PROMPTS, "--device", "gpu0")
    assert result.exit_code == 2 and "error: device 'gpu0': not a device name; use cpu, cuda, cuda:N or mps" \
        in result.output
    result = predict(checkpoint, single, tmp_path / "out", PROMPTS, "--threshold", "1.5")
    assert result.exit_code == 2 and "error: threshold must be between 0 and 1 (exclusive), got 1.5" in result.output
    assert not (tmp_path / "out").exists()


def test_slugs_are_stable_safe_and_unique_within_a_case():
    assert prompt_slug("the lesion in the LEFT PZ") == prompt_slug("the lesion in the LEFT PZ") \
        == "the_lesion_in_the_left_pz"
    assert prompt_slug("../../etc/passwd") == "etc_passwd"
    long_a, long_b = "the lesion " * 10 + "left", "the lesion " * 10 + "right"
    assert len(prompt_slug(long_a)) <= 60 and prompt_slug(long_a) != prompt_slug(long_b)
    assert unique_slugs(["A b", "a-b", "a b"]) == ["a_b", "a_b_2", "a_b_3"]
