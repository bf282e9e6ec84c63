"""The contract every registered converter obeys, checked on a tiny source of its layout (scikit-learn's estimator
checks, for converters): run from the command line with ``--option`` strings, it writes a dataset that loads and
verifies, lists what it skipped and why, rewrites nothing on a second run, redoes only a lost case, rewrites every case
with ``--overwrite``, refuses an unknown option in one line without writing anything, and explains in one line a
folder that holds none of its layout.

The sources are the converters' own test fixtures (``test_convert_*.py``); a converter registered without one here
fails :func:`test_every_registered_converter_has_a_contract_source`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from converter_cli import cli_convert, printed
from medtextseg.converters import registry
from medtextseg.converters.writer import RECORD_DIR
from medtextseg.data.layout import load_dataset, verify_dataset
from medtextseg.utils.errors import MedTextSegError
from test_biomedsegfm import make_challenge
from test_convert_aal import MIMIC_STRUCTURES, make_mimic_templates
from test_convert_brain_tumour_kaggle import make_figshare
from test_convert_brats import make_source as make_brats
from test_convert_chaos import make_release as make_chaos
from test_convert_duke_breast import make_download as make_duke
from test_convert_kits19 import make_repository as make_kits19
from test_convert_la2018 import make_release as make_la2018
from test_convert_lits import make_release as make_lits
from test_convert_nnunet import make_msd_source, make_nnunet_source
from test_convert_picai import make_source as make_picai


@dataclass(frozen=True)
class Source:
    """How to make a tiny source of one converter (``make(root) -> src``) and convert it.

    ``options``: ``--option`` values (``make`` may return more, e.g. a folder it made, as ``(src, options)``);
    ``not_this_layout``: the one-line error, a regular expression, for a folder of other files (given
    ``required`` options only).
    """

    make: Callable[[Path], Any]
    not_this_layout: str
    options: dict[str, Any] = field(default_factory=dict)
    required: dict[str, Any] = field(default_factory=dict)
    spatial_dims: int = 3


def _picai(root: Path) -> tuple[Path, dict[str, Any]]:
    src, labels = make_picai(root)
    return src, {"labels": labels, "large_ml": "0.01"}


SOURCES = {
    "aal": Source(make_mimic_templates, r"aal.nii.txt: file not found; install the Debian package mricron-data",
                  {"structures": MIMIC_STRUCTURES, "num_cases": 3, "spacing": 4, "margin_mm": 4}),
    "biomedsegfm": Source(make_challenge, r"no CVPR25_TextSegFMData_with_class.json .* here or in a parent folder",
                          {"dataset": "CT_AbdTumor"}),
    "brain_tumour_kaggle": Source(make_figshare, r"no brain tumour slices: neither figshare .mat files nor images",
                                  spatial_dims=2),
    "brats": Source(make_brats, r"no BraTS file found \(expected BraTS2021_00000/BraTS2021_00000_t1"),
    "chaos": Source(make_chaos, r"no CHAOS MR folder", {"modality": "T1DUAL"}, required={"modality": "T1DUAL"}),
    "duke_breast": Source(make_duke, r"no Breast_MRI_NNN patient folders"),
    "kits19": Source(make_kits19, r"no KiTS19 case folder found \(expected data/case_00000/imaging"),
    "la2018": Source(make_la2018, r"no LA2018 case folder found \(expected 'Training Set/\{CASE_ID\}/lgemri.nrrd'"),
    "lits": Source(make_lits, r"no LiTS file found \(expected 'Training Batch 1/volume-0.nii'"),
    "msd": Source(make_msd_source, r"dataset.json: file not found"),
    "nnunet": Source(make_nnunet_source, r"dataset.json: file not found"),
    "picai": Source(_picai, r"no picai_labels folder found .* pass --option labels=PATH"),
}
NAMES = sorted(SOURCES)


@dataclass
class Converted:
    """One converter's first run: its source, options, output folder, what it printed and what it wrote."""

    name: str
    src: Path
    dst: Path
    options: dict[str, Any]
    output: str
    summary: dict[str, Any]  # conversion_summary.json
    files: dict[str, bytes]  # relative path -> content, conversion_summary.json left out

    def again(self, **extra: Any):
        return registry.get_converter(self.name)(self.src, self.dst, spatial_dims=SOURCES[self.name].spatial_dims,
                                                 **{**self.options, **extra})


def _files(dst: Path) -> dict[str, bytes]:
    return {str(p.relative_to(dst)): p.read_bytes() for p in sorted(dst.rglob("*"))
            if p.is_file() and p.name != "conversion_summary.json"}


def _stamps(dst: Path) -> dict[str, int]:
    return {str(p.relative_to(dst)): p.stat().st_mtime_ns for folder in ("imagesTr", "labelsTr", RECORD_DIR)
            for p in sorted((dst / folder).glob("*"))}


def _summary(dst: Path) -> dict[str, Any]:
    return json.loads((dst / "conversion_summary.json").read_text())


@pytest.fixture(scope="module", params=NAMES)
def converted(request, tmp_path_factory) -> Converted:
    source = SOURCES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    made = source.make(root)
    src, options = made if isinstance(made, tuple) else (made, {})
    options = {**source.options, **{key: str(value) for key, value in options.items()}}
    dst = root / "out"
    result = cli_convert(request.param, src, dst, "--spatial-dims", str(source.spatial_dims), **options)
    assert result.exit_code == 0, result.output
    return Converted(request.param, src, dst, options, printed(result), _summary(dst), _files(dst))


def test_every_registered_converter_has_a_contract_source():
    assert registry.broken_modules() == {}
    assert sorted(registry.converters()) == NAMES


def test_the_dataset_loads_verifies_and_its_summary_is_printed_and_saved(converted):
    layout = load_dataset(converted.dst)
    verify_dataset(layout)
    summary = converted.summary
    assert summary["converted"] and sorted(summary["converted"]) == sorted(layout.cases)
    assert summary["already_done"] == []
    assert all(reason and "\n" not in reason for reason in summary["skipped"].values())
    assert f"{len(layout.cases)} cases in {converted.dst} ({len(layout.cases)} converted, 0 already done)" in \
        converted.output
    assert (f"; {len(summary['skipped'])} skipped" in converted.output) == bool(summary["skipped"])
    in_splits = [case for cases in layout.splits.values() for case in cases]
    assert sorted(in_splits) == sorted(layout.cases)  # every case in exactly one split
    meta = json.loads((converted.dst / "dataset.json").read_text())
    assert meta["numTraining"] == len(layout.cases)
    assert meta["medtextseg"]["spatial_dims"] == SOURCES[converted.name].spatial_dims
    for case in layout.cases.values():
        assert case.prompts, case.case


def test_a_second_run_rewrites_nothing(converted):
    first = converted.summary
    stamps = _stamps(converted.dst)
    again = converted.again()
    assert again.converted == [] and sorted(again.already_done) == sorted(first["converted"])
    assert again.skipped == first["skipped"]
    assert _stamps(converted.dst) == stamps
    assert _files(converted.dst) == converted.files  # prompts.jsonl, splits.json, dataset.json: the same bytes


def test_a_lost_case_is_redone_alone_and_overwrite_redoes_every_case(converted):
    cases = sorted(converted.summary["converted"])
    lost = cases[len(cases) // 2]
    (converted.dst / RECORD_DIR / f"{lost}.json").unlink()  # as if killed while writing it
    resumed = converted.again()
    assert resumed.converted == [lost] and sorted(resumed.already_done) == [c for c in cases if c != lost]
    assert _files(converted.dst) == converted.files
    assert sorted(converted.again(overwrite=True).converted) == cases
    assert _files(converted.dst) == converted.files


@pytest.mark.parametrize("name", NAMES)
def test_an_unknown_option_is_refused_in_one_line_and_nothing_is_written(name, tmp_path):
    source = SOURCES[name]
    made = source.make(tmp_path)
    src = made[0] if isinstance(made, tuple) else made
    dst = tmp_path / "out"
    result = cli_convert(name, src, dst, "--spatial-dims", str(source.spatial_dims), colour="red", **source.required)
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert f"--option colour: unknown option; the {name} converter takes " in printed(result)
    assert not dst.exists()


@pytest.mark.parametrize("name", NAMES)
def test_a_folder_of_other_files_is_explained_in_one_line(name, tmp_path):
    src = tmp_path / "downloads"
    (src / "data").mkdir(parents=True)
    (src / "case").mkdir()
    (src / "case" / "t1.nii.gz").write_bytes(b"\x1f\x8b not a volume")
    np.save(src / "other.npy", np.zeros(3))
    (src / "notes.txt").write_text("not a dataset")
    source = SOURCES[name]
    with pytest.raises(MedTextSegError, match=source.not_this_layout) as error:
        registry.get_converter(name)(src, tmp_path / "out", spatial_dims=source.spatial_dims, **source.required)
    assert "\n" not in str(error.value)
