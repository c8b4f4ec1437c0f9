"""The GPU check (scripts/gpu_check.sh) in its dry run: every stage end to end on the CPU, so the
one command a session with a lent GPU runs first cannot rot; and the runner's own guarantees (a
stage past its timeout is ended, a failing stage is recorded and the next one runs)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
OPS = (
    "gaussian_perturb",
    "path_points",
    "moment_accumulate",
    "weighted_path_accumulate",
    "pgd_step_linf",
    "pgd_step_l2",
    "lrp_divide",
    "lrp_product",
    "masked_blend",
    "occlude",
)


def _script(name: str) -> ModuleType:
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))  # gpu_check imports gpu_results
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gpu-check") / "out"
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("OUT", None)
    done = subprocess.run(
        ["bash", str(SCRIPTS / "gpu_check.sh"), "--dry-run", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    return out


def test_dry_run_runs_every_stage(dry_run: Path) -> None:
    summary = json.loads((dry_run / "gpu-check.json").read_text())
    assert summary["schema"] == "fastxai-gpu-check/1" and summary["dry_run"] is True
    stages = {stage["name"]: stage for stage in summary["stages"]}
    assert tuple(stages) == _script("gpu_check").STAGES
    assert (
        stages["build"]["status"] == "skipped"
        and "pip install --no-build-isolation" in stages["build"]["note"]
    )
    assert stages["sanitizer"]["status"] == "skipped" and "dry run: not run" in stages["sanitizer"]["note"]
    for name in ("env", "equivalence", "ops", "gpu-tests", "benchmarks"):
        assert stages[name]["status"] == "ok", stages[name]
    env = summary["environment"]
    assert env["device"]["name"] == "cpu" and env["torch"]["version"] and env["python"]["version"]

    equivalence = summary["equivalence"]
    assert equivalence["completed"] and not equivalence["failures"]
    assert equivalence["by_backend"]["native-cpu"]["passed"] > 0

    rows = summary["ops"]["rows"]
    assert {row["op"] for row in rows if row["backend"] == "native"} == set(OPS)
    assert all(row["agrees"] and row["gbps"] > 0 and row["rel_err"] <= row["tolerance"] for row in rows)

    benchmarks = summary["benchmarks"]["benchmarks"]
    assert benchmarks and all(bench["stats"]["median"] > 0 for bench in benchmarks)
    groups = {bench["group"] for bench in benchmarks}
    # the quick CAM pair, and issue 18's suite at CPU sizes: every method on the digits MLP with
    # its floor, fastxai and the peer, and ResNet-18's LRP rows
    suite = {
        (info["method"], info["model"], info["variant"])
        for info in (bench["extra_info"] for bench in benchmarks)
        if info.get("suite") == "issue18"
    }
    methods = _script("gpu_targets").METHODS
    for method in methods:
        peer = "torchattacks" if method == "pgd" else "captum"
        assert {(method, "digits_mlp", name) for name in ("floor", "fastxai", peer)} <= suite
    assert {("lrp", "resnet18", "floor"), ("lrp", "resnet18", "fastxai")} <= suite
    assert groups == {"cam-resnet-float32", *(f"{m}-{model}-float32" for m, model, _ in suite)}

    targets = summary["targets"]  # evaluated on the dry run's CPU numbers: present, not verdicts
    assert [row["method"] for row in targets["mlp_vs_captum"]["rows"]] == list(methods)
    assert all(row["speedup"] > 0 for row in targets["mlp_vs_captum"]["rows"])
    assert [(row["method"], row["model"]) for row in targets["resnet_floor"]["rows"]] == [("lrp", "resnet18")]
    assert len(targets["fused_ops"]["rows"]) == len(OPS)

    text = (dry_run / "gpu-check.txt").read_text()
    for part in (
        "DRY RUN",
        "equivalence:",
        "fused ops alone",
        "cam-resnet-float32",
        "/ paired floor",
        "lrp-digits_mlp-float32",
        "issue 18 targets",
        "on the digits MLP with graphs:",
    ):
        assert part in text
    assert "== benchmarks: ok" in (dry_run / "gpu-check.log").read_text()


def test_results_refuse_a_dry_run_unless_asked(dry_run: Path, tmp_path: Path) -> None:
    results = _script("gpu_results")
    with pytest.raises(SystemExit) as refused:
        results.main([str(dry_run), "--results-dir", str(tmp_path)])
    assert refused.value.code == 2 and not list(tmp_path.iterdir())
    for _ in range(2):  # a second run on the same day keeps the first
        assert (
            results.main(
                [
                    str(dry_run),
                    "--results-dir",
                    str(tmp_path),
                    "--allow-dry-run",
                    "--name",
                    "cpu",
                    "--date",
                    "2000-01-01",
                ]
            )
            == 0
        )
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == [
        "gpu-cpu-2000-01-01-run2.json",
        "gpu-cpu-2000-01-01-run2.txt",
        "gpu-cpu-2000-01-01.json",
        "gpu-cpu-2000-01-01.txt",
    ]
    recorded = json.loads((tmp_path / "gpu-cpu-2000-01-01.json").read_text())["recorded"]
    assert set(recorded) == {"git_commit", "uncommitted_changes", "source"}


def test_a_stage_past_its_timeout_is_ended(tmp_path: Path) -> None:
    check = _script("gpu_check")
    log = check.Log(tmp_path / "log")
    start = time.monotonic()
    script = "import subprocess, sys; print('started', flush=True); subprocess.run(['sleep', '60'])"
    result = check.run_command([sys.executable, "-c", script], 2.0, dict(os.environ), log)
    assert result["timed_out"] and result["tail"] == ["started"]
    assert time.monotonic() - start < 30  # the sleeping grandchild was ended with its group
    failed = check.run_command(
        [sys.executable, "-c", "print('x'); raise SystemExit(3)"], 30.0, dict(os.environ), log
    )
    assert failed["returncode"] == 3 and not failed["timed_out"] and failed["tail"] == ["x"]


def test_a_failing_stage_is_recorded_and_the_next_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    check = _script("gpu_check")

    def broken(check_: object, timeout: float) -> dict:
        raise RuntimeError("planted")

    def fine(check_: object, timeout: float) -> dict:
        return {"status": "ok", "commands": [], "note": "ran"}

    monkeypatch.setitem(check.STAGE_FUNCTIONS, "env", broken)
    monkeypatch.setitem(check.STAGE_FUNCTIONS, "ops", fine)
    assert check.main(["--dry-run", "--stages", "env,ops", "--out", str(tmp_path)]) == 1
    stages = json.loads((tmp_path / "gpu-check.json").read_text())["stages"]
    assert [(s["name"], s["status"], s["note"]) for s in stages] == [
        ("env", "error", "RuntimeError: planted"),
        ("ops", "ok", "ran"),
    ]


def test_test_outcomes_are_counted_per_backend() -> None:
    check = _script("gpu_check")
    events = [
        {"event": "collected", "count": 4},
        {"event": "test", "nodeid": "t.py::a[native-cuda-float32]", "when": "call", "outcome": "passed"},
        {
            "event": "test",
            "nodeid": "t.py::a[triton-cuda-float32]",
            "when": "call",
            "outcome": "failed",
            "message": "AssertionError: off",
        },
        {"event": "test", "nodeid": "t.py::b[native-cuda]", "when": "call", "outcome": "passed"},
        {
            "event": "test",
            "nodeid": "t.py::b[native-cuda]",
            "when": "teardown",
            "outcome": "failed",
            "message": "leak",
        },
        {"event": "test", "nodeid": "t.py::c", "when": "setup", "outcome": "skipped", "message": "no GPU"},
    ]
    summary = check.summarize_tests(events)
    assert summary["collected"] == 4 and not summary["completed"]
    assert summary["outcomes"] == {"passed": 1, "failed": 1, "error": 1, "skipped": 1}
    assert summary["by_backend"] == {
        "native-cuda": {"passed": 1, "error": 1},
        "other": {"skipped": 1},
        "triton-cuda": {"failed": 1},
    }
    assert [f["nodeid"] for f in summary["failures"]] == [
        "t.py::a[triton-cuda-float32]",
        "t.py::b[native-cuda]",
    ]


def test_benchmark_files_in_priority_order_or_as_named(tmp_path: Path) -> None:
    check = _script("gpu_check")
    present = sorted(path.name for path in (ROOT / "benchmarks").glob("test_*.py"))
    files = [path.removeprefix("benchmarks/") for path in check.bench_files(None)]
    assert sorted(files) == present  # every file, each once
    assert files[: len(check.BENCH_FILES)] == list(check.BENCH_FILES)  # all of them exist
    assert files[:2] == ["test_gpu_models.py", "test_integrated_gradients.py"]
    assert "test_gradient_shap.py" in check.BENCH_FILES
    assert check.bench_files(" test_pgd.py,test_gpu_models.py ") == [
        "benchmarks/test_pgd.py",
        "benchmarks/test_gpu_models.py",
    ]
    with pytest.raises(ValueError, match=r"no such file in benchmarks/: test_nothing\.py"):
        check.bench_files("test_pgd.py,test_nothing.py")
    with pytest.raises(SystemExit) as refused:
        check.main(["--dry-run", "--bench-files", "test_nothing.py", "--out", str(tmp_path)])
    assert refused.value.code == 2


def test_a_stage_run_alone_has_the_whole_budget(tmp_path: Path) -> None:
    check = _script("gpu_check")
    args = check.argparse.Namespace(dry_run=False, budget=500.0, argv=[])
    runner = check.Check(args, tmp_path, check.Log(tmp_path / "log"))
    assert runner.cap("benchmarks") == check.CAPS["benchmarks"][0]
    runner.alone = True
    assert check.CAPS["benchmarks"][0] < runner.cap("benchmarks") <= 500.0 - check.RESERVE_S
