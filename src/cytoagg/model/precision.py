"""The arithmetic the model runs in: ``train.precision`` (auto | fp32 | bf16), resolved once per process.

``bf16`` runs the matrix products under bfloat16 autocast (8-bit mantissa, float32's range); pooled sums,
weight gradients and the optimizer's state stay in float32. ``auto`` means bf16 where it pays: on CUDA, and on
CPUs whose bf16 matmul is measurably faster than float32 (Intel AMX, AVX512-BF16, Arm BF16); float32 on the
other CPUs, where torch's bf16 matmul is emulated and can be many times slower. The CPU check reads the
instruction-set flags of ``/proc/cpuinfo`` and, only where they name a bf16 unit (or cannot be read), times
one matmul both ways; the decision and its numbers are logged.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from dataclasses import dataclass

import torch

from ..io.files import InputError

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
# /proc/cpuinfo flags of CPUs with bf16 matrix/dot-product instructions: Intel AMX and AVX512-BF16 (also AMD
# Zen 4+), Arm's BF16 extension (its "Features" line).
BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")
# The timed probe: one (M x K) @ (K x N) product; bf16 must be at least MIN_SPEEDUP x faster to be used.
PROBE_SHAPE = (2048, 1024, 2048)
MIN_SPEEDUP = 1.25
CPUINFO = "/proc/cpuinfo"


@dataclass(frozen=True)
class CpuBf16Check:
    """What ``auto`` found on this CPU: the bf16 flags seen (None: no readable flags), the probe's GFLOP/s
    (None: not timed), the decision and why."""

    flags: tuple[str, ...] | None
    fp32_gflops: float | None
    bf16_gflops: float | None
    use_bf16: bool
    reason: str


def cpu_flags(path: str = CPUINFO) -> set[str] | None:
    """The CPU's instruction-set flags (x86 ``flags``, Arm ``Features``); None where they cannot be read."""
    try:
        with open(path) as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        return None
    return None


def matmul_gflops(m: int, k: int, n: int, dtype: torch.dtype, repeats: int = 3, device="cpu") -> float:
    """GFLOP/s of a (m x k) @ (k x n) product in ``dtype`` on the current torch threads (best of ``repeats``)."""
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first is a warm-up
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        torch.mm(a, b)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * m * k * n / best / 1e9


def _probe(shape: tuple[int, int, int]) -> tuple[float, float]:
    """(fp32, bf16) GFLOP/s of one product of ``shape``. A small product first: where bf16 is already more than
    twice slower there (an emulated bf16 matmul), the full-size one, which could take a minute, is skipped."""
    small = tuple(min(s, 256) for s in shape)
    fp32, bf16 = matmul_gflops(*small, torch.float32), matmul_gflops(*small, torch.bfloat16)
    if bf16 < 0.5 * fp32:
        return fp32, bf16
    return matmul_gflops(*shape, torch.float32), matmul_gflops(*shape, torch.bfloat16)


@functools.lru_cache(maxsize=None)
def cpu_bf16_check(threads: int) -> CpuBf16Check:
    """Is bf16 worth it on this CPU with ``threads`` torch threads? Computed once per process (and thread count)."""
    flags = cpu_flags()
    found = None if flags is None else tuple(f for f in BF16_FLAGS if f in flags)
    if found == ():
        check = CpuBf16Check(found, None, None, False, f"no {'/'.join(BF16_FLAGS)} in the flags of {CPUINFO}")
    else:
        fp32, bf16 = _probe(PROBE_SHAPE)
        use = bf16 >= MIN_SPEEDUP * fp32
        m, k, n = PROBE_SHAPE
        check = CpuBf16Check(
            found, fp32, bf16, use,
            f"flags {', '.join(found) if found else 'unreadable'}; {m}x{k} @ {k}x{n} on {threads} thread(s): "
            f"fp32 {fp32:.1f}, bf16 {bf16:.1f} GFLOP/s ({bf16 / fp32:.2f}x; bf16 needs >= {MIN_SPEEDUP:g}x)",
        )
    logger.info("train.precision auto on this CPU: %s (%s)", "bf16" if check.use_bf16 else "fp32", check.reason)
    return check


def resolve_precision(setting: str, device: torch.device) -> str:
    """``fp32`` or ``bf16``: the arithmetic ``setting`` (auto | fp32 | bf16) means on ``device``."""
    if setting not in PRECISIONS:
        raise InputError(f"train.precision must be one of {list(PRECISIONS)}, got {setting!r}")
    if setting != "auto":
        return setting
    if device.type == "cuda":
        return "bf16"
    if device.type == "cpu":
        return "bf16" if cpu_bf16_check(torch.get_num_threads()).use_bf16 else "fp32"
    return "fp32"


def autocast(device: torch.device, precision: str):
    """The context the model runs in: bf16 autocast for ``bf16`` (CUDA or CPU), nothing for ``fp32``."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
