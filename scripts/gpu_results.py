"""Turn what ``scripts/gpu_check.sh`` wrote to the device's OUT into files to commit:
``benchmarks/results/gpu-<device>-<date>.json`` (the whole summary, plus the commit it ran on)
and ``.txt`` (the tables).

    python scripts/gpu_results.py <folder>    # the folder holding the run's gpu-check.* files
    python scripts/gpu_results.py path/to/gpu-check.json --date 2026-12-03 --name h200

A dry run's summary (CPU numbers) is refused unless ``--allow-dry-run``. ``render_text`` is also
what gpu_check.py writes as gpu-check.txt; it ends with issue 18's targets, each marked met or
not met from the recorded numbers (``gpu_targets.py``), whose verdicts and the raw figures
behind them the JSON keeps under ``targets``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from gpu_targets import evaluate, render

ROOT = Path(__file__).resolve().parent.parent


def _get(data: Any, *keys: str, default: Any = None) -> Any:
    for key in keys:
        if not isinstance(data, dict) or data.get(key) is None:
            return default
        data = data[key]
    return data


def _counts(outcomes: dict[str, int]) -> str:
    order = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")
    return ", ".join(f"{outcomes[k]} {k}" for k in order if outcomes.get(k)) or "none"


def _tests(title: str, summary: dict[str, Any] | None) -> list[str]:
    if not summary:
        return [f"{title}: not run"]
    lines = [
        f"{title}: {_counts(summary['outcomes'])} of {summary['collected']} collected"
        + ("" if summary["completed"] else " (cut short)")
    ]
    for backend, outcomes in summary["by_backend"].items():
        lines.append(f"  {backend:14} {_counts(outcomes)}")
    for failure in summary["failures"][:20]:
        message = [line for line in failure["message"].splitlines() if line.strip()]
        lines.append(f"  {failure['outcome'].upper()} {failure['nodeid']}")
        if message:
            lines.append(f"      {message[-1][:160]}")
    return lines


def _benchmark_report(benchmarks: dict[str, Any]) -> list[str]:
    if not benchmarks.get("benchmarks"):
        return ["benchmarks: none timed"]
    spec = importlib.util.spec_from_file_location("fastxai_bench_report", ROOT / "benchmarks" / "report.py")
    if spec is None or spec.loader is None:
        return ["benchmarks: benchmarks/report.py not found"]
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(
            {"machine_info": benchmarks["machine_info"], "benchmarks": benchmarks["benchmarks"]}, handle
        )
    try:
        text = module.report(handle.name)
    finally:
        Path(handle.name).unlink()
    tests = benchmarks.get("tests", {})
    head = (
        f"benchmarks ({len(benchmarks['benchmarks'])} timed of {tests.get('collected')} collected; median s)"
    )
    return [head, *("  " + line if line else "" for line in text.splitlines())]


def render_text(summary: dict[str, Any]) -> str:
    env = summary.get("environment") or {}
    device = env.get("device") or {}
    smi = _get(env, "driver", "nvidia_smi", default={})

    def at(*keys: str, default: Any = "-") -> Any:
        return _get(env, *keys, default=default)

    title = f"fastxai GPU check{' (DRY RUN on the CPU)' if summary.get('dry_run') else ''}: "
    title += device.get("name", "?")
    if device.get("capability"):
        title += (
            f", compute capability {device['capability']}, {device.get('multiprocessors')} SMs, "
            f"{device.get('memory_gib')} GiB, L2 {device.get('l2_mib')} MiB"
        )
    commit = _get(summary, "recorded", "git_commit")
    lines = [
        title,
        f"driver {smi.get('driver_version', '-')} (CUDA {at('driver', 'cuda_version')}), clocks SM "
        f"{smi.get('clocks.sm', '-')} of {smi.get('clocks.max.sm', '-')}, "
        f"memory {smi.get('clocks.mem', '-')}",
        f"torch {at('torch', 'version')} (CUDA {at('torch', 'cuda')}), Triton {at('triton', 'version')}, "
        f"Python {at('python', 'version')}, nvcc {at('nvcc', 'version')}",
        f"CPU {at('cpu', 'model')} x{at('cpu', 'count')}; started {summary.get('started_utc')}, "
        f"{summary.get('wall_s')} s of a {summary.get('budget_s')} s budget"
        + (f"; commit {commit}" if commit else ""),
        "",
        f"{'stage':12} {'status':8} {'seconds':>8} {'limit':>6}  note",
    ]
    for stage in summary.get("stages", []):
        lines.append(
            f"{stage['name']:12} {stage['status']:8} {stage.get('seconds', 0):8.1f} "
            f"{stage.get('timeout_s', 0):6.0f}  {stage.get('note', '')}"
        )
    build = summary.get("build")
    if build:
        lines += [
            "",
            f"build: native {'yes' if build.get('native') else 'NO'}, "
            f"CUDA kernels {'yes' if build.get('native_cuda') else 'NO'}, "
            f"cubins {', '.join(build.get('cubin_targets') or []) or '-'}, "
            f"Triton kernels {'importable' if build.get('kernels_importable') else 'NOT importable'}",
        ]
        lines += [f"  {text}" for text in (build.get("backends") or {}).values()]
    lines += ["", *_tests("equivalence", summary.get("equivalence"))]
    lines += ["", *_tests("gpu-marked tests", summary.get("gpu_tests"))]
    sanitizer = summary.get("sanitizer")
    if sanitizer is not None:
        lines += ["", f"compute-sanitizer ({sanitizer.get('path') or 'not found'}):"]
        for run in sanitizer.get("runs", []):
            lines.append(
                f"  {run['tool']:10} errors {run['errors']}, exit {run['returncode']}"
                f"{' (timed out)' if run['timed_out'] else ''}, tests: {_counts(run['tests'])}; "
                f"-k '{run['selection']}'"
            )
    ops = summary.get("ops")
    if ops and ops.get("copy"):
        lines += [
            "",
            f"fused ops alone on {ops['device']} (public op, median ms per call over {ops['reps']} calls); "
            f"copy bandwidth {ops['copy']['gbps']:.0f} GB/s",
            f"  {'op':25} {'backend':8} {'dtype':9} {'ms':>9} {'GB/s':>8} {'% copy':>7} {'rel err':>8}",
        ]
        for row in ops.get("rows", []):
            if "median_ms" in row:
                lines.append(
                    f"  {row['op']:25} {row['backend']:8} {row['dtype']:9} {row['median_ms']:9.4f} "
                    f"{row['gbps']:8.1f} {100 * row['copy_fraction']:6.1f}% {row['rel_err']:8.1e}"
                    + ("" if row["agrees"] else "  DISAGREES with the reference")
                )
            else:
                lines.append(f"  {row['op']:25} {row['backend']:8} {row['dtype']:9} {row.get('error', '')}")
    if summary.get("benchmarks") is not None:
        lines += ["", *_benchmark_report(summary["benchmarks"])]
    try:  # last: the device call's reply keeps the output's tail
        lines += ["", *render(evaluate(summary))]
    except Exception as exc:  # the tables above must still be written
        lines += ["", f"issue 18 targets: not evaluated ({type(exc).__name__}: {exc})"]
    return "\n".join(lines) + "\n"


def _slug(name: str) -> str:
    name = re.sub(r"^nvidia\s+", "", name.strip().lower())
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "unknown"


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="the fetched folder (holding gpu-check.json) or the JSON file")
    parser.add_argument("--results-dir", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--name", help="device part of the file name (default: from the device's name)")
    parser.add_argument("--date", help="date part of the file name (default: the run's start date)")
    parser.add_argument("--allow-dry-run", action="store_true", help="accept a dry run's CPU numbers")
    args = parser.parse_args(argv)
    source = Path(args.source)
    path = source / "gpu-check.json" if source.is_dir() else source
    summary = json.loads(path.read_text())
    if summary.get("schema", "").split("/")[0] != "fastxai-gpu-check":
        parser.error(f"{path} is not a gpu-check summary")
    if summary.get("dry_run") and not args.allow_dry_run:
        parser.error(f"{path} is a dry run (CPU numbers): not recorded as GPU results (--allow-dry-run)")
    name = args.name or _slug(_get(summary, "environment", "device", "name", default="unknown"))
    date = args.date or str(summary.get("started_utc", ""))[:10] or "undated"
    commit = _git("rev-parse", "HEAD")
    summary["recorded"] = {
        "git_commit": commit,
        "uncommitted_changes": bool(_git("status", "--porcelain", "--untracked-files=no"))
        if commit
        else None,
        "source": str(path),
    }
    summary["targets"] = evaluate(summary)
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    stem = f"gpu-{name}-{date}"
    run = 2
    while (results / f"{stem}.json").exists():  # a second run on one day keeps the first
        stem = f"gpu-{name}-{date}-run{run}"
        run += 1
    (results / f"{stem}.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    (results / f"{stem}.txt").write_text(render_text(summary))
    print(f"wrote {results / stem}.json and .txt (commit {commit})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
