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
from medtextseg.study.spec import StudySpec
from medtextseg.training.progress import StepProgress
from medtextseg.utils.atomic import write_text_atomic


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
    bar = StepProgress(f"{spec.name}: runs", len(jobs), 0, progress)  # a line a run in a log file
    try:
        if workers <= 1:
            for job in jobs:
                results.append(run_one(study, *job, threads))
                bar.update(len(results))
        else:
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=exit_with_parent,
                                     initargs=(os.getpid(),)) as pool:
                futures = [pool.submit(run_one, study, *job, threads) for job in jobs]
                for future in as_completed(futures):
                    results.append(future.result())
                    bar.update(len(results))
    finally:
        bar.stop()
    reports = {}
    for dataset in spec.datasets:
        runs = sorted((r for r in results if r["dataset"] == dataset), key=lambda r: (r["configuration"], r["seed"]))
        paths = write_study_report(runs, out_dir / dataset, metrics=[spec.primary_metric, *(
            m for m in spec.metrics if m != spec.primary_metric)], title=f"{spec.name} on {dataset}")
        reports[dataset] = paths["summary_md"]
    return reports
