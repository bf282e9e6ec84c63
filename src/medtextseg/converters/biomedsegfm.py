"""BiomedSegFM (CVPR 2025 "Foundation Models for Text-guided 3D Biomedical Image Segmentation") -> class prompts.

Source layout (the challenge's training data, ``junma/CVPR-BiomedSegFM`` on Hugging Face, also BiomedParse v2's
fine-tuning format):

* one ``.npz`` per case under ``src``, in a folder named after its dataset, e.g.
  ``3D_train_npz_random_10percent_16G/CT/CT_AbdTumor/{case}.npz`` (BiomedParse: ``{dataset}/train/{case}.npz``),
  holding ``imgs`` (Z, Y, X) intensities (uint8 0-255 in the challenge), ``gts`` (Z, Y, X) integer labels and
  ``spacing`` (three numbers, see Geometry). Other arrays are ignored; nothing is unpickled.
* the class prompts, ``CVPR25_TextSegFMData_with_class.json`` (challenge) or ``class_prompts.json`` (BiomedParse),
  found in ``src`` or one of its parent folders, or given with ``prompts=PATH``::

      {"CT_AbdTumor": {"1": ["Liver", "Liver in abdominal CT", ...], "2": [...], "instance_label": 0}, ...}

  ``instance_label`` 0: ``gts`` is a semantic map, value ``"1"`` is the class of key ``"1"``; 1: ``gts`` numbers
  the instances (lesion #1, #2, ...) of the dataset's one class. A file holding one dataset's entry alone
  (``{"1": [...], "instance_label": 0}``) is read too, for every ``.npz`` under ``src``.

A case's dataset is its nearest folder (``src`` included) named after a key of the JSON; one dataset is converted
at a time, since label values mean different things in different datasets: ``dataset=NAME`` picks it (and takes
every ``.npz`` under ``src`` when no folder there is named ``NAME``), else the only one found is taken.

Geometry (an assumption, documented by the format's makers only through their code): the challenge's npz were made
like MedSAM's, ``imgs = sitk.GetArrayFromImage(image)`` and ``spacing = image.GetSpacing()`` with no transpose
(bowang-lab/MedSAM#401), so ``imgs`` is (z, y, x) while ``spacing`` is (x, y, z). Voxel (i, j, k) of the output is
``imgs[k, j, i]`` and its size ``spacing[0], spacing[1], spacing[2]``. Direction and origin are not stored: the
affine is the one SimpleITK gives that array and spacing (identity direction in ITK's LPS world, origin 0), in
RAS ``diag(-sx, -sy, sz)``, i.e. the NIfTI that ``sitk.GetImageFromArray(imgs)`` + ``SetSpacing(spacing)`` writes.
Left and right therefore follow the array, not the patient. ``spacing_order=zyx`` reads ``spacing`` as (z, y, x)
for npz files made otherwise. A file written by :func:`~medtextseg.converters.biomedsegfm_export.export_biomedsegfm`
also holds ``medtextseg_affine``, the exact affine, which is used instead.

Output (3D): channel named after the dataset's modality prefix (``CT_...`` -> ``CT``, else ``image``), images as
float32, labels as in ``gts``. Each label value of the JSON is a class, named from its first prompt text (a text
filling a built-in template, "segment the liver", gives the name inside it: ``liver``); ``prompt_vocabulary.json``
holds the texts as the class's synonyms with the one template ``{name}``, so training rewords a prompt among
exactly the given texts, and the first text is the stored prompt. Per case:

* semantic datasets: one ``anatomy`` line per class present (target its value) and one ``absent`` line per class
  missing (target ``[]``);
* instance datasets: labels ``{class}_1`` .. ``{class}_{max_instances}``; one line, kind ``all`` with every instance
  of the case as target (``absent``, target ``[]``, when it has none), ``meta.instances`` their number.

Every line has ``meta.source_file``. Splits are 80/10/10 by a hash of the case id (the format records no patient).
A case that cannot be read, lacks ``gts``, holds a label value the JSON does not declare or more instances than
``max_instances`` is skipped with the reason and its file named.

Options (``--option KEY=VALUE``): ``prompts=PATH``, ``dataset=NAME``, ``spacing_order=xyz|zyx`` (``xyz``),
``max_instances=N`` (255). Only ``--spatial-dims 3``; for 2D slices, convert the output again with the
``nnunet`` converter and ``--spatial-dims 2``.

Not read: the challenge's validation inputs (``3D_val_npz``: ``imgs``, ``spacing`` and a pickled ``text_prompts``
per case, the labels in a separate ``3D_val_gt`` folder).

Example:
    >>> summary = convert_biomedsegfm(Path("CVPR-BiomedSegFM/3D_train_npz_random_10percent_16G/CT/CT_AbdTumor"),
    ...                               Path("data/ct_abdtumor"))  # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import numpy as np

from medtextseg.converters.option_values import ConverterOptions, integer_in, one_of, optional_path, optional_text
from medtextseg.converters.registry import register
from medtextseg.utils.errors import MedTextSegError, refuse_same_folder

if TYPE_CHECKING:
    from medtextseg.converters.writer import ConversionSummary, DatasetWriter
    from medtextseg.data.vocabulary import PromptVocabulary

CONVERTER = "biomedsegfm"
PROMPT_FILES = ("CVPR25_TextSegFMData_with_class.json", "class_prompts.json")
INSTANCE_KEY = "instance_label"
AFFINE_KEY = "medtextseg_affine"  # written by our export: the exact voxel -> RAS affine of the case
IDENTITY_TEMPLATE = "{name}"
MODALITIES = ("CT", "MR", "MRI", "PET", "US", "Microscopy")


@dataclass
class ClassPrompts:
    """One dataset's entry of the prompts JSON: label value -> its prompt texts, and the kind of label map."""

    dataset: str
    texts: dict[int, list[str]]
    instance_label: bool


# -------------------------------------------------------------------- the prompts JSON
def find_prompt_file(src: Path) -> Path:
    """The prompts JSON in ``src`` or its nearest parent folder holding one.

    Raises:
        MedTextSegError: none found.
    """
    for folder in [src, *src.resolve().parents]:
        for name in PROMPT_FILES:
            if (folder / name).is_file():
                return folder / name
    raise MedTextSegError(f"{src}: no {' or '.join(PROMPT_FILES)} here or in a parent folder; pass "
                          "--option prompts=PATH")


def _is_entry(value: Any) -> bool:
    return isinstance(value, dict) and any(str(k).isdigit() for k in value)


def parse_entry(dataset: str, entry: Any, where: str) -> ClassPrompts:
    """One dataset's ``{"1": [texts], ..., "instance_label": 0}`` (a single text is taken as a list of one).

    Raises:
        MedTextSegError: no label value, a value without text, an instance entry with several classes.
    """
    if not _is_entry(entry):
        raise MedTextSegError(f"{where}: {dataset!r} must map label values (\"1\", \"2\", ...) to prompt texts")
    texts: dict[int, list[str]] = {}
    for key, value in entry.items():
        if not str(key).isdigit() or int(key) == 0:
            continue  # instance_label, or keys this reader does not know
        words = [value] if isinstance(value, str) else value
        if not isinstance(words, list) or not words or not all(isinstance(w, str) and w.strip() for w in words):
            raise MedTextSegError(f"{where}: {dataset}.{key} must be a non-empty list of prompt texts")
        texts[int(key)] = [" ".join(w.split()) for w in words]
    instance = entry.get(INSTANCE_KEY, 0)
    if instance not in (0, 1, True, False):
        raise MedTextSegError(f"{where}: {dataset}.{INSTANCE_KEY} must be 0 or 1, got {instance!r}")
    if instance and len(texts) != 1:
        raise MedTextSegError(f"{where}: {dataset} is an instance-label dataset with {len(texts)} classes; "
                              "instance labels need exactly one")
    return ClassPrompts(dataset, dict(sorted(texts.items())), bool(instance))


# -------------------------------------------------------------------- finding the cases
def _dataset_of(path: Path, src: Path, names: set[str]) -> str | None:
    for folder in path.parents:
        if folder.name in names:
            return folder.name
        if folder == src:
            break
    return None


def find_cases(src: Path, prompts_path: Path, dataset: str | None) -> tuple[ClassPrompts, list[Path]]:
    """The chosen dataset's class prompts and its ``.npz`` files (sorted).

    Raises:
        MedTextSegError: no npz file, an unknown dataset, or several datasets and no ``dataset`` option.
    """
    from medtextseg.utils.json_files import read_json

    data = read_json(prompts_path, expect_object=True)
    files = sorted(p for p in src.rglob("*.npz") if not p.name.startswith("."))
    if not files:
        raise MedTextSegError(f"{src}: no .npz files")
    if _is_entry(data):  # one dataset's entry alone
        name = dataset or src.name
        return parse_entry(name, data, str(prompts_path)), files
    names = {str(k) for k, v in data.items() if _is_entry(v)}
    by_dataset: dict[str | None, list[Path]] = {}
    for path in files:
        by_dataset.setdefault(_dataset_of(path, src, names), []).append(path)
    if dataset is not None:
        if dataset not in names:
            close = difflib.get_close_matches(dataset, sorted(names), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise MedTextSegError(f"--option dataset={dataset}: not a dataset of {prompts_path}{hint}")
        chosen = by_dataset.get(dataset) or (files if set(by_dataset) == {None} else [])
        if not chosen:
            raise MedTextSegError(f"{src}: no .npz file of dataset {dataset!r} (a folder named so)")
        return parse_entry(dataset, data[dataset], str(prompts_path)), chosen
    found = sorted(d for d in by_dataset if d is not None)
    if len(found) != 1:
        listing = ", ".join(found) if found else f"none of the {len(names)} datasets of {prompts_path.name}"
        raise MedTextSegError(f"{src}: npz files of {listing} found; pass --option dataset=NAME (one at a time)")
    return parse_entry(found[0], data[found[0]], str(prompts_path)), by_dataset[found[0]]


# -------------------------------------------------------------------- classes and their vocabulary
def class_name_of(text: str) -> str:
    """A class name from a prompt text: the words inside a built-in template, else the text, normalised.

    >>> class_name_of("segment the left kidney"), class_name_of("Liver in abdominal CT")
    ('left_kidney', 'liver_in_abdominal_ct')
    """
    from medtextseg.data.vocabulary import normalise_class_name
    from medtextseg.data.vocabulary_tables import DEFAULT_TEMPLATES

    lowered = text.lower()
    parts = sorted((t.lower().partition(IDENTITY_TEMPLATE) for t in DEFAULT_TEMPLATES),
                   key=lambda p: -len(p[0] + p[2]))
    for before, _, after in parts:
        if lowered.startswith(before) and lowered.endswith(after) and len(lowered) > len(before + after):
            text = text[len(before): len(text) - len(after)]
            break
    return normalise_class_name(text) or "class"


def class_names(prompts: ClassPrompts) -> dict[int, str]:
    """Label value -> a unique class name (``background`` and repeats get the value appended)."""
    names: dict[int, str] = {}
    for value, texts in prompts.texts.items():
        name = class_name_of(texts[0])
        if name in names.values() or name == "background":
            name = f"{name}_{value}"
        names[value] = name
    return names


def _vocabulary(dst: Path, synonyms: dict[str, list[str]], overwrite: bool, where: str) -> PromptVocabulary:
    """The given texts as synonyms with the template ``{name}``, or the vocabulary already in ``dst``."""
    from medtextseg.converters.nnunet import output_vocabulary
    from medtextseg.data.vocabulary import PromptVocabulary

    return output_vocabulary(dst, list(synonyms), overwrite,
                             build=lambda: PromptVocabulary([IDENTITY_TEMPLATE], synonyms, where),
                             built_from="the prompts JSON")


# -------------------------------------------------------------------- one case
def itk_default_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """RAS affine of an ITK image with identity direction, origin 0 and ``spacing`` (x, y, z)."""
    return np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])


def read_case(path: Path, spacing_order: str = "xyz") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One npz case as (image ``[X, Y, Z]`` float32, label ``[X, Y, Z]`` int64, affine 4 x 4 RAS).

    Raises:
        MedTextSegError: not an npz file, a missing array, shapes that differ, non-integer labels, a bad spacing.
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [key for key in ("imgs", "gts", "spacing") if key not in npz.files]
            if missing:
                raise MedTextSegError(f"{path.name}: no {missing[0]!r} array (it holds {', '.join(npz.files)})")
            imgs, gts, spacing = npz["imgs"], npz["gts"], np.asarray(npz["spacing"], dtype=float).reshape(-1)
            affine = np.asarray(npz[AFFINE_KEY], dtype=float) if AFFINE_KEY in npz.files else None
    except MedTextSegError:
        raise
    except Exception as error:  # a damaged file raises BadZipFile, ValueError, OSError, EOFError, ...
        raise MedTextSegError(f"{path.name}: cannot read ({type(error).__name__})") from None
    if imgs.ndim != 3 or gts.shape != imgs.shape:
        raise MedTextSegError(f"{path.name}: imgs {imgs.shape} and gts {gts.shape} must be one (Z, Y, X) volume")
    if spacing.size != 3 or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise MedTextSegError(f"{path.name}: spacing {spacing.tolist()} must be three positive numbers")
    if not np.issubdtype(gts.dtype, np.integer) and np.any(gts != np.round(gts)):
        raise MedTextSegError(f"{path.name}: gts has non-integer values")
    sizes = tuple(float(s) for s in (spacing if spacing_order == "xyz" else spacing[::-1]))
    if affine is None or affine.shape != (4, 4) or not np.allclose(np.linalg.norm(affine[:3, :3], axis=0), sizes,
                                                                    rtol=1e-4):
        affine = itk_default_affine(sizes)  # ours is kept only when it agrees with the spacing
    return imgs.transpose(2, 1, 0).astype(np.float32), gts.transpose(2, 1, 0).astype(np.int64), affine


def _prompts(prompts: ClassPrompts, names: dict[int, str], label: np.ndarray, vocabulary: PromptVocabulary,
             meta: dict[str, Any], max_instances: int, where: str) -> list[dict[str, Any]]:
    """The case's prompt lines (see the module docstring).

    Raises:
        MedTextSegError: an undeclared label value, or more instances than ``max_instances``.
    """
    from medtextseg.converters.nnunet import prompt_lines

    present = set(np.unique(label).tolist()) - {0}
    if prompts.instance_label:
        if present and max(present) > max_instances:
            raise MedTextSegError(f"{where}: instance {max(present)} exceeds max_instances={max_instances} "
                                  "(raise it with --option max_instances=N)")
        name = names[next(iter(prompts.texts))]
        return [{"prompt": vocabulary.canonical(name), "target": sorted(present),
                 "kind": "all" if present else "absent", "class": name, "meta": {**meta, "instances": len(present)}}]
    undeclared = sorted(present - set(prompts.texts))
    if undeclared:
        raise MedTextSegError(f"{where}: label value {undeclared[0]} has no prompt in the JSON entry "
                              f"{prompts.dataset!r} (values {', '.join(map(str, prompts.texts))})")
    classes = {names[value]: (value,) for value in prompts.texts}
    return prompt_lines(classes, present, vocabulary, meta)


def _convert_case(writer: DatasetWriter, path: Path, case: str, src: Path, prompts: ClassPrompts,
                  names: dict[int, str], vocabulary: PromptVocabulary, spacing_order: str, max_instances: int) -> None:
    if writer.is_done(case):
        return
    image, label, affine = read_case(path, spacing_order)
    meta = {"source_file": str(path.relative_to(src))}
    lines = _prompts(prompts, names, label, vocabulary, meta, max_instances, path.name)
    writer.write_case(case, [image], affine, label, lines)


# -------------------------------------------------------------------- the conversion
class BiomedSegFMOptions(ConverterOptions):
    """``prompts`` (the class prompts JSON; found by :func:`find_prompt_file` when not given), ``dataset``,
    ``spacing_order`` (``xyz`` or ``zyx``) and ``max_instances``."""

    converter: ClassVar[str] = CONVERTER
    prompts: Annotated[Path | None, optional_path()] = None
    dataset: Annotated[str | None, optional_text()] = None
    spacing_order: Annotated[str, one_of("xyz", "zyx")] = "xyz"
    max_instances: Annotated[int, integer_in(1)] = 255


def _case_id(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem)


@register(CONVERTER, "BiomedSegFM / CVPR 2025 text-guided 3D segmentation challenge (.npz imgs, gts, spacing + "
                     "class prompts JSON) -> one prompt per case and class, the given texts as synonyms")
def convert_biomedsegfm(src: Path, dst: Path, *, overwrite: bool = False, spatial_dims: int = 3,
                        **options: Any) -> ConversionSummary:
    """Convert one dataset of BiomedSegFM npz files (see the module docstring for the layout and options).

    Args:
        src: a folder holding the dataset's ``.npz`` files (at any depth).
        dst: the dataset folder to write (resumable: cases already written are kept).
        overwrite: rewrite every case.
        spatial_dims: 3 (2 is refused).
        **options: ``prompts``, ``dataset``, ``spacing_order``, ``max_instances``.

    Returns:
        The :class:`ConversionSummary`: cases converted now, already done, skipped with why.

    Raises:
        MedTextSegError: a bad option or prompts JSON, no npz file, or ``dst`` written with other options.
    """
    from medtextseg.converters.writer import DatasetWriter, check_conversion_options, record_conversion_options
    from medtextseg.data.layout import hash_split

    if spatial_dims != 3 or isinstance(spatial_dims, bool):
        raise MedTextSegError(f"{CONVERTER} converter: --spatial-dims {spatial_dims} is not supported; convert in "
                              "3D, then slice with `medtextseg convert nnunet --spatial-dims 2`")
    src, dst = Path(src), Path(dst)
    refuse_same_folder(src, dst)
    opts = BiomedSegFMOptions.parse(options)
    prompts_path = opts.prompts or find_prompt_file(src)
    dataset, spacing_order, max_instances = opts.dataset, opts.spacing_order, opts.max_instances
    prompts, files = find_cases(src, prompts_path, dataset)
    names = class_names(prompts)
    fingerprint = {"dataset": prompts.dataset, "spacing_order": spacing_order, "max_instances": max_instances,
                   "instance_label": int(prompts.instance_label)}
    record_conversion_options(check_conversion_options(dst, CONVERTER, fingerprint, overwrite), fingerprint)
    vocabulary = _vocabulary(dst, {names[v]: texts for v, texts in prompts.texts.items()}, overwrite,
                             f"{prompts_path}: {prompts.dataset}")
    if prompts.instance_label:
        name = names[next(iter(prompts.texts))]
        labels = {"background": 0, **{f"{name}_{i}": i for i in range(1, max_instances + 1)}}
    else:
        labels = {"background": 0, **{names[v]: v for v in prompts.texts}}
    prefix = prompts.dataset.split("_")[0]
    channel = next((m for m in MODALITIES if m.lower() == prefix.lower()), "image")
    writer = DatasetWriter(dst, prompts.dataset, [channel], labels, 3, overwrite,
                           extra={"converter": CONVERTER, "source": str(src), "prompts": str(prompts_path),
                                  "instance_label": int(prompts.instance_label), "spacing_order": spacing_order})
    items: list[tuple[str, Path]] = []  # (case id, or "case (path)" for a second file of that name; its file)
    seen: dict[str, Path] = {}
    for path in files:
        case = _case_id(path)
        items.append((case, path) if case not in seen else (f"{case} ({path.relative_to(src)})", path))
        seen.setdefault(case, path)

    def convert(item: tuple[str, Path]) -> None:
        case, path = item
        if seen[_case_id(path)] != path:
            raise MedTextSegError(f"same case name as {seen[_case_id(path)].relative_to(src)}")
        _convert_case(writer, path, case, src, prompts, names, vocabulary, spacing_order, max_instances)

    converted = writer.convert_each(items, convert, lambda item: item[0], file_name=lambda item: item[1].name)
    description = f"converted by medtextseg convert {CONVERTER} from {src} (dataset {prompts.dataset})"
    return writer.finish(splits=hash_split(list(converted)), description=description)


__all__ = ["AFFINE_KEY", "INSTANCE_KEY", "PROMPT_FILES", "BiomedSegFMOptions", "ClassPrompts", "class_name_of",
           "class_names", "convert_biomedsegfm", "find_cases", "find_prompt_file", "itk_default_affine", "parse_entry",
           "read_case"]
