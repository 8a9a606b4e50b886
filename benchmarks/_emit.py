"""Benchmark records: one JSON object per line on stdout (STYLE.md section 8), with provenance added,
and the timing loop every CPU benchmark shares.

Provenance: git sha (with "-dirty" for uncommitted changes), torch / onnxruntime / triton versions,
host CPU model and usable cores, UTC timestamp. Human-readable text goes to stderr, never here.
"""
from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable


@functools.lru_cache(maxsize=1)
def provenance() -> dict:
    """Facts about the code and machine that every record carries (computed once per process)."""
    import torch

    info = {"git_sha": _git_sha(), "torch": torch.__version__, "python": platform.python_version(),
            "host_cpu": _cpu_model(), "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(), "torch_threads": torch.get_num_threads()}
    for mod in ("onnxruntime", "triton", "tensorrt"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def emit(record: dict) -> None:
    """Print `record` plus provenance and a timestamp as one JSON line on stdout."""
    line = {**record, **provenance(), "timestamp_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    sys.stdout.write(json.dumps(line, sort_keys=False) + "\n")
    sys.stdout.flush()


def time_calls(fn: Callable[[], object], repeat: int, warmup: int = 2, sync: Callable[[], None] | None = None) -> dict:
    """Wall time of `fn` over `repeat` calls after `warmup`: p20/p50/p80 in ms (Triton's quantile trio).

    `sync` (e.g. torch.cuda.synchronize) runs after each call so asynchronous work is counted."""
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    ms = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        ms.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(ms, n=10, method="inclusive") if len(ms) > 1 else [ms[0]] * 9
    return {"p20_ms": round(q[1], 4), "p50_ms": round(statistics.median(ms), 4), "p80_ms": round(q[7], 4),
            "repeat": repeat}


def time_cuda(fn: Callable[[], object], repeat: int, warmup: int = 3, flush_mib: int = 256) -> dict:
    """Device time of `fn` from CUDA events around each call, p20/p50/p80 in ms, as
    `triton.testing.do_bench` measures: warm-up calls first, then before each timed call a write of
    `flush_mib` MiB evicts the L2 cache (60 MB on an H200), so a field that fits in L2 is still read
    from device memory. Events time the GPU only; for host-bound work use `time_calls`."""
    import torch

    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    flush = torch.empty(flush_mib * 2 ** 18, dtype=torch.int32, device="cuda")
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeat)]
    for start, end in events:
        flush.zero_()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    ms = [start.elapsed_time(end) for start, end in events]
    q = statistics.quantiles(ms, n=10, method="inclusive") if len(ms) > 1 else [ms[0]] * 9
    return {"p20_ms": round(q[1], 4), "p50_ms": round(statistics.median(ms), 4), "p80_ms": round(q[7], 4),
            "repeat": repeat, "timer": "cuda_events"}


def _git_sha() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("-dirty" if dirty else "")) if sha else "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
