"""Which precision a training step runs in: mixed precision where the hardware computes half types natively.

On a GPU, float16 with loss scaling (``torch.amp``). On a CPU, bfloat16 when it has bfloat16 instructions
(AVX512-BF16 or AMX: Intel Xeon since Cooper Lake, AMD Zen 4): on an Intel Xeon with AMX a training step ran
2.8x faster than in float32 (``benchmarks/bench_train_step.py --precision bf16``). A CPU without them would emulate
bfloat16, more slowly than float32, so it stays in float32. Weights, optimiser state and losses stay float32.
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


def precision_name(dtype: torch.dtype | None) -> str:
    """'float32', 'bfloat16' or 'float16': how a run's log names the precision it trained in."""
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``, or nothing (float32) for None: the one place training and
    prediction enter a lower precision."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)
