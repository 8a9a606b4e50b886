"""The short table at the end of `benchmarks/gpu_session.sh`: the kernels' GB/s against the card's copy
bandwidth, the end-to-end sampler against its baseline and the peer figure, and the test line.

    python -m precipfast.benchmarks.session_summary OUT_DIR

Reads OUT_DIR/bench_kernels.jsonl, bench_cuda.jsonl and pytest.txt (any may be missing or partial after
a timeout), prints the table on stdout and writes it to OUT_DIR/summary.txt. Numbers are copied from the
records, never computed anew, so the table cannot disagree with the JSON.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

GOAL_FRACTION_OF_COPY = 0.80  # issue 17: the fused kernels at >= 80 % of the measured copy bandwidth
GOAL_VS_PEER = 4.0  # issue 17: >= 4x faster than the peer's 22.1 ms per member * Mpx * evaluation


def _records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a timeout
            pass
    return out


def kernel_lines(recs: list[dict]) -> list[str]:
    lines = ["kernels: size op denoised impl  p50_ms  GB/s  of_copy  vs_reference"]
    for r in recs:
        if r.get("mode") != "step":
            continue
        frac = r.get("fraction_of_copy")
        mark = ""
        if frac is not None and r["impl"] == "triton":
            mark = "  ok" if frac >= GOAL_FRACTION_OF_COPY else "  BELOW GOAL"
        lines.append(f"  {r['size']} {r['op']} {r['denoised_dtype']} {r['impl']}  {r['p50_ms']}  {r['gb_per_s']}  "
                     f"{frac if frac is not None else '-'}  {r.get('speedup_vs_reference', '-')}{mark}")
    return lines


def cuda_lines(recs: list[dict]) -> list[str]:
    lines = ["sampler: domain variant  p50_ms  ms/(member*Mpx*eval)  TFLOP/s  peak_GiB  warmup_s"]
    for r in recs:
        hw = "x".join(map(str, r["domain_hw"]))
        if r["variant"] == "comparison":
            goal = "ok" if r["speedup_vs_peer"] >= GOAL_VS_PEER else "BELOW GOAL"
            lines.append(f"  {hw} comparison: {r['speedup_vs_baseline']}x the baseline; {r['speedup_vs_peer']}x "
                         f"the peer's {r['peer_ms_per_member_mpx_eval']} ms ({r['peer_device']}; same device: "
                         f"{r['same_device_as_peer']}; goal {GOAL_VS_PEER}x: {goal}); members differ from the "
                         f"baseline's by {r['rel_diff_vs_baseline']} (spread {r['member_spread_rel']})")
        else:
            lines.append(f"  {hw} {r['variant']} ({r['precision']}, compile {r['torch_compile']}, graphs "
                         f"{r['cuda_graphs']}, step {r['step']})  {r['p50_ms']}  {r['ms_per_member_mpx_eval']}  "
                         f"{r['tflop_per_s']}  {r['peak_mem_gib']}  {r['warmup_s']}")
    return lines


def summarize(out_dir: Path) -> str:
    tests = (out_dir / "pytest.txt")
    last = [ln for ln in tests.read_text().splitlines() if ln.strip()][-1:] if tests.is_file() else []
    lines = [f"tests: {last[0] if last else 'no pytest output'}"]
    lines += kernel_lines(_records(out_dir / "bench_kernels.jsonl"))
    lines += cuda_lines(_records(out_dir / "bench_cuda.jsonl"))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m precipfast.benchmarks.session_summary OUT_DIR", file=sys.stderr)
        return 2
    out_dir = Path(argv[0])
    text = summarize(out_dir)
    (out_dir / "summary.txt").write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
