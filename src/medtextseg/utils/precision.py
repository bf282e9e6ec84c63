"""Which precision the network runs in: mixed precision where the hardware computes half types natively.

Training: on a GPU, float16 with loss scaling (``torch.amp``). On a CPU, bfloat16 when it has bfloat16
instructions (AVX512-BF16 or AMX: Intel Xeon since Cooper Lake, AMD Zen 4): on an Intel Xeon with AMX a training
step ran 2.8x faster than in float32 (``benchmarks/bench_train_step.py --precision bf16``). A CPU without them would
emulate bfloat16, more slowly than float32, so it stays in float32. Weights, optimiser state and losses stay
float32.

Prediction (``inference.autocast``): ``auto`` chooses as training does, ``none``, ``bf16`` or ``fp16`` force one.
"""

from __future__ import annotations

import contextlib
import functools
import platform
from pathlib import Path

import torch

# /proc/cpuinfo flags of CPUs with bfloat16 arithmetic (dot products of bfloat16 pairs, tile matrix multiply)
_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bfloat16 natively (Linux: from ``/proc/cpuinfo``; other systems: False)."""
    if platform.system() != "Linux":
        return False
    try:
        return cpuinfo_has_bf16(Path("/proc/cpuinfo").read_text())
    except OSError:
        return False


def cpuinfo_has_bf16(cpuinfo: str) -> bool:
    """Whether the first ``flags`` line of a ``/proc/cpuinfo`` text names a bfloat16 instruction set."""
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return bool(_BF16_FLAGS & set(flags))


def mixed_precision_dtype(amp: bool, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a training step with ``train.amp`` on ``device``, or None for float32.

    float16 on CUDA (with a gradient scaler), bfloat16 on a CPU with native bfloat16, else None.
    """
    if not amp:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


# inference.autocast: the network's precision when predicting; "auto" resolves per device
INFERENCE_PRECISIONS = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def inference_dtype(kind: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of prediction with ``inference.autocast=kind`` on ``device``, or None for float32.

    ``auto`` is what training with ``train.amp`` uses (:func:`mixed_precision_dtype`): float16 on CUDA, bfloat16
    on a CPU with native bfloat16, float32 elsewhere.

    Raises:
        ValueError: an unknown kind, or fp16 on a CPU (slower than float32 there; bf16 is the CPU's half type).
    """
    if kind == "auto":
        return mixed_precision_dtype(True, device)
    if kind not in INFERENCE_PRECISIONS:
        raise ValueError(f"autocast {kind!r}: use one of auto, {', '.join(INFERENCE_PRECISIONS)}")
    if kind == "fp16" and device.type == "cpu":
        raise ValueError("autocast fp16 runs on a GPU; on the CPU use bf16, auto or none")
    return INFERENCE_PRECISIONS[kind]


def precision_name(dtype: torch.dtype | None) -> str:
    """'float32', 'bfloat16' or 'float16': how a run's log names the precision it trained in."""
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``, or nothing (float32) for None: the one place training and
    prediction enter a lower precision."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)
