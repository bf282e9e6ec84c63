"""Fuzzing with a fixed seed and a bounded count: random prompts (any Unicode: combining marks, right-to-left
scripts, emoji, control characters, lone surrogates; 0 to 400 characters) and random NIfTI headers (qform and
sform codes, voxel sizes of 0, negative, NaN or infinite, dimensions, data types, data sizes). Each input works
or ends in one printable line (``MedTextSegError``): never a traceback, and ``predict`` never leaves a partial
output."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medtextseg.cli import app
from medtextseg.config import Config
from medtextseg.data.dimensions import check_image_dims, file_shape
from medtextseg.data.io import read_array, read_geometry
from medtextseg.data.layout import CaseRecord, verify_case
from medtextseg.data.prompts import MAX_PROMPT_CHARACTERS, validate_prompt
from medtextseg.training.engine import train
from medtextseg.utils.errors import MedTextSegError, printable

SEED = 19
runner = CliRunner()
TINY_2D = ["model.channels=[4,8,16]", "model.strides=[[1,1],[2,2],[2,2]]", "data.patch_size=[48,48]",
           "train.steps=1", "train.val_cases=1", "train.warmup_steps=1"]
PREDICT_OUTPUTS = ["mask_00.nii.gz", "prompts.json"]

# character pools a prompt is drawn from: mostly words, with every kind of trouble mixed in
POOLS = {
    "latin": "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ -,.'()/0123456789",
    "combining": "".join(map(chr, range(0x300, 0x370))),  # accents that attach to the letter before them
    "hebrew": "".join(map(chr, range(0x5D0, 0x5EB))),
    "arabic": "".join(map(chr, range(0x627, 0x64B))) + "\u200f\u200e",  # and the RTL/LTR marks
    "cjk": "前列腺病变左右肺肝",
    "emoji": "\U0001F600\U0001F9E0\U0001FAC0\u200d\ufe0f\U0001F3FD",  # with joiner, variation selector, skin tone
    "space": " \t\n\r\u00a0\u2028\u2029\u3000\u200b\ufeff",
    "control": "".join(map(chr, [*range(0, 32), 127, *range(0x80, 0xA0)])),
    "bidi": "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069",
    "surrogate": "\ud800\udbff\udc80\udcff",  # halves of UTF-16 pairs: what undecodable bytes in argv become
    "other": "\ue000\U000F0000\ufffd\uffff\ufdd0\u0378",  # private use, replacement, noncharacters, unassigned
}
WEIGHTS = {"latin": 60, "combining": 6, "hebrew": 5, "arabic": 5, "cjk": 4, "emoji": 4, "space": 6, "control": 2,
           "bidi": 1, "surrogate": 1, "other": 2}


def random_prompt(rng: random.Random) -> str:
    length = rng.choice([0, 1, 2, 3, rng.randint(4, 40), rng.randint(4, 40), rng.randint(40, 400),
                         MAX_PROMPT_CHARACTERS, MAX_PROMPT_CHARACTERS + 1])
    pools = rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()), k=length)
    return "".join(rng.choice(POOLS[pool]) for pool in pools)


def assert_one_line(error: MedTextSegError) -> None:
    """What the CLI prints for it (``printable``) is one printable line."""
    text = printable(str(error))
    assert text and "\n" not in text and text.isprintable(), repr(text)


def test_prompt_validation_fuzz():
    """1500 random prompts: a valid one is clean text the encoder and its cache can take, else one line."""
    rng = random.Random(SEED)
    accepted = refused = 0
    for _ in range(1500):
        prompt = random_prompt(rng)
        try:
            text = validate_prompt(prompt, "prompt 1")
        except MedTextSegError as error:
            assert_one_line(error)
            assert str(error).startswith("prompt 1: ")
            refused += 1
            continue
        accepted += 1
        assert 1 <= len(text) <= MAX_PROMPT_CHARACTERS and text == text.strip() and "  " not in text
        assert sum(c.isalpha() for c in text) >= 2
        text.encode("utf-8")  # the embedding cache keys it by its UTF-8 bytes: no lone surrogate
        assert not any(c in POOLS["control"] or c in POOLS["bidi"] for c in text)
    assert accepted > 200 and refused > 200  # both paths well exercised


@pytest.fixture(scope="module")
def model_run(dataset_2d, tmp_path_factory) -> Path:
    config = Config.load("default_2d", [*TINY_2D, f"data.root={dataset_2d}"])
    return train(config, tmp_path_factory.mktemp("fuzz") / "run", progress=False)


def predict_once(run: Path, images: list[Path], prompt: str, out: Path) -> bool:
    """``predict`` with one prompt: exit 0 and every output, or exit 2, one printable line and no output folder.
    Returns whether it worked."""
    result = runner.invoke(app, ["predict", "-m", str(run), *[a for p in images for a in ("-i", str(p))],
                                 "-p", prompt, "-o", str(out)])
    assert result.exit_code in (0, 2), (repr(prompt), result.output, result.exception)
    assert all(line.isprintable() for line in result.output.splitlines()), repr(result.output)
    if result.exit_code == 2:
        assert result.output.startswith("error: ") and result.output.count("\n") == 1, repr(result.output)
        assert not out.exists()
        return False
    assert sorted(p.name for p in out.iterdir()) == PREDICT_OUTPUTS
    assert read_geometry(out / "mask_00.nii.gz").same_grid(read_geometry(images[0]))
    return True


def test_predict_prompt_fuzz(model_run, dataset_2d, tmp_path):
    """A few random prompts through ``predict``, some valid and some not, surrogates and escapes included."""
    rng = random.Random(SEED + 1)
    images = sorted((dataset_2d / "imagesTr").glob("synth_000_*.nii.gz"))
    prompts = [random_prompt(rng) for _ in range(200)]
    valid = [p for p in prompts if _valid(p)][:4]
    invalid = [p for p in prompts if not _valid(p)][:3]
    prompts = [*valid, *invalid, "the gland \udcff\udcfe", "\u05d4\u05e2\u05e8\u05de\u05d4 the gland \U0001F600"]
    outcomes = [predict_once(model_run, images, prompt, tmp_path / f"out{i}") for i, prompt in enumerate(prompts)]
    assert outcomes == [True] * 4 + [False] * 4 + [True]


def _valid(prompt: str) -> bool:
    try:
        validate_prompt(prompt)
    except MedTextSegError:
        return False
    return True


# ------------------------------------------------------------------ NIfTI headers
DATATYPES = [2, 4, 8, 16, 64, 256, 512, 768, 1024, 1280, 32, 1792, 128, 2304, 1536, 0, 999]
ZOOMS = [1.0, 0.7, 3.0, 0.0, -1.0, -0.5, float("nan"), float("inf"), 1e-30, 1e30]
CODES = [0, 1, 2, 3, 4, 0, 1, 5, -1, 255]


def random_header(rng: random.Random, header: nib.Nifti1Header, sane: bool = False) -> None:
    """Random codes, voxel sizes, quaternion, sform rows and scaling written into ``header`` as they are (no
    checks or fixes); ``sane``: from values a valid file can hold."""
    zooms = ZOOMS[:3] if sane else ZOOMS
    header["qform_code"], header["sform_code"] = (rng.choice(CODES[:5] if sane else CODES) for _ in range(2))
    header["pixdim"] = [rng.choice([1.0, -1.0] if sane else [1.0, -1.0, 0.0, 2.0, float("nan")]),
                        *(rng.choice(zooms) for _ in range(3)), *header["pixdim"][4:]]
    header["quatern_b"], header["quatern_c"], header["quatern_d"] = (
        rng.choice([0.0, 0.0, 0.5, -0.5] if sane else [0.0, 0.0, 0.5, -0.7, 1.0, 2.0, float("nan")])
        for _ in range(3))
    header["qoffset_x"] = rng.choice([0.0, -20.0] if sane else [0.0, -20.0, float("nan"), float("inf")])
    rows = np.diag([rng.choice(zooms) * rng.choice([1, -1]) for _ in range(3)] + [1.0])[:3]
    if rng.random() < 0.3:
        rows[rng.randrange(3), rng.randrange(4)] = rng.choice(zooms)
    header["srow_x"], header["srow_y"], header["srow_z"] = rows
    header["scl_slope"], header["scl_inter"] = rng.choice([1.0, 0.0, 2.0, float("nan")]), rng.choice([0.0, 5.0])


def random_nifti(rng: random.Random, path: Path) -> Path:
    """A NIfTI-1 file of random dimensions, data type and header fields, written byte by byte (nibabel would
    fix or refuse many of them when saving); its voxel data sometimes too short or too long."""
    sane = rng.random() < 0.5  # half of them from values a valid file can hold: those must read
    header = nib.Nifti1Header()
    ndim = rng.choice([2, 3, 3, 4] if sane else [0, 1, 2, 3, 3, 3, 4, 5, 8])
    dims = [rng.choice([1, 1, 2, 3, 5, 8] if sane else [1, 1, 2, 3, 5, 8, 0]) for _ in range(7)]
    header["dim"] = [ndim, *dims]
    datatype = rng.choice(DATATYPES[:12] if sane else DATATYPES)
    header["datatype"] = datatype
    header["bitpix"] = 8 * nib.nifti1.data_type_codes.dtype[datatype].itemsize if sane else rng.choice([8, 16, 32])
    header["vox_offset"] = rng.choice([352.0, 400.0] if sane else [352.0, 352.0, 0.0, 400.0])
    header["magic"] = b"n+1" if sane else rng.choice([b"n+1", b"n+1", b"n+1", b"ni1", b"xyz"])
    random_header(rng, header, sane)
    try:
        itemsize = nib.nifti1.data_type_codes.dtype[datatype].itemsize
    except KeyError:
        itemsize = 4
    size = int(np.prod(dims[: max(ndim, 0)])) * itemsize + (0 if sane else rng.choice([0, 0, -3, 7]))
    offset = int(header["vox_offset"]) or 352
    data = header.binaryblock + b"\0" * (offset - 348) + bytes(rng.getrandbits(8) for _ in range(max(size, 0)))
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def read_and_verify(path: Path, spatial_dims: int) -> None:
    """What reading a dataset's or predict's input does, in order: header, dimensions, grid, voxels, checks."""
    file_shape(path)
    check_image_dims(path, spatial_dims, "the dataset", "or declare medtextseg.spatial_dims {dims} in "
                     "dataset.json")
    geometry = read_geometry(path)
    assert geometry.shape == read_array(path).shape[:3]
    verify_case(CaseRecord("case", [path], None), {"background": 0}, spatial_dims)


def test_nifti_header_fuzz(tmp_path):
    """300 random headers through reading and verification: each reads whole or ends in one line naming the
    file."""
    rng = random.Random(SEED + 2)
    read = refused = 0
    for index in range(300):
        path = random_nifti(rng, tmp_path / f"image_{index:03d}.nii{rng.choice(['', '.gz'])}")
        for spatial_dims in (2, 3):
            try:
                read_and_verify(path, spatial_dims)
                read += 1
            except MedTextSegError as error:
                assert_one_line(error)
                assert str(error).startswith(str(path)), str(error)
                refused += 1
    assert read > 50 and refused > 300


def spoilt_copies(rng: random.Random, images: list[Path], folder: Path, sane: bool) -> list[Path]:
    """The channels of one case with one random header (codes, voxel sizes, quaternion, sform) for all."""
    with gzip.open(images[0]) as handle:  # as stored (a loaded image's header has vox_offset 0)
        header = nib.Nifti1Header.from_fileobj(handle)
    random_header(rng, header, sane)
    folder.mkdir()
    copies = []
    for image in images:
        raw = gzip.decompress(image.read_bytes())
        copies.append(folder / image.name)
        copies[-1].write_bytes(gzip.compress(header.binaryblock + raw[348:]))
    return copies


def test_predict_header_fuzz(model_run, dataset_2d, tmp_path):
    """A few cases with random headers through ``predict``: all outputs on the input's grid, or none."""
    rng = random.Random(SEED + 3)
    images = sorted((dataset_2d / "imagesTr").glob("synth_000_*.nii.gz"))
    outcomes = [predict_once(model_run, spoilt_copies(rng, images, tmp_path / f"in{i}", sane=i % 2 == 0),
                             "the prostate gland", tmp_path / f"out{i}") for i in range(8)]
    assert True in outcomes and False in outcomes
