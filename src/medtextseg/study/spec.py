"""A study: N seeds x M configurations (x datasets) of one preset, as a validated YAML file; with ``folds: K``
each seed is a K-fold cross-validation scored out of fold.

Example (``studies/filmcbn_losses.yaml``)::

    name: filmcbn_losses
    preset: filmcbn
    seeds: [0, 1, 2]
    overrides: [train.steps=300]            # every run
    configurations:                         # name -> overrides of that configuration
      dice: ["loss.terms={dice: 1.0}"]
      jaccard: ["loss.terms={jaccard: 1.0}"]
    datasets: {synthetic_2d: data/synth2d}  # name -> dataset folder (relative to the spec file)
    dataset_overrides: {synthetic_2d: []}   # optional: overrides for one dataset's runs
    folds: 5                                # optional: each seed trains 5 fold runs, scored out of fold
    reference: true                         # optional: a text-blind MONAI UNet per (dataset, seed), same time
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medtextseg.config import Config
from medtextseg.utils.errors import MedTextSegError

#: Where a study's reference runs live: ``out/runs/{dataset}/{REFERENCE_FOLDER}/seed{n}``.
REFERENCE_FOLDER = "monai_unet_reference"


class StudySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    preset: str = "default"
    seeds: list[int] = Field([0, 1, 2], min_length=1)
    overrides: list[str] = Field(default_factory=list, description="--set overrides applied to every run")
    configurations: dict[str, list[str]] = Field(..., min_length=1, description="name -> its overrides")
    datasets: dict[str, str] = Field(default_factory=dict, description="name -> dataset folder")
    dataset_overrides: dict[str, list[str]] = Field(
        default_factory=dict, description="dataset name -> overrides for its runs (prompt kinds differ by dataset)")
    split: str = "test"
    folds: int | None = Field(None, ge=2, description="each seed trains K fold runs (medtextseg train --fold k on "
                              "the train + val cases) and is scored out of fold, every case by the run that held it "
                              "out (evaluate --out-of-fold); the test split is not touched")
    plan: bool = Field(True, description="plan each (dataset, configuration) from the dataset as `medtextseg "
                       "train` does (spacing, patch, strides, channels, kind weights; the configuration's overrides "
                       "win); false keeps the preset's values, as the bundled studies were measured")
    reference: bool = Field(False, description="also train the text-blind reference (a MONAI UNet, "
                            "medtextseg.evaluation.reference) for each (dataset, seed), for the mean training time "
                            "of that seed's runs at the first configuration's plan, scored on the same prompts; "
                            "the report compares every configuration with it")
    metrics: list[str] = Field(["dice", "iou", "precision", "recall", "hd95"])
    primary_metric: str = "dice"

    def run_overrides(self, configuration: str, seed: int, dataset: str, fold: int | None = None) -> list[str]:
        """The ``--set`` list of one run: shared overrides + the dataset's + the configuration's + seed + data
        root (+ the fold, with ``folds``)."""
        folds = [f"data.fold={fold}", f"data.folds={self.folds}"] if fold is not None else []
        return [*self.overrides, *self.dataset_overrides.get(dataset, []), *self.configurations[configuration],
                f"train.seed={seed}", f"data.root={self.datasets[dataset]}", *folds]

    def run_config(self, configuration: str, seed: int, dataset: str, fold: int | None = None) -> Config:
        """The resolved config of one run, unplanned (the preset's values where no override says otherwise)."""
        return Config.load(self.preset, self.run_overrides(configuration, seed, dataset, fold))

    def check_run_names(self, where: str) -> None:
        """Refuse a dataset or configuration name that is not one plain folder name: each run is written to
        ``OUT/runs/DATASET/CONFIGURATION/``, so ``../x`` or ``a/b`` would put it elsewhere (outside ``-o``)."""
        for kind, names in (("dataset", self.datasets), ("configuration", self.configurations)):
            for name in names:
                if name in ("", ".", "..") or "/" in name or "\\" in name:
                    raise MedTextSegError(f"{where}: {kind} name {name!r} is not a plain folder name (it holds "
                                          "'/' or '\\', or is '.' or '..'); each run is written to "
                                          "OUT/runs/DATASET/CONFIGURATION/: rename it")

    def check(self) -> None:
        """Resolve every run's config once, so a typo fails before hours of training, naming where it is."""
        if self.reference and self.folds is not None:
            raise MedTextSegError(f"study {self.name!r}: reference with folds is not supported (the reference "
                                  "trains on the train split and is scored on the test split); leave one out")
        if self.reference and REFERENCE_FOLDER in self.configurations:
            raise MedTextSegError(f"study {self.name!r}: configuration name {REFERENCE_FOLDER!r} is where the "
                                  "reference is written; rename it")
        if self.folds is not None and self.split != "test":
            raise MedTextSegError(f"study {self.name!r}: split {self.split!r} with folds: a study with folds scores "
                                  "each fold run on its held-out fold; leave split out")
        unknown = set(self.dataset_overrides) - set(self.datasets)
        if unknown:
            raise MedTextSegError(f"study {self.name!r}: dataset_overrides names unknown datasets "
                                  f"{sorted(unknown)}; datasets are {sorted(self.datasets)}")
        for dataset in self.datasets:
            for name in self.configurations:
                try:
                    self.run_config(name, self.seeds[0], dataset, 0 if self.folds else None)
                except MedTextSegError as error:
                    raise MedTextSegError(f"study {self.name!r}, dataset {dataset!r}, configuration {name!r}: "
                                          f"{error}") from None


def shipped_studies() -> list[str]:
    folder = resources.files("medtextseg") / "studies"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_study(spec: str | Path, datasets: dict[str, str] | None = None, seeds: int | None = None,
               reference: bool | None = None) -> StudySpec:
    """Read a study YAML (a path, or the name of a shipped study) and check every configuration.

    Relative dataset folders are resolved against the spec file's folder (shipped studies: the current
    directory). ``datasets`` replaces the spec's datasets when given (``--data NAME=PATH``), ``seeds`` its seeds
    with 0 .. seeds - 1 (``--seeds N``), ``reference`` its ``reference`` (``--reference``).
    """
    path = Path(spec)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise MedTextSegError(f"study file not found: {path}")
        text, base = path.read_text(encoding="utf-8"), path.parent
    elif str(spec) in shipped_studies():
        text, base = (resources.files("medtextseg") / "studies" / f"{spec}.yaml").read_text(encoding="utf-8"), Path()
    else:
        raise MedTextSegError(f"unknown study {str(spec)!r}: give a YAML file or one of "
                              f"{', '.join(shipped_studies())}")
    try:
        raw = yaml.safe_load(text) or {}
        study = StudySpec.model_validate(raw)
    except yaml.YAMLError as error:
        raise MedTextSegError(f"{spec}: not valid YAML ({error})") from None
    except ValidationError as error:
        item = error.errors()[0]
        field = ".".join(str(p) for p in item["loc"])
        raise MedTextSegError(f"{spec}: study field {field!r}: {item['msg']}") from None
    if datasets:
        study.datasets = dict(datasets)
        # --data picks the datasets studied: the spec's overrides of the others do not apply
        study.dataset_overrides = {name: values for name, values in study.dataset_overrides.items()
                                   if name in study.datasets}
    if seeds is not None:
        study.seeds = list(range(seeds))
    if reference is not None:
        study.reference = reference
    if not study.datasets:
        raise MedTextSegError(f"{spec}: no datasets; add 'datasets: {{name: folder}}' or pass --data NAME=PATH")
    study.check_run_names(str(spec))
    study.datasets = {name: str(folder if Path(folder).is_absolute() else base / folder)
                      for name, folder in study.datasets.items()}
    study.check()
    return study
