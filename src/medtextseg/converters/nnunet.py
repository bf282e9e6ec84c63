"""Multi-class datasets as prompts: a labelled nnU-Net v2 raw dataset or a Medical Segmentation Decathlon task.

Every class of the label map becomes a prompt: per case, one ``anatomy`` line per class present (target = the
class's label values) and one ``absent`` line per class absent (target ``[]``), each with ``class`` set and the
class's canonical wording as ``prompt``; ``prompt_vocabulary.json`` holds the built-in radiologist wordings of
every class, for ``data.prompt_sampling``. Images and labels keep their grid (shape and affine); a 4D MSD image is
split into one file per channel.

Source layouts:

* ``nnunet``: ``dataset.json`` with ``channel_names`` and ``labels`` (name -> value, or name -> list of values for
  nnU-Net's region-based training, e.g. BraTS ``"whole tumor": [1, 2, 3]``: each region becomes a class whose
  target is the union), ``file_ending``, ``imagesTr/{case}_{0000..}{file_ending}``, ``labelsTr/{case}{file_ending}``.
* ``msd``: ``dataset.json`` with ``modality`` (index -> name), ``labels`` (value as a string -> name) and
  ``training: [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}]``; the image is 4D
  ``[X, Y, Z, channel]`` for several modalities (Task01_BrainTumour, Task05_Prostate), 3D for one. An nnU-Net v1
  task (same dataset.json, images already split into ``x_0000.nii.gz``...) is read too.

Options (``--option KEY=VALUE``):

* ``rename=OLD:NEW,...``: rename classes, e.g. MSD Task03_Liver ``rename=cancer:liver_tumour`` (the new name picks
  its wording from the built-in tables).
* ``regions=NAME:V+V+...,...``: add classes that are unions of label values, e.g. BraTS in MSD numbering
  ``regions=whole_tumour:1+2+3,tumour_core:2+3``.
* ``slices=foreground|all`` (``--spatial-dims 2`` only): keep the axial slices with a labelled voxel (default) or all.
* ``affine_tolerance=MM``: how far a label's affine may differ from its image's (default 0.001); the image's is kept.

With ``--spatial-dims 2`` every axial slice (third voxel axis) is a case ``{case}_z{k:03d}`` with its own affine;
the splits are drawn per source case, so the slices of one patient never straddle train and test.

Not handled yet: nnU-Net ``ignore`` labels (sparse annotation; refused with a message), 2D PNG/TIFF datasets,
``imagesTs`` (no labels to make prompts from).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import numpy as np

from medtextseg.converters.option_values import ConverterOptions, number_in, one_of, rule
from medtextseg.converters.registry import register
from medtextseg.utils.errors import MedTextSegError, refuse_same_folder
from medtextseg.utils.json_files import read_json

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from medtextseg.converters.writer import ConversionSummary, DatasetWriter
    from medtextseg.data.vocabulary import PromptVocabulary

READABLE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass
class SourceCase:
    """One labelled case of the source: its image files (one per channel, or one 4D file) and label file."""

    case: str
    image_paths: list[Path]
    label_path: Path | None
    problem: str = ""  # why it cannot be converted, found while listing (a missing file)
    # source label value -> output value, for a layout whose label file holds other values than the output's
    # (LA2018 stores its mask as 0/255, BraTS 2021 the enhancing tumour as 4); only these values may occur
    label_values: dict[int, int] | None = None
    # a layout without one image file per channel and a label file (DICOM slices + PNG masks) reads its case itself:
    # () -> (channels, each [X, Y, Z]; affine 4 x 4; label [X, Y, Z] int64 of declared values), as load_case returns
    reader: Callable[[], tuple[list[np.ndarray], np.ndarray, np.ndarray]] | None = None
    # a source that pools several images of one patient (CHAOS sequences) as cases: the split group (default: the
    # case), the label values its masks annotate (None: all; a class with another value gets no prompt here, e.g.
    # CHAOS CT masks only the liver) and meta for each of its prompt lines (e.g. {"sequence": "T2SPIR"})
    group: str = ""
    annotated: frozenset[int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class SourceDataset:
    """What the converter needs from a source folder, whichever its layout.

    ``classes`` maps a class name to its label values (one value, or several for a region); ``values`` lists
    every label value a label map may hold (0 included). ``value_names`` names, in the output's dataset.json, the
    values that no single-value class names (else ``label_{v}``). ``slice_axis`` is the voxel axis that
    ``--spatial-dims 2`` slices along: 2, or 0 for a layout that stores its axial slices first (KiTS19).
    """

    name: str
    channel_names: list[str]
    classes: dict[str, tuple[int, ...]]
    values: list[int]
    cases: list[SourceCase] = field(default_factory=list)
    four_d: bool = False
    value_names: dict[int, str] = field(default_factory=dict)
    slice_axis: int = 2


# -------------------------------------------------------------------- reading the source layouts
def _require(meta: dict[str, Any], key: str, path: Path, layout: str) -> Any:
    if key not in meta:
        raise MedTextSegError(f"{path}: missing key {key!r} (not an {layout} dataset.json?)")
    return meta[key]


def _ordered_names(mapping: Any, path: Path, key: str) -> list[str]:
    if not isinstance(mapping, dict) or not mapping:
        raise MedTextSegError(f"{path}: {key} must be a non-empty object of index -> name")
    try:
        return [str(mapping[str(i)]) for i in range(len(mapping))]
    except KeyError:
        raise MedTextSegError(f"{path}: {key} keys must be '0'..'{len(mapping) - 1}', got {sorted(mapping)}") from None


def _check_ending(ending: str, path: Path) -> None:
    if not ending.lower().endswith(READABLE_ENDINGS):
        raise MedTextSegError(f"{path}: file_ending {ending!r} is not supported yet (supported: "
                              f"{', '.join(READABLE_ENDINGS)})")


def _case_id(path: Path, ending: str) -> str:
    return path.name[: -len(ending)]


def read_nnunet_source(src: Path) -> SourceDataset:
    """Read a labelled nnU-Net v2 raw dataset folder (dataset.json, imagesTr/, labelsTr/)."""
    path = src / "dataset.json"
    meta = read_json(path, "the source folder needs its dataset.json", expect_object=True)
    channel_names = _ordered_names(_require(meta, "channel_names", path, "nnU-Net v2"), path, "channel_names")
    labels = _require(meta, "labels", path, "nnU-Net v2")
    ending = str(_require(meta, "file_ending", path, "nnU-Net v2"))
    _check_ending(ending, path)
    if not isinstance(labels, dict):
        raise MedTextSegError(f"{path}: labels must be an object of name -> value")
    if "ignore" in labels:
        raise MedTextSegError(f"{path}: labels.ignore (nnU-Net sparse annotation) is not supported yet; "
                              "every voxel must be labelled")
    classes: dict[str, tuple[int, ...]] = {}
    values: set[int] = {0}
    for name, value in labels.items():
        members = value if isinstance(value, list | tuple) else [value]
        if not members or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in members):
            raise MedTextSegError(f"{path}: labels.{name} must be a non-negative integer or a list of them, "
                                  f"got {value!r}")
        values.update(members)
        members = tuple(sorted(set(members) - {0}))
        if members:
            classes[str(name)] = members
    cases: dict[str, SourceCase] = {}
    images = src / "imagesTr"
    if not images.is_dir():
        raise MedTextSegError(f"{images}: folder not found")
    suffix = len("_0000") + len(ending)
    for image in sorted(images.glob(f"*_0000{ending}")):
        case = image.name[:-suffix]
        if case.startswith("."):  # macOS resource forks (._case_0000.nii.gz) shipped in some archives
            continue
        paths = [images / f"{case}_{c:04d}{ending}" for c in range(len(channel_names))]
        missing = [p.name for p in paths if not p.is_file()]
        label = src / "labelsTr" / f"{case}{ending}"
        problem = (f"missing channel file {missing[0]}" if missing else
                   "" if label.is_file() else f"no label file labelsTr/{label.name}")
        cases[case] = SourceCase(case, paths, label if label.is_file() else None, problem)
    for label in sorted((src / "labelsTr").glob(f"*{ending}")):
        case = _case_id(label, ending)
        if case not in cases and not case.startswith("."):
            cases[case] = SourceCase(case, [], label, f"no image file imagesTr/{case}_0000{ending}")
    if not cases:
        raise MedTextSegError(f"{images}: no image files named {{case}}_0000{ending}")
    name = str(meta.get("name") or src.name)
    return SourceDataset(name, channel_names, classes, sorted(values), [cases[c] for c in sorted(cases)])


def read_msd_source(src: Path) -> SourceDataset:
    """Read a Medical Segmentation Decathlon task folder (dataset.json with modality, labels, training)."""
    path = src / "dataset.json"
    meta = read_json(path, "the source folder needs its dataset.json", expect_object=True)
    channel_names = _ordered_names(_require(meta, "modality", path, "MSD"), path, "modality")
    labels = _require(meta, "labels", path, "MSD")
    training = _require(meta, "training", path, "MSD")
    if not isinstance(labels, dict):
        raise MedTextSegError(f"{path}: labels must be an object of value -> name, e.g. {{\"1\": \"liver\"}}")
    classes: dict[str, tuple[int, ...]] = {}
    for key, name in labels.items():
        if not str(key).isdigit():
            raise MedTextSegError(f"{path}: labels key {key!r} must be a label value (\"0\", \"1\", ...)")
        if int(key) != 0:
            if str(name) in classes:
                raise MedTextSegError(f"{path}: label name {name!r} is used twice; rename one")
            classes[str(name)] = (int(key),)
    if not isinstance(training, list) or not training:
        raise MedTextSegError(f"{path}: training must be a non-empty list of {{\"image\", \"label\"}} entries")
    cases = []
    four_d = False
    for number, entry in enumerate(training):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise MedTextSegError(f"{path}: training[{number}] must have 'image' and 'label'")
        image, label = src / str(entry["image"]), src / str(entry["label"])
        ending = next((e for e in READABLE_ENDINGS if image.name.lower().endswith(e)), "")
        if not ending:
            raise MedTextSegError(f"{path}: training[{number}].image {image.name!r} is not a readable format "
                                  f"({', '.join(READABLE_ENDINGS)})")
        case = image.name[: -len(ending)]
        split = [image.parent / f"{case}_{c:04d}{ending}" for c in range(len(channel_names))]
        if image.is_file() or not split[0].is_file():  # MSD: one (4D) file; nnU-Net v1: one file per channel
            paths, problem = [image], "" if image.is_file() else f"image file {entry['image']} not found"
            four_d = four_d or len(channel_names) > 1
        else:
            missing = [p.name for p in split if not p.is_file()]
            paths, problem = split, f"missing channel file {missing[0]}" if missing else ""
        if not problem and not label.is_file():
            problem = f"label file {entry['label']} not found"
        cases.append(SourceCase(case, paths, label, problem))
    values = sorted({0} | {v for members in classes.values() for v in members})
    name = str(meta.get("name") or src.name)
    return SourceDataset(name, channel_names, classes, values, cases, four_d)


# -------------------------------------------------------------------- options
def _pairs(value: Any) -> tuple[tuple[str, str], ...]:
    """``"a:b, c:d"`` -> ``(("a", "b"), ("c", "d"))``."""
    pairs = []
    for item in filter(None, (part.strip() for part in str(value).split(","))):
        left, sep, right = item.partition(":")
        if not sep or not left.strip() or not right.strip():
            raise ValueError(item)
        pairs.append((left.strip(), right.strip()))
    return tuple(pairs)


def _regions(value: Any) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """``"whole_tumour:1+2+3"`` -> ``(("whole_tumour", (1, 2, 3)),)``."""
    return tuple((name, tuple(sorted({int(v) for v in text.split("+")}))) for name, text in _pairs(value))


class LabelledOptions(ConverterOptions):
    """The options of the converters of labelled layouts (see the module docstring)."""

    converter: ClassVar[str] = "nnunet"
    rename: Annotated[tuple[tuple[str, str], ...], rule("OLD:NEW,... e.g. cancer:liver_tumour", _pairs)] = ()
    regions: Annotated[tuple[tuple[str, tuple[int, ...]], ...],
                       rule("NAME:V+V,... e.g. whole_tumour:1+2+3", _regions)] = ()
    slices: Annotated[str, one_of("foreground", "all")] = "foreground"
    affine_tolerance: Annotated[float, number_in(0.0)] = 1e-3


OPTIONS = LabelledOptions.option_names()


def apply_options(source: SourceDataset, options: LabelledOptions) -> None:
    """Apply ``rename`` and ``regions`` to ``source.classes``.

    Raises:
        MedTextSegError: an unknown class or label value, a name taken twice.
    """
    for old, new in options.rename:
        if old not in source.classes:
            raise MedTextSegError(f"--option rename: no class {old!r}; classes are {', '.join(source.classes)}")
        if new in source.classes and new != old:
            raise MedTextSegError(f"--option rename: class {new!r} already exists")
        source.classes = {(new if name == old else name): v for name, v in source.classes.items()}
    for name, members in options.regions:
        undeclared = [v for v in members if v not in source.values or v == 0]
        if undeclared:
            raise MedTextSegError(f"--option regions: {name} names label value {undeclared[0]}, not a class "
                                  f"value of the dataset ({', '.join(map(str, source.values[1:]))})")
        if name in source.classes:
            raise MedTextSegError(f"--option regions: class {name!r} already exists")
        source.classes[name] = members


def output_labels(source: SourceDataset) -> dict[str, int]:
    """dataset.json labels of the output: a single-value class keeps its name, other values are named by
    ``source.value_names`` or ``label_{v}``."""
    named = {**source.value_names, **{members[0]: name for name, members in source.classes.items()
                                      if len(members) == 1}}
    labels = {"background": 0}
    for value in source.values:
        if value != 0:
            labels[named.get(value, f"label_{value}")] = value
    return labels


# -------------------------------------------------------------------- one case
def _spatial(array: np.ndarray) -> np.ndarray:
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return array


def load_case(source: SourceDataset, case: SourceCase, tolerance: float) -> tuple[list[np.ndarray], np.ndarray,
                                                                                  np.ndarray]:
    """Read one case: (channels, each [X, Y, Z] float; affine 4 x 4; label [X, Y, Z] int64).

    Raises:
        MedTextSegError: an unreadable file, a grid mismatch, or label values that are not declared integers.
    """
    from medtextseg.data.io import read_array, read_geometry

    if case.problem:
        raise MedTextSegError(case.problem)
    if case.reader is not None:
        return case.reader()
    reference = read_geometry(case.image_paths[0])
    channels: list[np.ndarray] = []
    for path in case.image_paths:
        geometry = read_geometry(path)
        if not geometry.same_grid(reference, tolerance):
            raise MedTextSegError(f"{path.name}: not on the grid of {case.image_paths[0].name}")
        array = _spatial(np.asarray(read_array(path)))
        if array.ndim == 4:
            channels += [array[..., c] for c in range(array.shape[3])]
        else:
            channels.append(array)
    if len(channels) != len(source.channel_names):
        raise MedTextSegError(f"{case.image_paths[0].name}: {len(channels)} channels, dataset.json declares "
                              f"{len(source.channel_names)} ({', '.join(source.channel_names)})")
    geometry = read_geometry(case.label_path)
    label = _spatial(np.asarray(read_array(case.label_path)))
    if label.shape != channels[0].shape:
        raise MedTextSegError(f"{case.label_path.name}: shape {label.shape} differs from the image's "
                              f"{channels[0].shape}")
    if not np.allclose(geometry.affine, reference.affine, atol=tolerance):
        raise MedTextSegError(f"{case.label_path.name}: affine differs from the image's by more than "
                              f"{tolerance} mm (see --option affine_tolerance)")
    if not np.all(np.isfinite(label)) or np.any(label != np.round(label)):
        raise MedTextSegError(f"{case.label_path.name}: label map has non-integer values")
    label = label.astype(np.int64)
    if case.label_values is not None:
        return channels, reference.affine, _map_values(label, case.label_values, case.label_path.name)
    undeclared = sorted(set(np.unique(label).tolist()) - set(source.values))
    if undeclared:
        raise MedTextSegError(f"{case.label_path.name}: label value {undeclared[0]} is not declared in "
                              f"dataset.json labels ({', '.join(map(str, source.values))})")
    return channels, reference.affine, label


def _map_values(label: np.ndarray, mapping: dict[int, int], name: str) -> np.ndarray:
    """``label`` with each source value replaced by ``mapping[value]``.

    Raises:
        MedTextSegError: a value of ``label`` that ``mapping`` does not list.
    """
    found, inverse = np.unique(label, return_inverse=True)
    unknown = [int(v) for v in found if int(v) not in mapping]
    if unknown:
        raise MedTextSegError(f"{name}: label value {unknown[0]} is not declared (this layout's label values: "
                              f"{', '.join(map(str, sorted(mapping)))})")
    return np.array([mapping[int(v)] for v in found], dtype=np.int64)[inverse].reshape(label.shape)


def prompt_lines(classes: dict[str, tuple[int, ...]], present: set[int], vocabulary: PromptVocabulary,
                 meta: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One line per class: ``anatomy`` (target = its values) when one of its values is present, else ``absent``."""
    lines = []
    for name, members in classes.items():
        found = bool(present & set(members))
        line = {"prompt": vocabulary.canonical(name), "target": list(members) if found else [],
                "kind": "anatomy" if found else "absent", "class": name}
        if meta:
            line["meta"] = dict(meta)
        lines.append(line)
    return lines


def _slice_affine(affine: np.ndarray, k: int, axis: int = 2) -> np.ndarray:
    """The affine of slice ``k`` along voxel ``axis``, whose two other axes become its first two (in order)."""
    order = [a for a in range(3) if a != axis] + [axis]
    moved = np.array(affine, dtype=float)
    moved[:3, :3] = np.asarray(affine, dtype=float)[:3, order]
    moved[:3, 3] = affine[:3, 3] + affine[:3, axis] * k
    return moved


def _axis_last(array: np.ndarray, axis: int) -> np.ndarray:
    """``array`` with its voxel ``axis`` moved last (a view), so that ``[:, :, k]`` is slice ``k`` along it."""
    return array if axis == 2 else np.moveaxis(array, axis, 2)


def _slice_ids(case: str, label: np.ndarray, slices: str) -> list[tuple[str, int]]:
    depth = label.shape[2]
    if depth == 1:
        return [(case, 0)]
    keep = range(depth) if slices == "all" else np.flatnonzero(label.reshape(-1, depth).any(0)).tolist()
    return [(f"{case}_z{k:03d}", k) for k in keep]


def case_classes(source: SourceDataset, case: SourceCase) -> dict[str, tuple[int, ...]]:
    """The classes ``case`` is prompted with: those whose label values its masks all annotate."""
    if case.annotated is None:
        return source.classes
    return {name: members for name, members in source.classes.items() if set(members) <= case.annotated}


def _convert_case(writer: DatasetWriter, source: SourceDataset, case: SourceCase, vocabulary: PromptVocabulary,
                  slices: str, tolerance: float) -> list[str]:
    """Write one source case (or its slices) unless done; return its output case ids."""
    from medtextseg.data.io import read_array

    classes = case_classes(source, case)
    if writer.spatial_dims == 3:
        if writer.is_done(case.case):
            return [case.case]
        channels, affine, label = load_case(source, case, tolerance)
        writer.write_case(case.case, channels, affine, label,
                          prompt_lines(classes, set(np.unique(label).tolist()), vocabulary, case.meta or None))
        return [case.case]
    if case.problem:
        raise MedTextSegError(case.problem)
    # 2D: the label says which slices there are; the image is read only when one of them is still to do
    axis = source.slice_axis
    loaded = load_case(source, case, tolerance) if case.reader is not None else None  # no label file to peek at
    label_map = loaded[2] if loaded else _spatial(np.asarray(read_array(case.label_path)))
    ids = _slice_ids(case.case, _axis_last(label_map, axis), slices)
    pending = [(name, k) for name, k in ids if not writer.is_done(name)]
    if pending:
        channels, affine, label = loaded or load_case(source, case, tolerance)
        channels, label = [_axis_last(c, axis) for c in channels], _axis_last(label, axis)
        for name, k in pending:
            part = label[:, :, k]
            meta = {"source_case": case.case, "slice": k, **case.meta}
            writer.write_case(name, [c[:, :, k] for c in channels], _slice_affine(affine, k, axis), part,
                              prompt_lines(classes, set(np.unique(part).tolist()), vocabulary, meta))
    return [name for name, _ in ids]


# -------------------------------------------------------------------- the conversion
def output_vocabulary(dst: Path, classes: list[str], overwrite: bool,
                      build: Callable[[], PromptVocabulary] | None = None,
                      built_from: str = "the built-in tables") -> PromptVocabulary:
    """The output's vocabulary: the one already in ``dst`` (it may have been edited), else ``build()`` (default:
    the built-in wordings of ``classes``), saved there. ``built_from`` names the source in the error message.

    Raises:
        MedTextSegError: the vocabulary in ``dst`` lacks one of ``classes``.
    """
    from medtextseg.data.vocabulary import VOCABULARY_FILE, PromptVocabulary, default_vocabulary_for

    path = dst / VOCABULARY_FILE
    if path.is_file() and not overwrite:
        vocabulary = PromptVocabulary.load(path)
        missing = [c for c in classes if c not in vocabulary]
        if missing:
            raise MedTextSegError(f"{path}: class {missing[0]!r} has no synonyms; add it, or pass --overwrite "
                                  f"to rebuild the vocabulary from {built_from}")
        return vocabulary
    vocabulary = build() if build is not None else default_vocabulary_for(classes)
    vocabulary.save(path)
    return vocabulary


def convert_labelled(source: SourceDataset, src: Path, dst: Path, converter: str, *, overwrite: bool,
                     spatial_dims: int, options: Mapping[str, Any] | LabelledOptions,
                     extra: Mapping[str, Any] | None = None) -> ConversionSummary:
    """Write ``source`` into ``dst`` case by case (resumable, idempotent; bad cases skipped with a reason).

    ``options``: ``--option`` strings or Python values, or options already parsed; ``extra``: more keys for the
    ``medtextseg`` object of dataset.json. The splits are drawn per ``SourceCase.group`` (default: per case).
    """
    from medtextseg.converters.writer import DatasetWriter, group_splits

    opts = options if isinstance(options, LabelledOptions) else LabelledOptions.parse(options, converter)
    apply_options(source, opts)
    slices, tolerance = opts.slices, opts.affine_tolerance
    if spatial_dims not in (2, 3):
        raise MedTextSegError(f"--spatial-dims must be 2 or 3, got {spatial_dims}")
    if not source.classes:
        raise MedTextSegError(f"{src / 'dataset.json'}: no label other than background, so nothing to prompt")
    refuse_same_folder(src, dst)
    vocabulary = output_vocabulary(dst, list(source.classes), overwrite)
    writer = DatasetWriter(dst, source.name, source.channel_names, output_labels(source), spatial_dims,
                           overwrite, extra={"converter": converter, "source": str(src), **(extra or {})})
    outputs = writer.convert_each(source.cases, lambda case: _convert_case(writer, source, case, vocabulary, slices,
                                                                         tolerance), lambda case: case.case)
    groups: dict[str, list[str]] = {}
    for case in source.cases:
        if case.case in outputs:
            groups.setdefault(case.group or case.case, []).extend(outputs[case.case])
    return writer.finish(splits=group_splits(groups), description=f"converted by medtextseg convert {converter} "
                                                                    f"from {src}", groups=groups)


def register_labelled(name: str, description: str, read_source: Callable[[Path], SourceDataset]
                      ) -> Callable[..., ConversionSummary]:
    """Register converter ``name`` for a layout that needs only a reader: ``read_source(src)`` lists the cases,
    :func:`convert_labelled` writes them, with the ``rename``, ``regions``, ``slices`` and ``affine_tolerance``
    options. Returns the converter, ``convert_{name}(src, dst, *, overwrite=False, spatial_dims=3, **options)``.

    Example:
        >>> convert_kits19 = register_labelled("kits19", "KiTS19 kidney CT", read_kits19_source)  # doctest: +SKIP
    """

    def convert(src: Path, dst: Path, *, overwrite: bool = False, spatial_dims: int = 3,
                **options: str) -> ConversionSummary:
        src, dst = Path(src), Path(dst)
        return convert_labelled(read_source(src), src, dst, name, overwrite=overwrite, spatial_dims=spatial_dims,
                                options=options)

    convert.__name__ = convert.__qualname__ = f"convert_{name}"
    convert.__module__ = read_source.__module__
    convert.__doc__ = (f"Convert the source that :func:`{read_source.__name__}` reads (see the module docstring of "
                       f":mod:`{read_source.__module__}` for the layout and options).\n\n"
                       "Raises:\n    MedTextSegError: no case of this layout under ``src``, or a bad option.")
    return register(name, description)(convert)


convert_nnunet = register_labelled(
    "nnunet", "labelled nnU-Net v2 raw dataset (dataset.json channel_names + labels, imagesTr, labelsTr) -> one prompt "
              "per case and class", read_nnunet_source)
convert_msd = register_labelled(
    "msd", "Medical Segmentation Decathlon task (dataset.json modality + labels + training, 4D images) -> one prompt "
           "per case and class", read_msd_source)


__all__ = ["OPTIONS", "LabelledOptions", "apply_options", "case_classes", "convert_labelled", "convert_msd",
           "convert_nnunet", "output_vocabulary", "read_msd_source", "read_nnunet_source", "register_labelled"]
