"""``medtextseg``: one command-line app, one subcommand per stage (synth, train, predict, evaluate, compare, study).

Heavy libraries are imported inside each command so that ``--help`` answers at once. Bad input ends
with one line on stderr (``error: ...`` naming the file or field) and exit status 2.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Text-guided medical image segmentation: give an image and a prompt in plain language, get the "
         "mask of what the prompt names, in the input's geometry.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _print_version(value: bool) -> None:
    """``--version``: print the package's version and stop (before any other option is checked)."""
    if value:
        from medtextseg import __version__

        typer.echo(f"medtextseg {__version__}")
        raise typer.Exit()


VersionOption = Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                             help="print the version and exit")]


@app.callback()
def main(version: VersionOption = False) -> None:
    """The subcommands below; ``--version`` prints the version (the app's help is the Typer's)."""


def user_errors(command):
    """Turn a MedTextSegError into one line on stderr and exit status 2 (no traceback); control characters
    in it (from a file name, say) are shown escaped."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from medtextseg.utils.errors import MedTextSegError, printable
        from medtextseg.utils.folder_lock import command_scope

        try:
            with command_scope():  # output folders locked in the command are released as it ends
                return command(*args, **kwargs)
        except MedTextSegError as error:
            typer.echo(f"error: {printable(str(error))}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def key_value_pairs(items: list[str] | None, what: str, form: str) -> dict[str, str]:
    """Parse repeated ``KEY=VALUE`` arguments; a malformed one is a one-line error naming ``what``."""
    from medtextseg.utils.errors import MedTextSegError

    pairs = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise MedTextSegError(f"{what} {item!r}: expected {form}")
        pairs[key.strip()] = value
    return pairs


@app.command()
@user_errors
def synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="dataset folder to create")],
    cases: Annotated[int, typer.Option(help="number of cases (split --splits into train/val/test)")] = 150,
    dim: Annotated[int, typer.Option(help="3 for volumes, 2 for axial slices")] = 3,
    seed: Annotated[int, typer.Option(help="random seed; the same seed gives the same files")] = 0,
    spacing: Annotated[str, typer.Option(help="voxel size in mm, X,Y,Z (anatomy keeps its mm size)")] = "1.2,1.2,3.0",
    fov: Annotated[str, typer.Option("--fov", help="field of view in mm, X,Y,Z: the grid is fov / spacing "
                                                   "voxels")] = "57.6,57.6,48",
    voxel_order: Annotated[str, typer.Option(help="axis codes of the stored files, e.g. LPS, RAS, PIL")] = "LPS",
    oblique: Annotated[float, typer.Option(help="largest in-plane tilt of the affine in degrees (tilts are drawn "
                                                "from a third of it to it; 0 = none)")] = 6.0,
    lesion_contrast: Annotated[float, typer.Option(help="scales how far lesions differ from their zone "
                                                        "(0-3)")] = 1.0,
    min_lesions: Annotated[int, typer.Option(help="fewest lesions per case")] = 0,
    max_lesions: Annotated[int, typer.Option(help="most lesions per case (at most 3)")] = 3,
    unseen_wording: Annotated[float, typer.Option(help="fraction of test-split prompts rewritten in wordings the "
                                                       "training split never uses (0-1)")] = 0.0,
    splits: Annotated[str, typer.Option(help="train,val,test fractions summing to 1; 0,0,1 makes a held-out "
                                             "test set for a model trained on other data")] = "0.7,0.1,0.2",
) -> None:
    """Generate the synthetic prostate bp-MRI benchmark (T2W, ADC, HBV; gland, zones, 0-3 lesions, prompts).

    Writes the nnU-Net raw layout + prompts.jsonl + splits.json (docs/dataset_format.md). The options after
    --seed make data "made differently" (resolution, field of view, storage order, contrast, wording); their
    defaults give the standard benchmark, byte for byte.
    """
    from medtextseg.data.synthetic import make_synthetic_dataset
    from medtextseg.utils.errors import MedTextSegError

    def three_numbers(text: str, option: str, example: str = "numbers in mm (X,Y,Z), e.g. 0.5,0.5,3.0"
                      ) -> tuple[float, float, float]:
        parts = text.split(",")
        try:
            values = tuple(float(part) for part in parts)
        except ValueError:
            values = ()
        if len(values) != 3:
            raise MedTextSegError(f"{option} {text!r}: expected 3 comma-separated {example}")
        return values

    if dim not in (2, 3):
        raise MedTextSegError(f"--dim must be 2 or 3, got {dim}")
    if cases < 3:
        raise MedTextSegError(f"--cases must be at least 3 (one per split), got {cases}")
    fractions = three_numbers(splits, "--splits", "fractions (train,val,test), e.g. 0.7,0.1,0.2")
    if min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise MedTextSegError(f"--splits {splits!r}: the train,val,test fractions must be non-negative and sum "
                              "to 1, e.g. 0.7,0.1,0.2 or 0,0,1 (all test)")
    folder = make_synthetic_dataset(
        out, num_cases=cases, spatial_dims=dim, seed=seed, progress=True,
        spacing=three_numbers(spacing, "--spacing"), field_of_view=three_numbers(fov, "--fov"),
        voxel_order=voxel_order, oblique_degrees=oblique, lesion_contrast=lesion_contrast,
        min_lesions=min_lesions, max_lesions=max_lesions, unseen_wording=unseen_wording,
        split_fractions=fractions)
    typer.echo(f"wrote {cases} cases to {folder}")


@app.command()
@user_errors
def sparsify(
    src: Annotated[Path, typer.Option("--src", help="a densely labelled 3D dataset folder")],
    dst: Annotated[Path, typer.Option("--dst", help="the barely-labelled copy to write")],
    fraction: Annotated[float, typer.Option(help="share of the training volumes that keep labelled slices; the "
                                                 "others become unlabelled")] = 0.1,
    planes: Annotated[str, typer.Option(help="annotated planes per labelled volume: S sagittal, C coronal, "
                                             "A axial")] = "SCA",
    slice_: Annotated[str, typer.Option("--slice", help="which slice per plane: 'largest' foreground or "
                                                        "'middle'")] = "largest",
    seed: Annotated[int, typer.Option(help="draws the labelled volumes")] = 0,
    overwrite: Annotated[bool, typer.Option(help="replace --dst if an earlier sparsify wrote it (anything "
                                                 "else is refused, never deleted)")] = False,
) -> None:
    """Make a barely-labelled copy of a dataset: a few annotated slices per labelled volume (RADA's protocol).

    Unannotated voxels get the label 'ignore' (nnU-Net's convention, declared in dataset.json); validation and
    test labels stay dense. Train the copy with the presets rada, rada_text or rada_single.
    """
    from medtextseg.data.sparse_labels import sparsify_dataset

    summary = sparsify_dataset(src, dst, fraction, planes, slice_, seed, overwrite)
    labelled = sum(isinstance(v, dict) for v in summary.values())
    unlabelled = sum(v == "unlabelled" for v in summary.values())
    typer.echo(f"wrote {dst}: {labelled} training volumes with {len(planes)} annotated slices, {unlabelled} "
               f"unlabelled, {len(summary) - labelled - unlabelled} dense (validation/test)")


@app.command()
@user_errors
def plan(
    data: Annotated[Path, typer.Option("--data", "-d", help="dataset folder")],
    preset: Annotated[str, typer.Option("--preset", "-p", help="preset whose patch budget, depth and kind "
                                        "weights the plan starts from")] = "default",
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a config field first: KEY=VALUE "
                                                    "(e.g. data.patch_size=[64,64,32] raises the budget)")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="where to write the plan (default: "
                                             "DATA/plans.json)")] = None,
) -> None:
    """Measure a dataset (spacings, shapes, intensities, target sizes, prompt kinds) and plan its training.

    The plan (target spacing, patch, strides, channels, kind weights) is what `train` uses by default;
    `train` measures the dataset itself unless given `--plan-file` (this file, edited or not); `--set`
    overrides any planned value.
    """
    from medtextseg.data.planning import PLAN_FILE, describe, planned_config

    _, made = planned_config(preset, [*(set_ or []), f"data.root={data}"], progress=True)
    if made is None:
        typer.echo(f"preset {preset!r} co-trains on sparse slice labels, which keep their grid: nothing to plan")
        return
    path = made.save(out if out is not None else data / PLAN_FILE)
    typer.echo(describe(made))
    typer.echo(f"wrote {path}")


@app.command()
@user_errors
def train(
    data: Annotated[Path | None, typer.Option("--data", "-d", help="dataset folder (sets data.root)")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="run folder: config, log, checkpoints")] = Path("runs/run"),
    preset: Annotated[str, typer.Option("--preset", "-p", help="preset name or YAML file; see `presets`")] = "default",
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a config field: KEY=VALUE, "
                                                    "e.g. --set train.steps=200 (repeatable)")] = None,
    resume: Annotated[bool, typer.Option(help="continue a stopped run from its last.pt (uses its saved "
                                               "config plus any --set)")] = False,
    plan_: Annotated[bool | None, typer.Option("--plan/--no-plan", help="plan spacing, patch, strides, channels "
                                               "and kind weights from the dataset (`medtextseg plan`); --no-plan "
                                               "keeps the preset's values (sets data.plan; default: the preset's "
                                               "data.plan, true but for co-training)")] = None,
    plan_file: Annotated[Path | None, typer.Option("--plan-file", help="replay this plans.json instead of "
                                                   "measuring the dataset")] = None,
    fold: Annotated[int | None, typer.Option("--fold", help="cross-validation: train on the other folds of the "
                                             "train + val cases and validate on fold K (0-based; sets data.fold; "
                                             "data.folds folds, 5 by default, saved in DATA/splits_final.json)")
                    ] = None,
) -> None:
    """Train a text-guided segmentation model. Also runs under `torchrun --nproc_per_node N` (DDP).

    Unless --no-plan (or a preset with data.plan: false, as co-training's), the dataset is measured first and
    its plan (printed, saved as RUN/plans.json and in every checkpoint) sets the spacing, patch, strides,
    channels and kind weights; --set wins over the plan.
    With --fold K the plan is measured on the dataset's train split, as without folds: the same plan for every
    fold, so that their models can be ensembled (predict -m FOLD_0 -m FOLD_1 ...).
    """
    from medtextseg.config import Config
    from medtextseg.data.planning import describe, planned_config
    from medtextseg.training.distributed import decided_by_rank_0
    from medtextseg.training.engine import train as run_training
    from medtextseg.utils.errors import MedTextSegError
    from medtextseg.utils.folder_lock import lock_until_command_ends

    # a second train into this run folder stops at once, before planning; under torchrun every rank does
    decided_by_rank_0(lambda: lock_until_command_ends(out))
    overrides = list(set_ or [])
    if data is not None:
        overrides.append(f"data.root={data}")
    if fold is not None:
        overrides.append(f"data.fold={fold}")
    if plan_ is not None:
        overrides.append(f"data.plan={str(plan_).lower()}")
    saved = out / "config.yaml"
    made = None
    if resume and saved.is_file():  # the saved config already holds the plan's values
        config = Config.load(saved, overrides)
        started = Config.load(saved).data.fold
        if config.data.fold != started:
            raise MedTextSegError(f"{saved}: the run trains fold {started}; resume it with that fold, not "
                                  f"{config.data.fold}")
    else:
        config, made = planned_config(preset, overrides, plan_file, progress=True)
        if made is not None:
            typer.echo(describe(made))
            overridden = sorted(k for k in made.overrides() if any(o.startswith(f"{k}=") or o.startswith(f"{k}.")
                                                                    for o in overrides))
            if overridden:
                typer.echo(f"  --set overrides the plan's {', '.join(overridden)}")
    if config.data.fold is not None and config.data.root is not None:
        from medtextseg.data.folds import describe_fold
        from medtextseg.data.layout import load_dataset

        typer.echo(describe_fold(load_dataset(config.data.root), config.data))
    run_dir = run_training(config, out, resume=resume, plan=made)
    typer.echo(f"run saved in {run_dir}")


@app.command()
@user_errors
def predict(
    model: Annotated[list[Path], typer.Option("--model", "-m", help="run folder, checkpoint file or model .zip; "
                                              "repeat -m (or give a folder of fold runs) to ensemble several: "
                                              "their mean probability")],
    images: Annotated[list[Path] | None, typer.Option("--image", "-i", help="one file (or DICOM series folder) "
                                                       "per channel, in the model's channel order (repeat -i); or "
                                                       "one folder of cases ({case}_0000.nii.gz, ...) or .txt list "
                                                       "of cases (a line per case: its channel files)")] = None,
    prompts: Annotated[list[str] | None, typer.Option("--prompt", "-p", help="what to segment (repeat -p)")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder; many cases: OUT/{case}/{prompt_slug}.nii.gz "
                                      "and the index OUT/predictions.json")] = Path("predictions"),
    jobs: Annotated[Path | None, typer.Option("--jobs", help="a .json list (or .jsonl lines) of jobs {\"images\": "
                                              "[...], \"prompts\": [...], \"case\": NAME}, instead of -i")] = None,
    continue_: Annotated[bool, typer.Option("--continue", help="many cases: skip those the index records as "
                                            "done with the same inputs, prompts and model")] = False,
    threshold: Annotated[float | None, typer.Option(help="probability above which a voxel is in the mask; "
                                                    "default: the run's inference.threshold")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:N or mps; default: CUDA when available")
                      ] = None,
    probabilities: Annotated[bool, typer.Option(help="also write probability maps")] = False,
    combined: Annotated[bool, typer.Option("--combined", help="also write one label map per case (label k = "
                                           "prompt k; overlaps to the higher probability; 0 = no prompt) and its "
                                           "legend label-map.json")] = False,
    uncertainty: Annotated[bool, typer.Option(help="also write uncertainty maps (an evidential model's "
                                              "Dirichlet uncertainty, else the entropy of the probability) and a "
                                              "PNG per prompt: mask, probability and uncertainty on the image")
                           ] = False,
    refiner: Annotated[bool | None, typer.Option("--refiner/--no-refiner", help="use the model's refiner "
                                                 "(model.blocks.refiner); default: as the run's "
                                                 "inference.refiner")] = None,
    tta: Annotated[bool | None, typer.Option("--tta/--no-tta", help="mirror test-time augmentation along every "
                                             "axis, 'left'/'right' swapped in the mirrored prompt; default: as the "
                                             "run's inference.mirror_axes")] = None,
    sw_batch_size: Annotated[int | None, typer.Option(help="sliding windows per network call (more fill a GPU); "
                                                      "default: the run's inference.sw_batch_size")] = None,
    overlap: Annotated[float | None, typer.Option(help="overlap of neighbouring windows, 0 to <1; default: the "
                                                  "run's inference.overlap")] = None,
    autocast: Annotated[str | None, typer.Option(help="the network's precision: auto (fp16 on a GPU, bf16 on a CPU "
                                                 "with bfloat16 units), none (float32), bf16 or fp16 (GPU); "
                                                 "default: the run's inference.autocast")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="an inference setting: inference.KEY=VALUE, e.g. "
                                                   "--set inference.prompt_chunk=4 (repeatable)")] = None,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress", help="a bar over windows and "
                                                  "prompts on stderr; default: when stderr is a terminal")] = None,
    version: VersionOption = False,
) -> None:
    """Segment what each prompt names; one mask per prompt with exactly the input's shape and affine.

    Many cases (a folder, a .txt list or --jobs) load the model once and write OUT/{case}/ per case. Each mask
    is written as soon as it is answered, so memory does not grow with the number of prompts; an input too large
    for memory is refused before it is read, naming the setting that makes it fit. Several -m (or a folder of
    fold runs) answer as one ensemble: the mean of their probabilities, gated on their mean presence against
    the mean of their presence thresholds."""
    import json

    from medtextseg.api import load_model
    from medtextseg.data.io import NIFTI_ENDINGS, is_dicom_series
    from medtextseg.inference.batch_predict import predict_cases
    from medtextseg.inference.case_inputs import requested_cases
    from medtextseg.inference.label_map import LABEL_MAP_NAME, LEGEND_NAME, LabelMapBuilder
    from medtextseg.utils.atomic import write_text_atomic
    from medtextseg.utils.errors import MedTextSegError, refuse_output_over_inputs
    from medtextseg.utils.folder_lock import lock_until_command_ends

    settings = [*(f"inference.{key}={value}" for key, value in
                  (("sw_batch_size", sw_batch_size), ("overlap", overlap), ("autocast", autocast))
                  if value is not None), *(set_ or [])]
    cases = requested_cases(images or [], jobs, prompts or [])
    if cases is not None:  # many cases: predict_cases checks, then locks the output folder itself
        typer.echo(predict_cases(model, cases, out, probabilities=probabilities, uncertainty=uncertainty,
                                 combined=combined, resume=continue_, progress=True, device=device, refiner=refiner,
                                 mirror_axes=_mirror_axes(tta), threshold=threshold, inference=settings,
                                 window_progress=progress).line())
        return
    if continue_:
        raise MedTextSegError("--continue applies to many cases (a folder of cases, a .txt list or --jobs)")

    # a DICOM series (folder) input gets NIfTI outputs on its grid
    ending = ".nii.gz" if is_dicom_series(images[0]) else next(
        (e for e in NIFTI_ENDINGS[::-1] if str(images[0]).lower().endswith(e)),
        "".join(images[0].suffixes) or ".nii.gz")

    def output_paths(number: int) -> tuple[Path, Path | None, Path | None]:
        return (out / f"mask_{number:02d}{ending}", out / f"probability_{number:02d}{ending}" if probabilities
                else None, out / f"uncertainty_{number:02d}{ending}" if uncertainty else None)

    planned = [p for number in range(len(prompts)) for p in output_paths(number) if p is not None]
    label_map = out / f"{LABEL_MAP_NAME}{ending}" if combined else None
    planned += [label_map, out / LEGEND_NAME] if label_map else []
    refuse_output_over_inputs(out, images, [*planned, out / "prompts.json"])  # before anything is written
    lock_until_command_ends(out)  # a second predict into this folder stops at once instead of mixing masks
    predictor = load_model(model, device, refiner, _mirror_axes(tta), threshold)
    predictor.set_inference(settings)
    predictor.progress = progress
    labels = LabelMapBuilder(len(prompts)) if label_map else None
    index = []
    # each answer is written and let go before the next: memory holds a few prompts' maps, not all of them
    for number, result in enumerate(predictor.iter_predict(images, prompts, uncertainty=uncertainty)):
        mask_path, probability_path, uncertainty_path = output_paths(number)
        result.save(mask_path, probability_path, uncertainty_path)
        entry = {"prompt": result.prompt, "mask": mask_path.name, "voxels": result.voxels,
                 "volume_ml": round(result.volume_ml, 3)}
        if probability_path:
            entry["probability"] = probability_path.name
        if uncertainty_path:
            overlay_path = out / f"overlay_{number:02d}.png"
            _save_prediction_overlay(images[0], result, overlay_path)
            entry |= {"uncertainty": uncertainty_path.name, "uncertainty_kind": result.uncertainty_kind,
                      "overlay": overlay_path.name}
        if labels is not None:
            labels.add(result, mask_path.name)
            entry |= {"label": number + 1, "label_map": label_map.name, "legend": LEGEND_NAME}
        index.append(entry)
        typer.echo(f"{mask_path}  {result.voxels} voxels ({result.volume_ml:.2f} ml)  <- {result.prompt!r}")
    if labels is not None:
        legend = labels.write(label_map, out / LEGEND_NAME)
        described = ", ".join(f"{e['label']}: {e['voxels']}" for e in legend["labels"])
        typer.echo(f"{label_map}  labels 1-{len(index)} (voxels {described}); legend {out / LEGEND_NAME}")
    write_text_atomic(out / "prompts.json", json.dumps(index, indent=1))


def _mirror_axes(tta: bool | None) -> str | list[int] | None:
    """--tta: every spatial axis; --no-tta: none; neither: None (the run's inference.mirror_axes)."""
    return None if tta is None else "all" if tta else []


def _save_prediction_overlay(image_path: Path, result, out_path: Path) -> None:
    """PNG of the slice with most predicted voxels: mask contour, probability and uncertainty panels (RAS view)."""
    import numpy as np

    from medtextseg.data.io import read_array
    from medtextseg.evaluation.figures import save_overlay
    from medtextseg.evaluation.runner import ras_view

    affine = result.geometry.affine
    mask = ras_view(result.mask, affine)
    save_overlay(ras_view(read_array(image_path), affine), np.zeros(mask.shape, dtype=bool), mask, out_path,
                 title=f"{result.prompt}  ({result.uncertainty_kind} uncertainty)",
                 probability=ras_view(result.probability, affine), uncertainty=ras_view(result.uncertainty, affine))


@app.command()
@user_errors
def serve(
    model: Annotated[list[Path], typer.Option("--model", "-m", help="run folder, checkpoint or package (loaded "
                                              "once); repeat -m, or give a folder of fold runs, to serve their "
                                              "ensemble")],
    host: Annotated[str, typer.Option(help="address to listen on; 127.0.0.1 serves this machine only")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    token_file: Annotated[Path | None, typer.Option(help="file whose first line is the bearer token every request "
                                                    "must send (default: the MEDTEXTSEG_TOKEN environment "
                                                    "variable; neither: no token)")] = None,
    max_upload_mb: Annotated[float, typer.Option(help="largest request body in MB (larger ones get 413; a zip may "
                                                 "unpack to 4 times as much)")] = 512.0,
    queue: Annotated[int, typer.Option(help="requests admitted at once (uploading, waiting or running, one "
                                       "prediction at a time); one more gets 503 with Retry-After")] = 8,
    keep_jobs: Annotated[int, typer.Option(help="finished jobs (POST /jobs) kept with their results")] = 32,
    max_prompts: Annotated[int, typer.Option(help="prompts per request (answered in one pass)")] = 16,
    threshold: Annotated[float | None, typer.Option(help="default probability above which a voxel is in the mask "
                                                    "(a request may send its own); default: the run's")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:N or mps; default: CUDA when available")
                      ] = None,
    temp_dir: Annotated[Path | None, typer.Option(help="folder in which the server makes its own temporary "
                                                  "folder for uploads and results (default: the system's)")] = None,
) -> None:
    """Serve the model over HTTP: POST /segment (one case's channel files and prompts -> masks as NIfTI on the
    input's grid and a JSON summary), a job API (/jobs), GET /health. README, "Serving"."""
    from medtextseg.utils.errors import MedTextSegError

    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise MedTextSegError(f"medtextseg serve needs {error.name}: pip install 'medtextseg[serve]' (fastapi, "
                              "uvicorn, python-multipart)") from None
    from medtextseg.server.app import ServerSettings, read_token
    from medtextseg.server.app import serve as run_server

    for name, value in (("--queue", queue), ("--keep-jobs", keep_jobs), ("--max-prompts", max_prompts)):
        if value < 1:
            raise MedTextSegError(f"{name} must be at least 1, got {value}")
    if not max_upload_mb > 0:
        raise MedTextSegError(f"--max-upload-mb must be more than 0, got {max_upload_mb}")
    settings = ServerSettings(token=read_token(token_file), max_upload_bytes=int(max_upload_mb * 1e6), queue=queue,
                              keep_jobs=keep_jobs, max_prompts=max_prompts, temp_dir=temp_dir)
    run_server(model, host, port, settings, device=device, threshold=threshold)


@app.command("calibrate-presence")
@user_errors
def calibrate_presence_command(
    model: Annotated[list[Path], typer.Option("--model", "-m", help="run folder (its best.pt and config.yaml are "
                                              "updated); once per fold run to cross-fit over their held-out folds")],
    data: Annotated[Path, typer.Option("--data", "-d", help="dataset folder")],
    split: Annotated[str, typer.Option(help="held-out split to choose on (never the test split you report)")] = "val",
    thresholds: Annotated[str, typer.Option(help="comma-separated presence thresholds to try")] =
        "0.3,0.4,0.5,0.6,0.7,0.8,0.9,0.95,0.98",
    max_present_loss: Annotated[float, typer.Option(help="Dice the prompts whose target is there may lose to the "
                                                    "gate, against the gate left open")] = 0.02,
) -> None:
    """Choose the run's presence threshold on a held-out split and keep it in the run.

    For every threshold (and the open gate, 0): absent targets answered empty, and the mean Dice of present
    targets. Chosen: the most absent answered empty among thresholds that cost present targets at most
    --max-present-loss Dice. Its stability over bootstrap resamples of the cases is printed. The choice goes into
    best.pt and config.yaml, so predict and evaluate use it; the table to RUN/calibration_presence.json. With the
    runs of every fold (-m RUN_F0 ... -m RUN_F4, trained with --fold), each scores its held-out fold and one
    threshold is chosen on all of them (cross-fitted) and kept in each.
    """
    from medtextseg.evaluation.presence_calibration import calibrate_presence
    from medtextseg.utils.errors import MedTextSegError

    try:
        grid = [float(t) for t in thresholds.split(",") if t.strip()]
    except ValueError:
        raise MedTextSegError(f"--thresholds must be comma-separated numbers, got {thresholds!r}") from None
    result = calibrate_presence(model, data, split, grid, max_present_loss=max_present_loss)

    def share(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    typer.echo(f"threshold  absent answered empty ({result['absent_prompts']})  present Dice "
               f"({result['present_prompts']})  all prompts")
    for threshold, scores in result["scores"].items():
        mark = "  <- chosen" if float(threshold) == result["chosen"] else ""
        typer.echo(f"{float(threshold):9.2f}  {share(scores['absent_empty']):>27}  {share(scores['present_dice']):>17}"
                   f"  {scores['val_dice']:.3f}{mark}")
    where = split if len(model) == 1 else f"{result['cases']} held-out {split} cases of {len(model)} fold runs"
    typer.echo(f"presence threshold {result['previous']} -> {result['chosen']} (chosen on {where}; the same in "
               f"{result['stability']:.0%} of bootstrap resamples), kept in {', '.join(map(str, model))}")
    if result["note"]:
        typer.echo(f"note: {result['note']}")
    if result["warning"]:
        typer.echo(f"warning: {result['warning']}")


@app.command()
@user_errors
def evaluate(
    model: Annotated[list[Path], typer.Option("--model", "-m", help="run folder, checkpoint file or model .zip; "
                                              "repeat -m (or give a folder of fold runs) to evaluate their "
                                              "ensemble")],
    data: Annotated[Path, typer.Option("--data", "-d", help="dataset folder")],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for metrics, masks and overlays")],
    split: Annotated[str | None, typer.Option(help="split to evaluate (default: test)")] = None,
    out_of_fold: Annotated[bool, typer.Option("--out-of-fold", help="the cross-validation score: each fold run "
                                              "(-m the K runs of train --fold, or their folder) predicts its own "
                                              "held-out fold, all scored as one set")] = False,
    overlay_channel: Annotated[int, typer.Option(help="image channel shown in overlay PNGs")] = 0,
    save_masks: Annotated[bool, typer.Option(help="write every predicted mask")] = True,
    component_sweep: Annotated[str | None, typer.Option(help="also score masks post-processed to the largest "
                                                        "component plus those of >= m voxels, for each m of a "
                                                        "comma-separated list, e.g. 0,10,20,50,100")] = None,
    refiner: Annotated[bool | None, typer.Option("--refiner/--no-refiner", help="use the model's refiner "
                                                 "(model.blocks.refiner); default: as the run's "
                                                 "inference.refiner")] = None,
    tta: Annotated[bool | None, typer.Option("--tta/--no-tta", help="mirror test-time augmentation along every "
                                             "axis, 'left'/'right' swapped in the mirrored prompt; default: as the "
                                             "run's inference.mirror_axes")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="an inference setting: inference.KEY=VALUE, e.g. "
                                                   "--set inference.network=1 (repeatable)")] = None,
) -> None:
    """Predict every prompt of a split and score it: Dice, IoU, HD95, ASSD, NSD, precision, recall.

    Writes metrics_per_prompt.{json,csv}, summary.{json,csv,md} (one row per prompt kind; `single_2plus` =
    referring prompts in cases with 2+ lesions), overlays/*.png, the run's loss curve, and how much the
    uncertainty means: uncertainty.json (expected calibration error; AUROC of the voxel uncertainty for the
    voxels the mask gets wrong) with reliability.png. Several -m: their ensemble, through the same prediction
    path (ensemble.json lists its members and thresholds); a fold run's val split is its held-out fold.
    --out-of-fold scores K fold runs as nnU-Net's cross-validation does: each on its held-out fold, pooled
    (summary_by_fold.* per fold), the test split untouched.
    """

    from rich.console import Console

    from medtextseg.evaluation.runner import evaluate_out_of_fold, evaluate_run
    from medtextseg.evaluation.tables import render_table
    from medtextseg.utils.errors import MedTextSegError

    sweep = []
    for item in (component_sweep or "").split(","):
        if item.strip():
            if not item.strip().isdigit():
                raise MedTextSegError(f"--component-sweep {component_sweep!r}: expected voxel counts like 0,10,20")
            sweep.append(int(item))
    options = dict(save_masks=save_masks, overlay_channel=overlay_channel, component_sweep=sweep, refiner=refiner,
                   mirror_axes=_mirror_axes(tta), inference=set_ or [])
    if out_of_fold:
        if split not in (None, "val"):
            raise MedTextSegError(f"--out-of-fold scores each fold run's held-out fold (the val split), not --split "
                                  f"{split}")
        result = evaluate_out_of_fold(model, data, out, **options)
    else:
        result = evaluate_run(model, data, out, split=split or "test", **options)
    # a log file or pipe is not 80 columns wide: do not fold the table to fit one
    Console(width=None if sys.stdout.isatty() else 160).print(render_table(result.summary))
    if (overall := result.overall) is not None:
        auroc = overall["uncertainty_error_auroc"]
        typer.echo(f"calibration: ECE {overall['ece']:.4f}; {overall['uncertainty_kind']} uncertainty finds the "
                   f"wrong voxels with AUROC {'n/a' if auroc is None else f'{auroc:.3f}'}")
    if (detection := result.detection) is not None:
        typer.echo("lesion detection (picai_eval, 'all lesions' prompts): " + ", ".join(
            f"{key} {'n/a' if detection[key] is None else f'{detection[key]:.3f}'}"
            for key in ("auroc", "ap", "picai_score")))
    if sweep:
        typer.echo("component sweep (overall Dice by minimum component size): " + ", ".join(
            f"{row['min_voxels']}: {row['dice_mean']:.3f}"
            for row in result.component_sweep if row["group"] == "overall"))
    typer.echo(f"results in {out}")


@app.command()
@user_errors
def robustness(
    model: Annotated[Path, typer.Option("--model", "-m", help="run folder, checkpoint file or model .zip")],
    data: Annotated[Path, typer.Option("--data", "-d", help="dataset folder (prompts with attribute meta)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the robustness tables and chart")],
    split: Annotated[str, typer.Option(help="split to evaluate")] = "test",
    style: Annotated[list[str] | None, typer.Option("--style", help="prompt style (repeatable): original, "
                                                    "structured, short, long, unseen_synonyms; default all")]
    = None,
    seed: Annotated[int, typer.Option(help="seed of the wordings")] = 0,
) -> None:
    """Dice per prompt style: every prompt that names a lesion by its attributes, as written and reworded
    (structured "location ...; shape ...", terse shorthand, a long clinical paraphrase, unseen synonyms).

    Writes robustness_per_prompt.{json,csv}, robustness_summary.{json,csv} and robustness.png.
    """
    from medtextseg.data.attribute_prompts import PROMPT_STYLES
    from medtextseg.evaluation.metrics import OVERALL_GROUP
    from medtextseg.evaluation.robustness import ORIGINAL_STYLE, prompt_robustness

    rows = prompt_robustness(model, data, out, split=split, styles=style or (ORIGINAL_STYLE, *PROMPT_STYLES),
                             seed=seed)
    for row in rows:
        if row["group"] == OVERALL_GROUP:
            dice = "–" if row["dice_mean"] is None else f"{row['dice_mean']:.3f}"
            empty = "–" if row["empty_correct"] is None else f"{row['empty_correct']:.2f}"
            typer.echo(f"{row['style']:>16}: Dice {dice} over {row['n_target']} prompts with a target; "
                       f"absent answered empty {empty}")
    typer.echo(f"results in {out}")


@app.command()
@user_errors
def compare(
    evaluations: Annotated[list[str], typer.Argument(help="NAME=EVALUATION_FOLDER pairs")],
    out: Annotated[Path, typer.Option("--out", "-o", help="report folder")] = Path("report"),
) -> None:
    """Put several evaluations side by side (e.g. text-guided vs image-only): tables, bar chart, loss curves;
    and, where they scored the same prompts, a paired test per prompt group against the first (paired_dice.md)."""
    import json

    from medtextseg.evaluation.report import write_comparison
    from medtextseg.study.prompt_pairs import write_paired_comparison
    from medtextseg.utils.errors import MedTextSegError

    summaries, per_prompt = {}, {}
    for name, folder in key_value_pairs(evaluations, "evaluation", "NAME=EVALUATION_FOLDER").items():
        path = Path(folder) / "summary.json"
        if not path.is_file():
            raise MedTextSegError(f"{path}: not found (run `medtextseg evaluate` first)")
        summaries[name] = json.loads(path.read_text())
        if (Path(folder) / "metrics_per_prompt.json").is_file():
            per_prompt[name] = json.loads((Path(folder) / "metrics_per_prompt.json").read_text())
    write_comparison(summaries, out)
    typer.echo((out / "comparison_dice.md").read_text() if (out / "comparison_dice.md").is_file() else "")
    if len(per_prompt) == len(summaries) >= 2:
        typer.echo(write_paired_comparison(per_prompt, out).read_text())
    typer.echo(f"report in {out}")


@app.command()
@user_errors
def export(
    run: Annotated[Path, typer.Argument(help="the run folder medtextseg train wrote", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="the model package to write (.zip)")],
    checkpoint: Annotated[str, typer.Option(help="best (best.pt) or last (last.pt, without its optimiser "
                                                 "state)")] = "best",
    evaluation: Annotated[Path | None, typer.Option("--eval", help="an evaluation folder (medtextseg evaluate "
                                                    "-o): its summary.json goes in, its metrics into the model "
                                                    "card")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace --out if it exists")] = False,
) -> None:
    """Write a run as one shareable .zip: weights, resolved config, plan, presence calibration, metrics, a model
    card (README.md) and metadata.json (MONAI bundle convention, SHA-256 of every member).

    `predict -m model.zip` and `load_model("model.zip")` use it as it is; `medtextseg import` unpacks it."""
    from medtextseg.training.model_package import export_model

    typer.echo(export_model(run, out, checkpoint, evaluation, overwrite).line())


@app.command("import")
@user_errors
def import_command(
    package: Annotated[Path, typer.Argument(help="a model package (.zip) medtextseg export wrote",
                                            show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="the run folder to create")],
    overwrite: Annotated[bool, typer.Option(help="replace --out if an earlier import wrote it (anything else is "
                                                 "refused, never deleted)")] = False,
) -> None:
    """Check a model package (members, sizes, SHA-256, weights only) and unpack it into a run folder that
    `predict -m` and `load_model` take."""
    from medtextseg.training.model_package import import_model

    folder = import_model(package, out, overwrite)
    typer.echo(f"imported {package} into {folder} ({', '.join(sorted(p.name for p in folder.iterdir()))}); "
               f"predict with: medtextseg predict -m {folder} -i ... -p ...")


@app.command()
@user_errors
def study(
    spec: Annotated[str, typer.Argument(help="study YAML file, or a shipped study: atr_ablation, "
                                        "filmcbn_ablation, filmcbn_losses, textbcs_ablation, "
                                        "textbcs_weights")],
    out: Annotated[Path, typer.Option("--out", "-o", help="study folder: runs/ and one report per dataset")]
    = Path("study"),
    data: Annotated[list[str] | None, typer.Option("--data", "-d", help="NAME=DATASET_FOLDER, replaces the "
                                                   "study's datasets (repeatable)")] = None,
    workers: Annotated[int, typer.Option(min=1, help="runs side by side (each gets cpu_count/workers "
                                         "threads)")] = 1,
    seeds: Annotated[int | None, typer.Option(min=1, help="seeds 0 .. N-1 instead of the study's own (the "
                                              "FiLM/CBN paper reports 10 runs)")] = None,
    reference: Annotated[bool, typer.Option("--reference", help="also train a text-blind MONAI UNet per "
                                            "dataset and seed for the runs' mean time, and compare every "
                                            "configuration with it (the study's `reference: true`)")] = False,
) -> None:
    """Train and evaluate N seeds x M configurations; write statistics (mean ± std, 95% CI, Shapiro-Wilk,
    paired t / Wilcoxon with Holm correction), tables and plots. Rerun the same command to resume."""
    from medtextseg.study.runner import run_study
    from medtextseg.study.spec import load_study

    datasets = key_value_pairs(data, "--data", "NAME=DATASET_FOLDER")
    reports = run_study(load_study(spec, datasets, seeds, reference=reference or None), out, workers=workers)
    for dataset, summary in reports.items():
        typer.echo(f"{dataset}: {summary}")


def _convert_help() -> str:
    """``convert --help``: the command, then every registered converter with its one-line description."""
    from medtextseg.converters.registry import describe_converters

    listing = "\n\n".join(f"* {line}" for line in describe_converters().splitlines()) or "(none registered)"
    return ("Convert a public dataset into the medtextseg format (nnU-Net raw layout + prompts.jsonl + "
            "prompt_vocabulary.json).\n\nResumable and idempotent: a second run converts only what is missing; "
            "a case that cannot be converted is reported by name and the others go on.\n\nConverters (NAME):"
            f"\n\n{listing}")


@app.command(help=_convert_help())
@user_errors
def convert(
    name: Annotated[str, typer.Argument(help="the converter, one of those listed above", show_default=False)],
    src: Annotated[Path, typer.Option("--src", help="the source dataset folder")],
    dst: Annotated[Path, typer.Option("--dst", help="the medtextseg dataset folder to write")],
    overwrite: Annotated[bool, typer.Option(help="rewrite cases already converted")] = False,
    spatial_dims: Annotated[int, typer.Option("--spatial-dims", help="3 for volumes, 2 for slices")] = 3,
    option: Annotated[list[str] | None, typer.Option("--option", help="a converter option KEY=VALUE "
                                                     "(repeatable; see the converter's documentation)")] = None,
) -> None:
    from medtextseg.converters.registry import get_converter
    from medtextseg.utils.errors import MedTextSegError

    function = get_converter(name)
    if spatial_dims not in (2, 3):
        raise MedTextSegError(f"--spatial-dims must be 2 or 3, got {spatial_dims}")
    if not src.is_dir():
        raise MedTextSegError(f"--src {src}: folder not found")
    options = key_value_pairs(option, "--option", "KEY=VALUE")
    summary = function(src, dst, overwrite=overwrite, spatial_dims=spatial_dims, **options)
    typer.echo(summary.line())


@app.command("export-biomedsegfm")
@user_errors
def export_biomedsegfm(
    src: Annotated[Path, typer.Option("--src", help="the medtextseg dataset folder")],
    dst: Annotated[Path, typer.Option("--dst", help="output folder: class_prompts.json and NAME/{case}.npz")],
    name: Annotated[str | None, typer.Option(help="dataset key and folder name (default: dataset.json name)")] = None,
    channel: Annotated[int, typer.Option(help="the image channel written as imgs")] = 0,
    uint8: Annotated[bool, typer.Option("--uint8", help="rescale each image to 0-255 uint8 like the challenge "
                                        "data (the voxels are then not kept)")] = False,
) -> None:
    """Write a dataset in the BiomedSegFM format (CVPR 2025 text-guided 3D segmentation challenge): one .npz per
    case (imgs and gts as (Z, Y, X), spacing as (x, y, z)) and class_prompts.json (label value -> prompt texts)."""
    from medtextseg.converters.biomedsegfm_export import export_biomedsegfm as export

    typer.echo(export(src, dst, name=name, channel=channel, uint8=uint8).line())


@app.command()
@user_errors
def presets(
    patterns: Annotated[list[str] | None, typer.Argument(help="wildcard patterns, e.g. 'rada*' (default: all)")] = None,
    blocks: Annotated[bool, typer.Option("--blocks", help="also say each preset's base and where its text enters "
                                         "(the conditioning blocks and their sites)")] = False,
) -> None:
    """List the built-in presets, those matching PATTERNS."""
    from medtextseg.config import Config, list_presets, preset_base
    from medtextseg.utils.errors import MedTextSegError

    names = list_presets(patterns or "*")
    if patterns and not names:
        raise MedTextSegError(f"no preset matches {' '.join(patterns)}; `medtextseg presets` lists them all")
    for name in names:
        if not blocks:
            typer.echo(name)
            continue
        from medtextseg.models.conditioning.registry import block_options

        described = "; ".join(o.describe() for o in block_options(Config.load(name).model)) or "no text block"
        typer.echo(f"{name:<14} {'base ' + (preset_base(name) or '-'):<18} {described}")


if __name__ == "__main__":  # `python -m medtextseg.cli` (used with torchrun)
    sys.exit(app())
