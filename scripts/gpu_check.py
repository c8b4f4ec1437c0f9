"""One call on a lent GPU: build fastxai's CUDA kernels, test, sanitize and benchmark them, and
write one JSON and one text summary with the device, the versions and the raw numbers.

    bash scripts/gpu_check.sh              # on the GPU machine (results in $OUT or --out)
    bash scripts/gpu_check.sh --dry-run    # here: the same stages on the CPU, small sizes

Stages, in order of value; each runs in its own process with its own timeout, inside one overall
budget (``--budget``, 450 s by default: the device call's 8 minutes less the wheels' install),
and a stage that fails or runs out of time is recorded and the next one runs:

  env          device, driver, clocks and versions (torch, CUDA, Triton, Python, nvcc)
  build        ``pip install --no-build-isolation -e .`` with the CUDA kernels for sm_90 only
               (a direct CMake build if pip fails), then what loaded: backends, cubin targets
  equivalence  tests/test_ops_equivalence.py on cuda for the native and Triton backends
  ops          each fused op alone at ResNet-input size: GB/s against the device's copy
               bandwidth, its output checked against the reference at that size (gpu_ops.py)
  gpu-tests    every other ``gpu``-marked test
  sanitizer    compute-sanitizer memcheck on a short equivalence run; racecheck on the one
               kernel with shared memory (PGD's l2 step)
  benchmarks   benchmarks/ (pytest-benchmark) on cuda in priority order until the budget ends;
               each result is kept as it finishes, so a cut run still reports what it timed.
               First ``test_gpu_models.py``, issue 18's suite (ResNet-18/50 and ViT-B/16 at
               224x224, batch 64, 32 points; more than one stage's cap holds: a second call
               ``--stages benchmarks --bench-files test_gpu_models.py`` runs on for the budget)

A stage run alone (``--stages NAME``) has the whole budget, not its cap.
``--dry-run`` runs every stage on the CPU (CUDA hidden, Triton interpreted, small selections),
skips the CUDA build and compute-sanitizer with a note, and writes to a temporary folder unless
``--out``/``OUT`` names one: ``tests/test_gpu_check.py`` runs it so the script cannot rot.

Outputs in OUT: gpu-check.json (everything; issue 18's targets checked under ``targets``),
gpu-check.txt (the tables, the targets marked met / not met), gpu-check.log (every stage's
output). ``scripts/gpu_results.py`` turns them into ``benchmarks/results/gpu-*``.

This file is also the pytest plugin the stages load (``-p gpu_check``): it appends each test's
outcome and each benchmark's statistics to the JSON-lines file named by GPU_CHECK_EVENTS, as
they finish, so a stage killed at its timeout still reports what ran.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
SCHEMA = "fastxai-gpu-check/1"
STAGES = ("env", "build", "equivalence", "ops", "gpu-tests", "sanitizer", "benchmarks")
# Seconds each stage may take at most (the budget left caps it further): GPU run, dry run.
CAPS = {
    "env": (60, 60),
    "build": (270, 60),
    "equivalence": (150, 90),
    "ops": (90, 60),
    "gpu-tests": (90, 60),
    "sanitizer": (100, 30),
    "benchmarks": (240, 90),
}
# Benchmark files in priority order (the budget usually ends inside this list on a GPU); files
# of benchmarks/ not named here run after these, so name a new one here to move it up.
BENCH_FILES = (
    "test_gpu_models.py",  # issue 18's suite: the MLP, ResNet-18/50, ViT-B/16; its targets' rows
    "test_integrated_gradients.py",
    "test_smoothgrad.py",
    "test_gradient_shap.py",
    "test_pgd.py",
    "test_perturbation.py",
    "test_lrp.py",
    "test_memory.py",
    "test_cam.py",
    "test_compat.py",
    "test_certify.py",
    "test_evaluation.py",
    "test_global_views.py",
)
RESERVE_S = 8.0  # kept back for writing the summary
MIN_STAGE_S = 10.0  # a stage with less time than this left is skipped
BACKEND_ID = re.compile(r"\b(reference|native|triton)-(cpu|cuda)\b")


# ---- the pytest plugin (loaded by the stages with -p gpu_check) ---------------------------------


_WORKER = False  # under pytest-xdist: a worker process (the controller records the outcomes)


def pytest_configure(config: Any) -> None:
    global _WORKER
    _WORKER = hasattr(config, "workerinput")


def _event(record: dict[str, Any]) -> None:
    path = os.environ.get("GPU_CHECK_EVENTS")
    if path:
        with open(path, "a") as handle:
            handle.write(json.dumps(record, default=str) + "\n")


def pytest_collection_finish(session: Any) -> None:
    _event({"event": "collected", "count": len(session.items)})


def pytest_runtest_logreport(report: Any) -> None:
    if _WORKER or (report.when != "call" and report.passed):  # xdist reports again in the controller
        return
    outcome = report.outcome
    if hasattr(report, "wasxfail"):
        outcome = "xfailed" if report.skipped else "xpassed"
    record = {
        "event": "test",
        "nodeid": report.nodeid,
        "when": report.when,
        "outcome": outcome,
        "duration": round(report.duration, 4),
    }
    if report.failed:
        record["message"] = report.longreprtext[-1500:]
    elif report.skipped and isinstance(report.longrepr, tuple):
        record["message"] = str(report.longrepr[2])[:300]
    _event(record)


def pytest_runtest_makereport(item: Any, call: Any) -> None:
    """Each benchmark's statistics as soon as its test returns (firstresult hook: returns None,
    so pytest's own implementation still makes the report)."""
    if call.when != "call":
        return
    stats = getattr(getattr(item, "funcargs", {}).get("benchmark"), "stats", None)
    if stats is not None:
        _event({"event": "benchmark", "nodeid": item.nodeid, "data": stats.as_dict(include_data=False)})


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    if not _WORKER:
        _event({"event": "finished", "exitstatus": int(exitstatus)})


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    events = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line cut by a kill
            events.append(json.loads(line))
    return events


def summarize_tests(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts by outcome, overall and per (backend, device) parameter, and the failures."""
    final: dict[str, tuple[str, dict[str, Any]]] = {}
    for event in events:
        if event.get("event") != "test":
            continue
        nodeid, outcome = event["nodeid"], event["outcome"]
        if outcome == "failed" and event["when"] != "call":
            outcome = "error"
        if nodeid not in final or final[nodeid][0] in ("passed", "skipped"):
            final[nodeid] = (outcome, event)
    counts: collections.Counter[str] = collections.Counter()
    by_backend: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    failures: list[dict[str, str]] = []
    for nodeid, (outcome, event) in final.items():
        counts[outcome] += 1
        match = BACKEND_ID.search(nodeid.partition("[")[2])
        by_backend[match.group(0) if match else "other"][outcome] += 1
        if outcome in ("failed", "error", "xpassed") and len(failures) < 40:
            failures.append({"nodeid": nodeid, "outcome": outcome, "message": event.get("message", "")})
    collected = next((e["count"] for e in events if e.get("event") == "collected"), None)
    finished = next((e["exitstatus"] for e in events if e.get("event") == "finished"), None)
    return {
        "collected": collected,
        "completed": finished is not None,
        "exitstatus": finished,
        "outcomes": dict(counts),
        "by_backend": {name: dict(c) for name, c in sorted(by_backend.items())},
        "failures": failures,
    }


# ---- running one command with a timeout, output streamed ---------------------------------------


class Log:
    """Prints progress and keeps every line in OUT/gpu-check.log."""

    def __init__(self, path: Path) -> None:
        self.handle = path.open("w", errors="replace")
        self.start = time.monotonic()

    def say(self, text: str) -> None:
        line = f"[{time.monotonic() - self.start:6.1f}s] {text}"
        print(line, flush=True)
        self.handle.write(line + "\n")
        self.handle.flush()

    def child(self, line: str) -> None:
        print("    | " + line, flush=True)
        self.handle.write("    | " + line + "\n")


def run_command(
    argv: list[str], timeout: float, env: dict[str, str], log: Log, tail_lines: int = 40
) -> dict[str, Any]:
    """Run ``argv`` in its own process group; on timeout, end that group (SIGTERM, then SIGKILL)."""
    start = time.monotonic()
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    log.say("$ " + " ".join(argv))
    try:
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            text=True,
            errors="replace",
            bufsize=1,
        )
    except OSError as exc:
        log.say(f"cannot start: {exc}")
        return {"argv": argv, "returncode": None, "timed_out": False, "seconds": 0.0, "tail": [str(exc)]}

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            log.child(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        process.wait(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        timed_out = True
        log.say(f"timed out after {timeout:.0f} s: ending process group {process.pid}")
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            try:
                process.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
    reader.join(timeout=5.0)
    seconds = round(time.monotonic() - start, 2)
    return {
        "argv": argv,
        "returncode": process.returncode,
        "timed_out": timed_out,
        "seconds": seconds,
        "tail": list(tail),
    }


# ---- the stages -------------------------------------------------------------------------------


class Check:
    """The state of one run: options, budget, environment for the children, the summary."""

    def __init__(self, args: argparse.Namespace, out: Path, log: Log) -> None:
        self.args, self.dry, self.out, self.log = args, args.dry_run, out, log
        self.deadline = time.monotonic() + args.budget - RESERVE_S
        self.alone = False  # one stage asked for (main sets it): no per-stage cap
        self.work = Path(tempfile.mkdtemp(prefix="fastxai-gpu-check-"))
        self.python = sys.executable
        self.env = dict(os.environ)
        self.env["PYTHONUNBUFFERED"] = "1"
        path = [str(ROOT), *filter(None, self.env.get("PYTHONPATH", "").split(os.pathsep)), str(SCRIPTS)]
        self.env["PYTHONPATH"] = os.pathsep.join(path)
        if self.dry:
            self.env["TRITON_INTERPRET"] = "1"  # Triton on the CPU
            self.env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU even where a GPU is present
            # One thread: on a busy shared CPU, spinning OpenMP threads make tiny runs 10-50x slower.
            self.env["OMP_NUM_THREADS"] = "1"
        else:
            self.env.pop("TRITON_INTERPRET", None)  # interpreted Triton on a GPU would time nothing
        self.summary: dict[str, Any] = {
            "schema": SCHEMA,
            "dry_run": self.dry,
            "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "budget_s": args.budget,
            "argv": args.argv,
            "stages": [],
        }

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def cap(self, stage: str) -> float:
        if self.alone and not self.dry:  # a second call for one stage (--stages benchmarks): the budget
            return self.left()
        return min(CAPS[stage][1 if self.dry else 0], self.left())

    def run(self, argv: list[str], timeout: float, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
        env = dict(self.env, **(extra_env or {}))
        return run_command(argv, timeout, env, self.log)

    def worker(self, name: str, timeout: float, *extra: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Run a worker of gpu_ops.py in a child; its JSON result (or {} if it wrote none)."""
        result_path = self.work / f"{name}.json"
        argv = [self.python, str(SCRIPTS / "gpu_ops.py"), name, "--result", str(result_path), *extra]
        if self.dry:
            argv.append("--dry-run")
        command = self.run(argv, timeout)
        try:
            data = json.loads(result_path.read_text())
        except (OSError, json.JSONDecodeError):  # the worker wrote nothing (or died writing)
            data = {}
        return command, data

    def pytest(
        self,
        stage: str,
        args: list[str],
        timeout: float,
        extra_env: dict[str, str] | None = None,
        prefix: list[str] | None = None,
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        events_path = self.work / f"{stage}.events.jsonl"
        events_path.unlink(missing_ok=True)
        argv = [
            *(prefix or []),
            self.python,
            "-m",
            "pytest",
            *args,
            "-q",
            "--tb=short",
            "-p",
            "no:cacheprovider",
            "-p",
            "gpu_check",
        ]
        if not self.dry and importlib.util.find_spec("pytest_timeout") is not None:
            argv.append("--timeout=90")  # one hung test must not eat the stage
        env = dict(extra_env or {}, GPU_CHECK_EVENTS=str(events_path))
        return self.run(argv, timeout, env), read_events(events_path)


def stage_env(check: Check, timeout: float) -> dict[str, Any]:
    command, data = check.worker("env", timeout)
    check.summary["environment"] = data
    status = "ok" if command["returncode"] == 0 and data else "failed"
    if not check.dry and not data.get("torch", {}).get("cuda_available"):
        status, data["note"] = "failed", "torch sees no CUDA device"
    return {"status": status, "commands": [command], "note": data.get("note", "")}


def stage_build(check: Check, timeout: float) -> dict[str, Any]:
    env = {
        "FASTXAI_REQUIRE_NATIVE": "1",
        "FASTXAI_WITH_CUDA": "1",
        "TORCH_CUDA_ARCH_LIST": "9.0",
        "MAX_JOBS": str(os.cpu_count() or 4),
    }
    pip = [
        check.python,
        "-m",
        "pip",
        "install",
        "--no-build-isolation",
        "--no-deps",
        "--no-index",
        "-v",
        "-e",
        ".",
    ]
    commands = []
    note = ""
    if check.dry:
        note = "dry run: no CUDA build (would run: " + " ".join(f"{k}={v}" for k, v in env.items())
        note += " " + " ".join(pip[1:]) + "); the extension already built here is used"
    else:
        start = time.monotonic()
        commands.append(check.run(pip, timeout - 20, env))
        if commands[-1]["returncode"] != 0 and not commands[-1]["timed_out"]:
            note = "pip install -e failed; built with CMake directly"
            commands.append(cmake_build(check, timeout - 20 - (time.monotonic() - start), env))
    verify, data = check.worker(
        "verify", min(30.0, max(check.left(), 5.0)), *([] if check.dry else ["--link-kernels"])
    )
    commands.append(verify)
    check.summary["build"] = data
    if check.dry:
        status = "skipped"
    elif commands[-2]["returncode"] == 0 and data.get("native_cuda") and data.get("kernels_importable"):
        status = "ok"
    else:
        status = "timeout" if any(c["timed_out"] for c in commands) else "failed"
    return {"status": status, "commands": commands, "note": note}


def cmake_build(check: Check, timeout: float, env: dict[str, str]) -> dict[str, Any]:
    """What setup.py does, without setuptools (should the image's be too old for pyproject's metadata)."""
    return check.run(
        [check.python, str(SCRIPTS / "gpu_ops.py"), "cmake", "--result", os.devnull], timeout, env
    )


def _tests_status(
    check: Check, command: dict[str, Any], summary: dict[str, Any], expected: tuple[str, ...]
) -> tuple[str, str]:
    outcomes = summary["outcomes"]
    missing = [name for name in expected if not summary["by_backend"].get(name, {}).get("passed")]
    if command["timed_out"]:
        return "timeout", f"{sum(outcomes.values())} of {summary['collected']} tests finished"
    if outcomes.get("failed") or outcomes.get("error") or command["returncode"] not in (0, 5):
        return "failed", ""
    if missing:
        return "failed", "no test passed for " + ", ".join(missing)
    return "ok", ""


def _version_at_least(package: str, minimum: tuple[int, ...]) -> bool:
    import importlib.metadata

    try:
        found = tuple(int(part) for part in re.findall(r"\d+", importlib.metadata.version(package))[:2])
    except importlib.metadata.PackageNotFoundError:
        return False
    return found >= minimum


def stage_equivalence(check: Check, timeout: float) -> dict[str, Any]:
    if check.dry:
        selection = ["-k", "float32 and tiny and (path_points or pgd_step or occlude) and not hypothesis"]
        backends = check.summary.get("build", {}).get("backends", {})
        expected = tuple(
            f"{name}-cpu"
            for name in ("native", "triton")
            if re.search(r"available on .*\bcpu\b", backends.get(name, ""))
        )
    else:
        selection, expected = ["-m", "gpu"], ("native-cuda", "triton-cuda")
    if check.args.workers > 1:  # pytest-xdist: Triton's compiles and the many tiny tests in parallel
        selection += ["-n", str(check.args.workers)]
        if _version_at_least("pytest-xdist", (3, 2)):
            # Contiguous shares of the test list: each worker compiles other kernels (round-robin
            # would have every worker compile the same Triton kernel at the same moment).
            selection += ["--dist", "worksteal"]
    command, events = check.pytest("equivalence", ["tests/test_ops_equivalence.py", *selection], timeout)
    summary = summarize_tests(events)
    check.summary["equivalence"] = summary
    status, note = _tests_status(check, command, summary, expected)
    return {"status": status, "commands": [command], "note": note}


def stage_ops(check: Check, timeout: float) -> dict[str, Any]:
    command, data = check.worker("ops", timeout)
    check.summary["ops"] = data
    if command["timed_out"]:
        status = "timeout"
    elif command["returncode"] != 0 or not data.get("rows"):
        status = "failed"
    else:
        status = "ok" if all(row.get("agrees", False) for row in data["rows"]) else "failed"
    return {"status": status, "commands": [command], "note": data.get("note", "")}


def stage_gpu_tests(check: Check, timeout: float) -> dict[str, Any]:
    if check.dry:  # the gpu-marked tests skip on the CPU; one file keeps the collection short
        args = ["tests/attacks/test_attacks_cuda_graph.py", "-m", "gpu"]
    else:
        args = ["tests", "-m", "gpu", "--ignore=tests/test_ops_equivalence.py"]
    command, events = check.pytest("gpu-tests", args, timeout)
    summary = summarize_tests(events)
    check.summary["gpu_tests"] = summary
    status, note = _tests_status(check, command, summary, ())
    if not check.dry and status == "ok" and not summary["outcomes"].get("passed"):
        status, note = "failed", "no gpu-marked test passed"
    return {"status": status, "commands": [command], "note": note}


def find_sanitizer() -> str | None:
    from gpu_ops import _tool  # stdlib-only at import; one list of where CUDA's tools live

    return _tool("compute-sanitizer")


SANITIZER_RUNS = (
    # (tool, -k selection of tests/test_ops_equivalence.py's gpu-marked tests)
    ("memcheck", "float32 and (odd or not_multiple_of_4) and not hypothesis"),
    ("racecheck", "pgd_step and l2 and float32 and native"),
)


def stage_sanitizer(check: Check, timeout: float) -> dict[str, Any]:
    sanitizer = find_sanitizer()
    if check.dry or sanitizer is None:
        check.summary["sanitizer"] = {"path": sanitizer, "runs": []}
        note = f"dry run: not run (found: {sanitizer or 'no'})" if check.dry else "not found: not run"
        return {"status": "skipped", "commands": [], "note": note}
    runs, commands = [], []
    end = time.monotonic() + timeout
    for index, (tool, selection) in enumerate(SANITIZER_RUNS):
        share = (end - time.monotonic()) * (0.7 if index == 0 else 1.0)
        prefix = [sanitizer, "--tool", tool, "--error-exitcode", "86", "--print-limit", "20"]
        # Exact allocations: the caching allocator would hide overruns inside its blocks.
        command, events = check.pytest(
            f"sanitizer-{tool}",
            ["tests/test_ops_equivalence.py", "-m", "gpu", "-k", selection],
            share,
            {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"},
            prefix,
        )
        commands.append(command)
        errors = None
        for line in command["tail"]:
            match = re.search(r"ERROR SUMMARY: (\d+) error", line)
            if match:
                errors = int(match.group(1))
        runs.append(
            {
                "tool": tool,
                "selection": selection,
                "errors": errors,
                "returncode": command["returncode"],
                "timed_out": command["timed_out"],
                "tests": summarize_tests(events)["outcomes"],
            }
        )
    check.summary["sanitizer"] = {"path": sanitizer, "runs": runs}
    if any(r["errors"] or r["returncode"] == 86 for r in runs):
        status = "failed"
    elif any(r["timed_out"] for r in runs):
        status = "timeout"
    else:
        status = "ok" if all(r["returncode"] == 0 for r in runs) else "failed"
    return {"status": status, "commands": commands, "note": ""}


DRY_BENCH_SELECTION = (
    # the quickest pair of CAM rows; the issue-18 suite at CPU sizes on the MLP (every method:
    # floor, fastxai, peers) and ResNet-18's LRP rows (torchvision and Zennit's canonizer)
    "(test_cam and (floor or plus)) or (test_gpu_models and float32 and not compiled and not graphed "
    "and (digits_mlp- or resnet18-lrp-))"
)


def bench_files(names: str | None) -> list[str]:
    """``--bench-files`` (comma-separated names in benchmarks/) in that order, else every file
    of benchmarks/ in ``BENCH_FILES`` order and the rest after."""
    present = sorted(path.name for path in (ROOT / "benchmarks").glob("test_*.py"))
    if names:
        chosen = [name.strip() for name in names.split(",") if name.strip()]
        unknown = [name for name in chosen if name not in present]
        if unknown:
            raise ValueError(f"--bench-files: no such file in benchmarks/: {', '.join(unknown)}")
        return [f"benchmarks/{name}" for name in chosen]
    ordered = [name for name in BENCH_FILES if name in present]
    return [f"benchmarks/{name}" for name in ordered + [n for n in present if n not in ordered]]


def stage_benchmarks(check: Check, timeout: float) -> dict[str, Any]:
    if check.dry:
        files = ["benchmarks/test_cam.py", "benchmarks/test_gpu_models.py", "-k", DRY_BENCH_SELECTION]
    else:
        files = bench_files(check.args.bench_files)
    # CPU sizes for the issue-18 suite in the dry run (it skips on a CPU otherwise)
    extra = {"FASTXAI_BENCH_SMALL": "1"} if check.dry else {}
    command, events = check.pytest(
        "benchmarks", [*files, "--benchmark-enable", "--benchmark-only"], timeout, extra
    )
    benchmarks = [e["data"] for e in events if e.get("event") == "benchmark"]
    tests = summarize_tests(events)
    machine = {
        "gpu": check.summary.get("environment", {}).get("device", {}).get("name"),
        "torch": check.summary.get("environment", {}).get("torch", {}).get("version"),
        "threads": check.summary.get("environment", {}).get("torch", {}).get("threads"),
        "cpu": {"brand_raw": check.summary.get("environment", {}).get("cpu", {}).get("model")},
    }
    check.summary["benchmarks"] = {"machine_info": machine, "benchmarks": benchmarks, "tests": tests}
    note = f"{len(benchmarks)} benchmarks timed of {tests['collected']} collected"
    if command["timed_out"]:
        return {"status": "timeout", "commands": [command], "note": note + " (budget ended)"}
    ok = command["returncode"] == 0 and benchmarks
    return {"status": "ok" if ok else "failed", "commands": [command], "note": note}


STAGE_FUNCTIONS = {
    "env": stage_env,
    "build": stage_build,
    "equivalence": stage_equivalence,
    "ops": stage_ops,
    "gpu-tests": stage_gpu_tests,
    "sanitizer": stage_sanitizer,
    "benchmarks": stage_benchmarks,
}


# ---- summary ----------------------------------------------------------------------------------


def write_outputs(check: Check) -> None:
    summary = check.summary
    summary["finished_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    summary["wall_s"] = round(time.monotonic() - check.log.start, 1)
    try:
        from gpu_targets import evaluate

        summary["targets"] = evaluate(summary)  # issue 18's verdicts and the numbers behind them
    except Exception as exc:  # a bug here must not lose the run's results
        summary["targets"] = {"error": f"{type(exc).__name__}: {exc}"}
    text = json.dumps(summary, indent=1, default=str)
    (check.out / "gpu-check.json.part").write_text(text)
    (check.out / "gpu-check.json.part").replace(check.out / "gpu-check.json")
    (check.out / "gpu-check.txt").write_text(render(summary))


def render(summary: dict[str, Any]) -> str:
    from gpu_results import render_text

    return render_text(summary)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="the CPU, small sizes, no CUDA build")
    parser.add_argument("--out", help="output folder (default: $OUT, else a new temporary folder)")
    parser.add_argument("--budget", type=float, help="seconds for the whole run (default 450; dry 240)")
    parser.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument(
        "--bench-files",
        help="comma-separated files of benchmarks/ for the benchmarks stage, in that order (default: "
        "every file, BENCH_FILES first; not in a dry run)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="pytest-xdist processes for the equivalence suite (default 4 on a GPU where xdist is "
        "installed, else 1)",
    )
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    if args.budget is None:
        args.budget = 240.0 if args.dry_run else 450.0
    if args.workers is None:
        with_xdist = importlib.util.find_spec("xdist") is not None
        args.workers = 4 if with_xdist and not args.dry_run else 1
    stages = STAGES if not args.stages else tuple(s.strip() for s in args.stages.split(","))
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stages {unknown}; choose from {STAGES}")
    try:
        bench_files(args.bench_files)
    except ValueError as error:
        parser.error(str(error))
    out = Path(args.out or os.environ.get("OUT") or tempfile.mkdtemp(prefix="fastxai-gpu-check-out-"))
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "gpu-check.log")
    check = Check(args, out, log)
    check.alone = len(stages) == 1
    mode = "dry run on the CPU" if check.dry else "GPU run"
    log.say(f"fastxai gpu check: {mode}, budget {args.budget:.0f} s, stages {', '.join(stages)}, out {out}")
    for number, name in enumerate(stages, 1):
        timeout = check.cap(name)
        if timeout < MIN_STAGE_S:
            record = {
                "name": name,
                "status": "skipped",
                "seconds": 0.0,
                "timeout_s": 0.0,
                "note": f"budget spent ({max(check.left(), 0):.0f} s left)",
                "commands": [],
            }
        else:
            log.say(
                f"== [{number}/{len(stages)}] {name} (timeout {timeout:.0f} s, {check.left():.0f} s left)"
            )
            start = time.monotonic()
            try:
                record = {"name": name, **STAGE_FUNCTIONS[name](check, timeout)}
            except Exception as exc:  # a bug in one stage must not lose the others' results
                record = {
                    "name": name,
                    "status": "error",
                    "note": f"{type(exc).__name__}: {exc}",
                    "commands": [],
                }
            record["seconds"] = round(time.monotonic() - start, 1)
            record["timeout_s"] = round(timeout, 1)
        log.say(f"== {name}: {record['status']} {record['note']}".rstrip())
        for command in record["commands"]:
            if command["returncode"] == 0:
                command.pop("tail", None)  # the log has it; the JSON keeps failures' tails only
        check.summary["stages"].append(record)
        write_outputs(check)  # after every stage: a run cut short still leaves its results
    write_outputs(check)
    text = (out / "gpu-check.txt").read_text()
    # The call's reply keeps only the end of the output: the stage table comes last again.
    table = [f"{s['name']:12} {s['status']:8} {s.get('seconds', 0):6.1f} s  {s.get('note', '')}"
             for s in check.summary["stages"]]  # fmt: skip
    text += "\nstages (again)\n" + "\n".join(table) + "\n"
    print("\n" + text, flush=True)
    log.handle.write("\n" + text)
    log.handle.close()
    shutil.rmtree(check.work, ignore_errors=True)
    print(f"gpu check: results in {out}", flush=True)
    bad = [s["name"] for s in check.summary["stages"] if s["status"] in ("failed", "timeout", "error")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.path.insert(0, str(SCRIPTS))
    sys.exit(main())
