"""Run a study: train and evaluate every (dataset, configuration, seed), then write one report per dataset.

With ``folds: K`` a seed is K fold runs (``out/runs/{dataset}/{configuration}/seed{n}/fold_{k}``) scored out of
fold as one evaluation (:func:`~medtextseg.evaluation.runner.evaluate_out_of_fold`), so the report compares
configurations on every train and val case, the test split untouched.

Each (dataset, configuration) is planned from its dataset as ``medtextseg train`` plans (``plan: false`` in the
study keeps the preset's values); its seeds replay one ``plans.json``. Runs are independent processes' work:
``workers`` of them run side by side, each with ``cpu_count // workers`` torch threads (on a 2-core machine, two
single-threaded runs finish sooner than two two-threaded runs one after the other). Each run lives in
``out/runs/{dataset}/{configuration}/seed{n}``; a finished run (its ``result.json``) is never redone, and a killed
one resumes from its ``last.pt``, so rerunning the command after a crash only does the missing work. A worker
ends when the study process is gone (killed by a scheduler, or ``kill``) instead of training on into a run folder
the rerun will use.

With ``reference: true`` each (dataset, seed) also trains the text-blind reference
(:mod:`medtextseg.evaluation.reference`) in ``out/runs/{dataset}/monai_unet_reference/seed{n}``, once that seed's
runs have finished: for the mean of their training times, at the first configuration's saved config (its plan),
with the same threads a run had, scored on the same split. The report compares each configuration with it apart
from the configurations' own pairs.
"""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import yaml

from medtextseg.config import Config
from medtextseg.data.planning import Plan, planned_config
from medtextseg.study.spec import REFERENCE_FOLDER, StudySpec
from medtextseg.training.progress import StepProgress
from medtextseg.utils.atomic import write_text_atomic
from medtextseg.utils.errors import MedTextSegError


def _finished(log: Path) -> bool:
    if not log.is_file():
        return False
    lines = log.read_text(encoding="utf-8").strip().splitlines()
    try:
        return bool(lines) and json.loads(lines[-1]).get("event") == "end"
    except json.JSONDecodeError:  # a line cut by a kill: the run did not finish
        return False


def run_one(study: dict[str, Any], dataset: str, configuration: str, seed: int, run_dir: str,
            threads: int) -> dict[str, Any]:
    """Train (or resume) and evaluate one run (with ``folds``: its K fold runs, out of fold); returns the run dict
    of ``write_study_report``."""
    from medtextseg.evaluation.runner import evaluate_out_of_fold, evaluate_run

    spec = StudySpec.model_validate(study)
    run_dir = Path(run_dir)
    result_path = run_dir / "result.json"
    if result_path.is_file():
        return json.loads(result_path.read_text(encoding="utf-8"))
    plan_path = run_dir.parent / "plans.json"
    options = dict(save_masks=False, overlays_per_group=1, progress=False)
    if spec.folds:
        model_dirs = [run_dir / f"fold_{fold}" for fold in range(spec.folds)]
        for fold, model_dir in enumerate(model_dirs):
            _train(spec, configuration, seed, dataset, plan_path, model_dir, threads, fold)
        rows = evaluate_out_of_fold(model_dirs, spec.datasets[dataset], run_dir / "eval", **options).summary
    else:
        model_dirs = [run_dir / "model"]
        _train(spec, configuration, seed, dataset, plan_path, model_dirs[0], threads)
        rows = evaluate_run(model_dirs[0], spec.datasets[dataset], run_dir / "eval", split=spec.split,
                            **options).summary
    seconds = [json.loads((d / "log.jsonl").read_text(encoding="utf-8").strip().splitlines()[-1]).get("seconds")
               for d in model_dirs]
    result = {"dataset": dataset, "configuration": configuration, "seed": seed, "summary": rows,
              "train_seconds": None if None in seconds else sum(seconds), "run_dir": str(run_dir)}
    write_text_atomic(result_path, json.dumps(result, indent=1) + "\n")
    return result


def reference_one(dataset: str, seed: int, run_dir: str, config_path: str, data: str, seconds: float, split: str,
                  threads: int) -> dict[str, Any]:
    """Train (or read back) and score the text-blind reference of one (dataset, seed) for ``seconds``; returns
    its run dict of ``write_study_report``. Its overall row is left out where it answers only some prompts
    (lesion data: no anatomy), so that no mean over fewer prompts sits beside the configurations' overall."""
    import torch

    from medtextseg.data.layout import load_dataset
    from medtextseg.evaluation.metrics import summarize
    from medtextseg.evaluation.reference import (
        REFERENCE_NAME,
        answers_every_prompt,
        reference_task,
        score_unet,
        train_unet,
    )

    run_dir, data_dir = Path(run_dir), Path(data)
    result_path = run_dir / "result.json"
    if result_path.is_file():
        return json.loads(result_path.read_text(encoding="utf-8"))
    torch.set_num_threads(threads)
    config = Config.load(config_path)
    unet, steps = train_unet(data_dir, config, seconds, run_dir / "unet.pt", seed)
    lesions = reference_task(load_dataset(data_dir)).mode == "lesions"  # a label flip would swap left and right
    records = score_unet(unet, data_dir, config, tuple(config.inference.mirror_axes) if lesions else (), split)
    rows = summarize(records, group_by="group")
    if not answers_every_prompt(data_dir, records, split):
        rows = rows[:-1]
    result = {"dataset": dataset, "configuration": REFERENCE_NAME, "seed": seed, "summary": rows,
              "train_seconds": seconds, "steps": steps, "run_dir": str(run_dir)}
    write_text_atomic(result_path, json.dumps(result, indent=1) + "\n")
    return result


def _reference_jobs(spec: StudySpec, out_dir: Path, results: list[dict[str, Any]]) -> list[tuple]:
    """One reference job per (dataset, seed): (dataset, seed, run folder, the first configuration's saved
    config, dataset folder, the mean training seconds of that seed's runs, split)."""
    first = next(iter(spec.configurations))
    jobs = []
    for dataset in spec.datasets:
        for seed in spec.seeds:
            runs = [r for r in results if r["dataset"] == dataset and r["seed"] == seed]
            seconds = [r["train_seconds"] for r in runs if r["train_seconds"] is not None]
            if not seconds:
                raise MedTextSegError(f"study {spec.name!r}, dataset {dataset!r}, seed {seed}: no run logged its "
                                      "training time (log.jsonl), so the reference has no time to train for")
            config = Path(next(r for r in runs if r["configuration"] == first)["run_dir"]) / "model" / "config.yaml"
            jobs.append((dataset, seed, str(out_dir / "runs" / dataset / REFERENCE_FOLDER / f"seed{seed}"),
                         str(config), spec.datasets[dataset], sum(seconds) / len(seconds), spec.split))
    return jobs


def _train(spec: StudySpec, configuration: str, seed: int, dataset: str, plan_path: Path, model_dir: Path,
           threads: int, fold: int | None = None) -> None:
    """Train one model into ``model_dir``, resuming a killed one; nothing when it finished."""
    from medtextseg.training.engine import train

    if not _finished(model_dir / "log.jsonl"):
        config, plan = _run_config(spec, configuration, seed, dataset, plan_path, fold)
        config.train.num_threads = threads
        train(config, model_dir, resume=(model_dir / "last.pt").is_file(), progress=False, plan=plan)


def _run_config(spec: StudySpec, configuration: str, seed: int, dataset: str, plan_path: Path,
                fold: int | None = None) -> tuple[Config, Plan | None]:
    """One run's config and plan. With ``spec.plan`` the dataset is measured once per (dataset, configuration),
    the plan saved at ``plan_path`` and replayed by its other seeds and folds (neither changes a plan)."""
    overrides = spec.run_overrides(configuration, seed, dataset, fold)
    if not spec.plan:
        return spec.run_config(configuration, seed, dataset, fold), None
    config, plan = planned_config(spec.preset, overrides, plan_path if plan_path.is_file() else None)
    if plan is not None and not plan_path.is_file():
        plan.save(plan_path)
    return config, plan


def _warm_text_cache(spec: StudySpec) -> None:
    """Encode every prompt of every dataset once, here, so that no run loads the text encoder."""
    from medtextseg.data.layout import load_dataset
    from medtextseg.training.inputs import text_cache_for, training_prompt_texts

    for dataset, folder in spec.datasets.items():
        config = spec.run_config(next(iter(spec.configurations)), spec.seeds[0], dataset)
        layout = load_dataset(folder)
        vocabulary = layout.vocabulary if config.data.prompt_sampling else None
        text_cache_for(config).warm(training_prompt_texts(layout, list(layout.cases), vocabulary))


def exit_with_parent(parent: int, interval: float = 1.0) -> None:
    """Worker initializer: end this process once its parent ``parent`` (the study) is gone, checked every
    ``interval`` seconds, as PyTorch's DataLoader workers watch their manager. Without it a worker whose study
    was killed trains on as an orphan, writing into a run folder that the rerun resumes at the same time."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)  # no cleanup to wait for: the run's files are written atomically, and the rerun resumes it

    threading.Thread(target=watch, name="study-parent-watch", daemon=True).start()


def run_study(spec: StudySpec, out_dir: str | Path, workers: int = 1, progress: bool = True) -> dict[str, Path]:
    """Run every (dataset, configuration, seed) of ``spec`` and write ``out_dir/{dataset}/`` reports.

    Returns:
        dataset name -> the path of its ``summary.md``.
    """
    from medtextseg.evaluation.reference import REFERENCE_NAME
    from medtextseg.study.report import write_study_report

    out_dir = Path(out_dir)
    spec.check_run_names(f"study {spec.name!r}")  # a spec built in code was not read by load_study
    write_text_atomic(out_dir / "study.yaml", yaml.safe_dump(spec.model_dump(), sort_keys=False))
    _warm_text_cache(spec)
    jobs = [(dataset, configuration, seed, str(out_dir / "runs" / dataset / configuration / f"seed{seed}"))
            for dataset in spec.datasets for configuration in spec.configurations for seed in spec.seeds]
    threads = max(1, (os.cpu_count() or 1) // workers)
    results: list[dict[str, Any]] = []
    study = spec.model_dump()
    total = len(jobs) + (len(spec.datasets) * len(spec.seeds) if spec.reference else 0)
    bar = StepProgress(f"{spec.name}: runs", total, 0, progress)  # a line a run in a log file
    try:
        results += _run_all(run_one, [(study, *job, threads) for job in jobs], workers, bar, 0)
        if spec.reference:  # given the time the runs took: after them, with the threads each run had
            references = [(*job, threads) for job in _reference_jobs(spec, out_dir, results)]
            results += _run_all(reference_one, references, workers, bar, len(results))
    finally:
        bar.stop()
    reports = {}
    for dataset in spec.datasets:
        runs = sorted((r for r in results if r["dataset"] == dataset),  # the reference last
                      key=lambda r: (r["configuration"] == REFERENCE_NAME, r["configuration"], r["seed"]))
        paths = write_study_report(runs, out_dir / dataset, metrics=[spec.primary_metric, *(
            m for m in spec.metrics if m != spec.primary_metric)], title=f"{spec.name} on {dataset}",
            reference=REFERENCE_NAME if spec.reference else None)
        reports[dataset] = paths["summary_md"]
    return reports


def _run_all(function: Any, arguments: list[tuple], workers: int, bar: StepProgress, done: int) -> list[dict]:
    """``function(*a)`` for every ``a`` of ``arguments``, ``workers`` processes side by side (in this process
    with one), the bar advanced from ``done`` as each finishes; returns their results in finishing order."""
    results: list[dict] = []
    if workers <= 1:
        for args in arguments:
            results.append(function(*args))
            bar.update(done + len(results))
        return results
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=exit_with_parent,
                             initargs=(os.getpid(),)) as pool:
        for future in as_completed([pool.submit(function, *args) for args in arguments]):
            results.append(future.result())
            bar.update(done + len(results))
    return results
