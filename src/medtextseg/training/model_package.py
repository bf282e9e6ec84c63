"""A shareable model: one ``.zip`` with the weights and everything needed to use and judge them.

``medtextseg export RUN -o model.zip`` writes it; ``medtextseg import model.zip -o FOLDER`` unpacks it into a run
folder; ``predict -m model.zip`` and ``load_model("model.zip")`` read it in place (in memory, nothing extracted).

Members (nothing else is accepted, each at most once, none a link, none above its bound):

* ``best.pt``: the weights with their resolved config, text encoder name and width, channel names and plan, as
  ``medtextseg train`` writes them (``export --checkpoint last`` stores ``last.pt`` without its optimiser and RNG
  state, under this name);
* ``config.yaml``: that config, readable; ``plans.json``, ``calibration_presence.json``: the run's, when it has them;
* ``evaluation/summary.json``: the metrics of ``export --eval DIR``;
* ``README.md``: the model card, generated: what the model segments, its channels, spacing, prompt kinds,
  thresholds, metrics and how to use it;
* ``metadata.json``: the MONAI bundle metadata convention (``version``, ``monai_version``, ``pytorch_version``,
  ``numpy_version``, ``required_packages_version``, ``task``, ``description``, ``network_data_format``, ...) plus
  a ``medtextseg`` section, which records the SHA-256 of every other member.

Reading and checking a package is one floor down, with the checkpoints it wraps
(:mod:`medtextseg.models.package_format`), so that prediction, evaluation and training all take a ``.zip``
wherever they take a run folder. Writing it is here: export reads the run's checkpoint with the same
weights-only loader. Evaluation summaries are read as JSON files, not through ``evaluation`` (a layer above).
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import math
import os
import re
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medtextseg.config import Config
from medtextseg.models.package_format import (
    CALIBRATION,
    CARD,
    CONFIG,
    EVALUATION,
    MEMBERS,
    METADATA,
    PACKAGE_FORMAT,
    PLAN,
    WEIGHTS,
    read_package,
    sha256,
)
from medtextseg.models.trained import load_checkpoint
from medtextseg.utils.atomic import atomic_path, swap_folder_in
from medtextseg.utils.errors import MedTextSegError
from medtextseg.utils.json_files import read_json

MONAI_META_SCHEMA = ("https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
                     "meta_schema_20240725.json")
# the checkpoint keys a package keeps: what Predictor reads, plus the step and score for the card
KEPT_STATE = ("model", "config", "text_encoder", "text_dim", "step", "best", "channel_names", "spatial_dims", "plan")
# fixed member times: the same run exported twice gives the same bytes
ZIP_TIME = (1980, 1, 1, 0, 0, 0)
# the evaluation columns metadata.json and the card keep (evaluation/summary.json keeps them all)
CARD_METRICS = ("group", "n", "dice_mean", "dice_std", "iou_mean", "hd95_mean", "nsd_mean", "empty_correct")
KIND_NOTES = {"absent": " (what is not in the image: the right answer is an empty mask)"}
PARTIAL_PREFIX, REPLACED_PREFIX = ".import-", ".replaced-"
MR_WORDS = {"t1", "t1w", "t1c", "t1ce", "t1gd", "t2", "t2w", "flair", "adc", "dwi", "hbv", "dce", "pd", "pdw", "swi",
            "mr", "mri", "bold"}


@dataclass
class ExportSummary:
    """What ``export`` wrote, for its one-line report."""

    path: Path
    size: int
    metadata: dict[str, Any]

    def line(self) -> str:
        info = self.metadata["medtextseg"]
        spacing = " x ".join(f"{s:g}" for s in info["spacing"]) + " mm" if info["spacing"] else "as given"
        metrics = "; evaluation metrics included" if info.get("evaluation") else ""
        return (f"wrote {self.path} ({self.size / 1e6:.1f} MB): {info['checkpoint']} at step {info['step']} "
                f"(sha256 {info['files'][WEIGHTS]['sha256'][:12]}), channels {', '.join(info['channel_names'])}, "
                f"spacing {spacing}, threshold {info['threshold']:g}{metrics}")


# ------------------------------------------------------------------ importing
def import_model(package: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Check ``package`` (:func:`read_package`) and unpack it into the run folder ``out``, which ``predict -m``
    and ``load_model`` take. Written into a hidden folder beside ``out`` and moved into place whole.

    Raises:
        MedTextSegError: the package is refused; ``out`` exists (a non-empty folder, or a file) without
            ``overwrite``, or, with it, holds something an import did not write (never deleted).
    """
    package, out = Path(package), Path(out)
    checked = read_package(package)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        if not overwrite:
            raise MedTextSegError(f"-o {out}: already exists; choose a new folder, or --overwrite to replace a "
                                  "model imported there before")
        if not out.is_dir() or not _imported_here(out):
            raise MedTextSegError(f"-o {out}: not a folder medtextseg import wrote ({METADATA} of a model package "
                                  "missing); --overwrite replaces only those, nothing here was deleted")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{PARTIAL_PREFIX}{out.name}-", dir=out.parent))
    try:
        os.chmod(partial, 0o777 & ~_umask())  # mkdtemp makes it owner-only; the folder is the user's
        for name, data in checked.files.items():  # names are the fixed list above, never the archive's own
            target = partial / name
            target.parent.mkdir(exist_ok=True)
            target.write_bytes(data)
        swap_folder_in(partial, out, REPLACED_PREFIX)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out


def _imported_here(folder: Path) -> bool:
    try:
        section = json.loads((folder / METADATA).read_text(encoding="utf-8")).get("medtextseg", {})
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(section, dict) and section.get("format") == PACKAGE_FORMAT


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------ exporting
def export_model(run: str | Path, out: str | Path, checkpoint: str = "best", evaluation: str | Path | None = None,
                 overwrite: bool = False) -> ExportSummary:
    """Write the model package of a run folder to ``out`` (a ``.zip``), atomically.

    Args:
        run: a run folder ``medtextseg train`` wrote.
        out: the package to write; it must end in ``.zip``.
        checkpoint: ``best`` (``best.pt``) or ``last`` (``last.pt``, without its optimiser and RNG state).
        evaluation: an evaluation folder (``medtextseg evaluate -o``) whose ``summary.json`` goes in.
        overwrite: replace ``out`` if it exists.

    Raises:
        MedTextSegError: not a run folder, a checkpoint that would run code or lacks what prediction needs, an
            evaluation folder without a readable ``summary.json``, ``out`` not a ``.zip`` or already there.
    """
    run, out = Path(run), Path(out)
    if checkpoint not in ("best", "last"):
        raise MedTextSegError(f"--checkpoint must be best or last, got {checkpoint!r}")
    if not run.is_dir():
        raise MedTextSegError(f"{run}: not a run folder (export takes the folder medtextseg train wrote)")
    if out.suffix.lower() != ".zip":
        raise MedTextSegError(f"-o {out}: a model package is a .zip file; give a name ending in .zip")
    if out.is_dir():
        raise MedTextSegError(f"-o {out}: is a folder; give the .zip file to write")
    if out.exists() and not overwrite:
        raise MedTextSegError(f"-o {out}: already exists; choose another name, or --overwrite to replace it")
    source = run / f"{checkpoint}.pt"
    if not source.is_file():
        raise MedTextSegError(f"{run}: no {source.name} (has training finished a validation?)")
    state = load_checkpoint(source)  # weights only: a hostile run is refused here too
    if type(state.get("text_dim")) is not int:
        raise MedTextSegError(f"{source}: no 'text_dim'; not a checkpoint medtextseg train wrote")
    try:
        config = Config.from_dict(state["config"])
    except MedTextSegError as error:
        raise MedTextSegError(f"{source}: its config: {error}") from None
    summary = _evaluation_rows(Path(evaluation)) if evaluation is not None else None

    kept = {key: state[key] for key in KEPT_STATE if key in state}
    if checkpoint == "best" and kept.keys() == state.keys():
        weights = source.read_bytes()  # as train wrote it: its digest is the run's own
    else:
        buffer = io.BytesIO()
        torch.save(kept, buffer)
        weights = buffer.getvalue()
    files = {WEIGHTS: weights, CONFIG: config.to_yaml().encode("utf-8")}
    for name in (PLAN, CALIBRATION):
        if (run / name).is_file():
            files[name] = (run / name).read_bytes()
    if summary is not None:
        files[EVALUATION] = (json.dumps(summary, indent=1) + "\n").encode("utf-8")
    calibration = read_json(run / CALIBRATION, expect_object=True) if CALIBRATION in files else None
    metadata = _metadata(run, f"{checkpoint}.pt", kept, config, calibration, summary)
    files[CARD] = model_card(metadata).encode("utf-8")
    metadata["medtextseg"]["files"] = {name: {"sha256": sha256(data), "bytes": len(data)}
                                       for name, data in sorted(files.items())}
    files[METADATA] = (json.dumps(metadata, indent=1) + "\n").encode("utf-8")
    with atomic_path(out) as tmp:
        with zipfile.ZipFile(tmp, "w") as archive:
            for name in MEMBERS:
                if name in files:
                    info = zipfile.ZipInfo(name, ZIP_TIME)
                    info.external_attr = (stat.S_IFREG | 0o644) << 16
                    # the weights are stored: torch's own zip of raw tensors, read back without inflating
                    info.compress_type = zipfile.ZIP_STORED if name == WEIGHTS else zipfile.ZIP_DEFLATED
                    archive.writestr(info, files[name])
    return ExportSummary(out, out.stat().st_size, metadata)


def _evaluation_rows(folder: Path) -> list[dict[str, Any]]:
    """The rows of ``folder/summary.json`` (one per prompt kind, ``overall`` last), checked to be that."""
    rows = read_json(folder / "summary.json", "--eval takes the folder medtextseg evaluate -o wrote")
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) and "group" in r for r in rows):
        raise MedTextSegError(f"{folder / 'summary.json'}: not an evaluation summary (a list of rows with 'group', "
                              "as medtextseg evaluate writes)")
    return rows


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return ""


def _modality(channel_names: list[str]) -> str:
    """MONAI's ``modality`` from the channel names: CT, MR, or "unknown" when the names do not say."""
    from medtextseg.data.planning import is_ct_channel

    words = [set(re.findall(r"[a-z0-9]+", name.lower())) for name in channel_names]
    if channel_names and all(is_ct_channel(name) for name in channel_names):
        return "CT"
    if channel_names and all(w & MR_WORDS for w in words):
        return "MR"
    return "unknown"


def _training_data(config: Config) -> dict[str, Any]:
    """Name, description, labels and a few prompts per kind of the training dataset, when it is still there
    (the card says what the model segments); empty when it is not."""
    root = Path(config.data.root) if config.data.root else None
    if root is None or not (root / "dataset.json").is_file():
        return {}
    try:
        meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
        examples: dict[str, list[str]] = {}
        if (root / "prompts.jsonl").is_file():
            with open(root / "prompts.jsonl", encoding="utf-8") as handle:
                for number, line in enumerate(handle):
                    if number >= 100_000:  # enough to find examples; a huge file is not read through
                        break
                    item = json.loads(line) if line.strip() else {}
                    kind, prompt = str(item.get("kind", "other")), item.get("prompt")
                    if isinstance(prompt, str) and prompt not in examples.setdefault(kind, []) \
                            and len(examples[kind]) < 3:
                        examples[kind].append(prompt)
    except (OSError, ValueError, AttributeError):
        return {}  # the card is still written, without this
    labels = meta.get("labels") if isinstance(meta, dict) else None
    return {"name": str(meta.get("name", "")), "description": str(meta.get("description", "")),
            "labels": {str(k): v for k, v in labels.items()} if isinstance(labels, dict) else {},
            "example_prompts": examples}


def _metadata(run: Path, checkpoint: str, state: dict[str, Any], config: Config, calibration: dict | None,
              summary: list[dict[str, Any]] | None) -> dict[str, Any]:
    """metadata.json after the MONAI bundle convention, with the ``medtextseg`` section (``files`` added after)."""
    import monai
    import numpy

    from medtextseg import __version__

    channels = [str(c) for c in state.get("channel_names") or []] or \
        [f"channel {i}" for i in range(config.image_channels)]
    dims = config.model.spatial_dims
    kinds = sorted(kind for kind, weight in config.data.kind_weights.items() if weight > 0)
    data = _training_data(config)
    what = data.get("name") or run.name
    overall = next((row for row in (summary or []) if row.get("group") == "overall"), None)
    step, best = state.get("step"), state.get("best")
    spacing = " x ".join(f"{s:g}" for s in config.data.spacing) + " mm" if config.data.spacing else "its own spacing"
    blocks = ", ".join(config.model.blocks) or "none"
    section = {
        "format": PACKAGE_FORMAT, "medtextseg_version": __version__,
        "run": run.name, "checkpoint": checkpoint, "step": step,
        "validation_dice": best if checkpoint == "best.pt" and isinstance(best, float) and math.isfinite(best)
        else None,
        "weights": WEIGHTS,
        "text_encoder": {"name": state.get("text_encoder"), "dim": state["text_dim"],
                         "config": config.text.encoder, "max_tokens": config.text.max_tokens},
        "channel_names": channels, "spatial_dims": dims,
        "spacing": config.data.spacing, "patch_size": config.data.patch_size,
        "threshold": config.inference.threshold, "presence_threshold": config.inference.presence_threshold,
        "presence_calibration": None if calibration is None else
        {key: calibration.get(key) for key in ("split", "chosen", "previous", "stability", "rule")},
        "mirror_axes": config.inference.mirror_axes, "min_component_voxels": config.inference.min_component_voxels,
        "preset": config.preset, "text_blocks": list(config.model.blocks), "head": config.model.head,
        "prompt_kinds": kinds, "training_data": data,
        "evaluation": None if summary is None else [{key: row.get(key) for key in CARD_METRICS} for row in summary],
    }
    metrics = {} if overall is None else {f"mean_{name}": overall.get(f"{name}_mean")
                                          for name in ("dice", "iou", "hd95", "nsd") if f"{name}_mean" in overall}
    image = {"type": "image", "format": "magnitude", "modality": _modality(channels),
             "num_channels": len(channels), "spatial_shape": config.data.patch_size, "dtype": "float32",
             "value_range": [], "is_patch_data": True,
             "channel_def": {str(i): name for i, name in enumerate(channels)}}
    return {
        "schema": MONAI_META_SCHEMA,
        "version": "1.0.0",
        "changelog": {"1.0.0": f"exported by medtextseg {__version__} from run {run.name} ({checkpoint}, step {step})"},
        "monai_version": monai.__version__, "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "required_packages_version": {"medtextseg": __version__, "nibabel": _version("nibabel"),
                                      "SimpleITK": _version("SimpleITK"), "transformers": _version("transformers")},
        "optional_packages_version": {},
        "task": f"Text-guided segmentation of {what} ({dims}D, {', '.join(channels)}): the mask of what a prompt "
                "in plain language names",
        "description": f"A medtextseg {config.preset} model (text blocks: {blocks}; {config.model.head} head) "
                       f"trained for {step} steps on {what}; images resampled to {spacing}; "
                       f"prompts encoded by {state.get('text_encoder')} ({state['text_dim']}-d).",
        "authors": "", "copyright": "",
        "data_source": data.get("name", ""),
        "image_classes": f"{len(channels)} channels ({', '.join(channels)}), one file each, on one grid",
        "label_classes": "one binary mask per prompt: 1 is what the prompt names, 0 everything else",
        "pred_classes": "one probability map per prompt in [0, 1]; the mask is probability > "
                        f"{config.inference.threshold:g}",
        "eval_metrics": metrics,
        "intended_use": "Research; not validated for clinical use",
        "network_data_format": {
            "inputs": {"image": image,
                       "prompt": {"type": "string", "format": "plain language", "description": "what to segment"}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 1,
                                 "spatial_shape": config.data.patch_size, "dtype": "float32", "value_range": [0, 1],
                                 "is_patch_data": True, "channel_def": {"0": "what the prompt names"}}}},
        "medtextseg": section,
    }


def _cell(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def model_card(metadata: dict[str, Any]) -> str:
    """The package's README.md: what the model segments, its inputs, settings, metrics and how to use it."""
    info = metadata["medtextseg"]
    channels, data = info["channel_names"], info["training_data"]
    spacing = " x ".join(f"{s:g}" for s in info["spacing"]) + " mm" if info["spacing"] else "each image's own"
    encoder = info["text_encoder"]
    calibration = info["presence_calibration"]
    notes = ["no presence gate"] if info["presence_threshold"] == 0 else []
    if calibration and calibration.get("chosen") == info["presence_threshold"]:
        notes.append(f"chosen on the {calibration.get('split')!r} split by calibrate-presence, the same in "
                     f"{calibration.get('stability', 0):.0%} of bootstrap resamples")
    presence = f"{info['presence_threshold']:g}" + (f" ({'; '.join(notes)})" if notes else "")
    local_encoder = encoder["config"] != "minilm"
    per_file = "a volume" if info["spatial_dims"] == 3 else "one slice"
    lines = [f"# medtextseg model: {data.get('name') or info['run']}", "",
             metadata["description"], "",
             "Give it an image (one file per channel, in the order below, on one grid) and a prompt in plain "
             "language; it answers with the mask of what the prompt names, on the input's own grid.", "",
             "| | |", "|---|---|",
             f"| channels | {', '.join(f'{i}: {name}' for i, name in enumerate(channels))} |",
             f"| dimensions | {info['spatial_dims']}D ({per_file} per file) |",
             f"| resampled to | {spacing} (outputs are written back on the input's grid) |",
             f"| sliding window | {' x '.join(str(p) for p in info['patch_size'])} voxels |",
             f"| mask threshold | {info['threshold']:g} (probability above which a voxel is in the mask) |",
             f"| presence threshold | {presence} |",
             f"| text encoder | {encoder['name']} ({encoder['dim']}-d prompt embeddings; text.encoder "
             f"`{encoder['config']}`) |",
             f"| prompt kinds trained on | {', '.join(info['prompt_kinds']) or '–'} |",
             f"| weights | {info['checkpoint']} of run `{info['run']}` at step {info['step']}"
             + (f" (validation Dice {info['validation_dice']:.3f})" if info.get("validation_dice") is not None else "")
             + "; SHA-256 in metadata.json |",
             f"| preset | {info['preset']} (text blocks: {', '.join(info['text_blocks']) or 'none'}; "
             f"{info['head']} head) |",
             f"| made with | medtextseg {info['medtextseg_version']}, MONAI {metadata['monai_version']}, PyTorch "
             f"{metadata['pytorch_version']} |", ""]
    lines += ["## What it segments", ""]
    if data:
        if data.get("description"):
            lines += [f"Trained on {data['name']}: {data['description']}.", ""]
        labels = [name for name, value in data.get("labels", {}).items() if value != 0]
        if labels:
            lines += [f"Structures labelled in its training data: {', '.join(labels)}.", ""]
        examples = data.get("example_prompts", {})
        if examples:
            lines += ["Prompts of its training data, by kind:", ""]
            lines += [f"* {kind}{KIND_NOTES.get(kind, '')}: " + "; ".join(f'"{p}"' for p in prompts)
                      for kind, prompts in sorted(examples.items())]
            lines.append("")
    else:
        lines += ["The training dataset was not reachable at export: the prompt kinds above are all that is "
                  "recorded.", ""]
    lines += ["## Evaluation", ""]
    if info["evaluation"]:
        lines += ["| prompt kind | n | Dice | IoU | HD95 (mm) | absent answered empty |", "|---|---|---|---|---|---|"]
        for row in info["evaluation"]:
            lines.append(f"| {row.get('group')} | {row.get('n')} | {_cell(row.get('dice_mean'))} | "
                         f"{_cell(row.get('iou_mean'))} | {_cell(row.get('hd95_mean'), 2)} | "
                         f"{_cell(row.get('empty_correct'), 2)} |")
        lines += ["", f"From `medtextseg evaluate` as given to export (`{EVALUATION}` holds every column).", ""]
    else:
        lines += ["None packaged (`medtextseg export RUN --eval EVALUATION_FOLDER` adds it).", ""]
    example = " ".join(f"-i case_{i:04d}.nii.gz" for i in range(len(channels)))
    lines += ["## How to use", "", f"With medtextseg {info['medtextseg_version']} or later installed:", "", "```bash",
              f'medtextseg predict -m model.zip {example} -p "..." -o predictions',
              "medtextseg import model.zip -o models/this_model   # or unpack it into a run folder",
              "```", "", "```python", "from medtextseg import load_model, segment",
              'model = load_model("model.zip")',
              f'masks = segment([{", ".join(repr(f"case_{i:04d}.nii.gz") for i in range(len(channels)))}], '
              '["..."], model)', "```", ""]
    if local_encoder:
        lines += [f"The text encoder is the local folder `{encoder['config']}` on the machine it was trained on: "
                  "prediction needs the same model at that path.", ""]
    lines += ["## Limits", "",
              f"{metadata['intended_use']}. Authors, copyright and licence were not recorded at export. "
              "`config.yaml` keeps the paths of the machine it was trained on (`data.root`); prediction does not "
              "use them.", ""]
    return "\n".join(lines)


__all__ = ["ExportSummary", "export_model", "import_model", "model_card"]
