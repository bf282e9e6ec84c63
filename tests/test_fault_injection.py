"""Fault injection (issue 19, item 8): a tiny training run is SIGKILLed three times at seeded points, at least
once while a checkpoint is being written, and resumed each time; it ends with exactly the weights of a run that
was never interrupted, and leaves no partial file behind.

The runs are forked from this process (no interpreter start-up, so a run takes seconds) and killed from outside
with SIGKILL, which no handler sees: nothing in the training code is patched. A kill "during a write" is sent as
soon as a checkpoint's temporary folder (``utils/atomic.py``) appears; it landed mid-write when that folder is
still there afterwards.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch

from medtextseg.config import Config
from medtextseg.models.trained import load_checkpoint
from medtextseg.training.engine import train
from medtextseg.utils.atomic import PARTIAL_PREFIX

SEED = 8
TINY_2D = ["model.channels=[4,8,16]", "model.strides=[[1,1],[2,2],[2,2]]", "data.patch_size=[48,48]",
           "train.batch_images=2", "data.prompts_per_image=2", "train.val_cases=1", "train.warmup_steps=1",
           "train.steps=16", "train.val_every=2", "train.num_threads=1", "train.num_workers=0"]
FORK = multiprocessing.get_context("fork")


def _train(config: Config, run: Path, resume: bool) -> None:
    """The child: train, then leave at once (no pytest clean-up in a forked process)."""
    try:
        train(config, run, resume=resume, progress=False)
    except BaseException as error:  # reported through the exit status; the parent shows the run's state
        print(f"training failed: {error!r}", flush=True)
        os._exit(1)
    os._exit(0)


def start(config: Config, run: Path) -> multiprocessing.Process:
    """A training into ``run``: resumed when it has a ``last.pt``, else from the start."""
    child = FORK.Process(target=_train, args=(config, run, (run / "last.pt").is_file()))
    child.start()
    return child


def partial_writes(run: Path) -> list[str]:
    """Temporary folders of checkpoint writes in ``run`` (a write under way, or one a kill cut short)."""
    if not run.is_dir():
        return []
    return sorted(p.name for p in run.iterdir() if p.name.startswith((f"{PARTIAL_PREFIX}last-",
                                                                      f"{PARTIAL_PREFIX}best-")))


def kill_during_write(child: multiprocessing.Process, run: Path, skip: int) -> bool:
    """SIGKILL ``child`` as soon as the temporary folder of its ``skip``-th next checkpoint write appears.
    Returns False when it finished first."""
    seen: set[str] = set()
    while child.is_alive():
        names = set(partial_writes(run))
        if names - seen:
            if len(seen | names) > skip:
                os.kill(child.pid, signal.SIGKILL)
                return True
            seen |= names
        time.sleep(0.0002)
    return False


def kill_after(child: multiprocessing.Process, seconds: float) -> bool:
    """SIGKILL ``child`` ``seconds`` after it started (set-up, a step, validation or a write: wherever it is).
    Returns False when it finished first."""
    child.join(seconds)
    if not child.is_alive():
        return False
    os.kill(child.pid, signal.SIGKILL)
    return True


def test_training_killed_three_times_resumes_to_the_same_weights(dataset_2d, tmp_path):
    """SIGKILL at three seeded points of one run, one at least mid-write of a checkpoint; resumed each time,
    it ends with the same weights, optimiser state and best checkpoint as an uninterrupted run."""
    config = Config.load("default_2d", [*TINY_2D, f"data.root={dataset_2d}", f"data.cache_dir={tmp_path / 'cache'}"])
    reference = tmp_path / "straight"
    started = time.monotonic()
    child = start(config, reference)  # also fills the preprocessed and text caches the killed runs then read
    child.join(300)
    assert child.exitcode == 0
    duration = time.monotonic() - started

    rng = random.Random(SEED)
    run = tmp_path / "killed"
    plan = ["write", "time", "write"]
    rng.shuffle(plan)
    kills, mid_write = [], 0
    while len(kills) < 3 or (not mid_write and len(kills) < 8):  # more kills mid-write until one lands there
        mode = plan[len(kills)] if len(kills) < 3 else "write"
        child = start(config, run)
        if mode == "write":
            killed = kill_during_write(child, run, skip=rng.randrange(3))
        else:
            killed = kill_after(child, rng.uniform(0.05, 0.5) * duration)  # a resumed run takes less
        child.join(60)
        assert child.exitcode == (-signal.SIGKILL if killed else 0)
        if not killed:
            break  # it finished before the kill: no more kills possible
        left = partial_writes(run)
        mid_write += bool(left)
        for name in ("best.pt", "last.pt"):  # whatever is in place is whole: the previous or the new version
            step = load_checkpoint(run / name)["step"] if (run / name).is_file() else 0
        kills.append((mode, left, step))
    assert len(kills) >= 3 and mid_write, kills
    assert any(0 < step < config.train.steps for *_, step in kills), kills  # resumed mid-run, not restarted
    child = start(config, run)
    child.join(300)
    assert child.exitcode == 0

    for name in ("last.pt", "best.pt"):
        expected, resumed = (load_checkpoint(folder / name) for folder in (reference, run))
        assert resumed["step"] == expected["step"]
        for key, tensor in expected["model"].items():
            assert torch.equal(resumed["model"][key], tensor), f"{name}: {key} differs after {kills}"
        if name == "last.pt":
            for index, state in expected["optimizer"]["state"].items():
                assert all(torch.equal(resumed["optimizer"]["state"][index][k], v) for k, v in state.items())
    assert partial_writes(run) == []  # the killed writes' temporary folders went when the run was resumed


def test_a_killed_writers_partial_files_go_when_the_folder_is_next_locked(tmp_path):
    """What a SIGKILL leaves of an atomic write (its temporary folder) is removed by the next writer."""
    from medtextseg.utils.atomic import atomic_path
    from medtextseg.utils.folder_lock import folder_lock

    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "run" / "last.pt") as tmp:
        tmp.write_bytes(b"half")
        (tmp_path / "run" / ".partial-kept-by-name").mkdir()  # not a temporary folder: a name of the user's
        os.rename(tmp.parent, tmp_path / "run" / f"{PARTIAL_PREFIX}last-abc_1234")  # as a SIGKILL leaves it
        tmp.parent.mkdir()
        raise KeyboardInterrupt
    (tmp_path / "run" / "notes.txt").write_text("kept")
    with folder_lock(tmp_path / "run"):
        assert sorted(os.listdir(tmp_path / "run")) == [".medtextseg.lock", ".partial-kept-by-name", "notes.txt"]
