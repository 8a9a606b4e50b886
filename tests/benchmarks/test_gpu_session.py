"""benchmarks/gpu_session.sh in its dry mode on the CPU: every step runs from the source tree and leaves
the files a GPU session fetches (at most 8, the device tool's limit), and the summary reads them."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FILES = ["bench_cuda.jsonl", "bench_kernels.jsonl", "env.txt", "pytest.txt", "session.log", "steps.txt",
         "summary.txt"]


@pytest.mark.slow
def test_session_script_dry_run(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), GPU_SESSION_SMOKE="1", PYTHON=sys.executable)
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_session.sh")], env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == FILES and len(FILES) <= 8
    steps = (tmp_path / "steps.txt").read_text().splitlines()
    assert [s.split(":")[0] for s in steps] == ["env", "pytest", "kernels", "churn", "sampler"]
    assert all(": exit 0 in " in s for s in steps), steps
    env_txt = (tmp_path / "env.txt").read_text()
    assert f"precipfast from {ROOT / 'kernels'}" in env_txt  # this checkout's code, not an installed copy
    kernels = [json.loads(line) for line in (tmp_path / "bench_kernels.jsonl").read_text().splitlines()]
    assert {(r["impl"], r["op"]) for r in kernels} == {("reference", "step"), ("inplace", "step"), ("inplace", "churn")}
    sampler = [json.loads(line) for line in (tmp_path / "bench_cuda.jsonl").read_text().splitlines()]
    assert [r["variant"] for r in sampler] == ["baseline", "precipfast", "comparison"] * 2
    summary = (tmp_path / "summary.txt").read_text()
    assert summary.startswith("tests: 5 passed") and summary.count("comparison:") == 2
    assert res.stdout.endswith(summary)  # printed last: the device tool's output tail shows it
