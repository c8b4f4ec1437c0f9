"""Issue 18's targets as ``scripts/gpu_targets.py`` checks them, on a synthetic GPU-check summary
(the numbers are made up; the verdicts follow from them by the targets' definitions), and as
``scripts/gpu_results.py`` records and prints them."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
METHODS = ("integrated_gradients", "smoothgrad", "gradient_shap", "lrp", "occlusion", "kernel_shap", "pgd")


def _script(name: str) -> ModuleType:
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))  # gpu_results imports gpu_targets
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bench(method: str, model: str, dtype: str, variant: str, median: float) -> dict[str, Any]:
    """One benchmark as gpu_check records it (pytest-benchmark's as_dict, statistics trimmed)."""
    return {
        "group": f"{method}-{model}-{dtype}",
        "name": f"test_gpu_models[{model}-{method}-{dtype}-{variant}]",
        "params": {"model_name": model, "method": method, "dtype_name": dtype, "implementation": variant},
        "extra_info": {
            "suite": "issue18",
            "method": method,
            "model": model,
            "dtype": dtype,
            "variant": variant,
            "peak_cuda_mib": 100.0,
        },
        "stats": {"median": median, "min": median, "max": median, "rounds": 2},
    }


def _summary() -> dict[str, Any]:
    copy = 4000.0
    ops = [  # op, backend, dtype, GB/s, agrees
        ("path_points", "native", "float32", 3400.0, True),  # 85%: met
        ("path_points", "triton", "float32", 3000.0, True),
        ("occlude", "native", "float32", 2000.0, True),  # 50%
        ("occlude", "triton", "float32", 3900.0, False),  # fast but wrong: does not count
        ("lrp_divide", "native", "bfloat16", 3300.0, True),  # 82.5%: met
    ]
    rows = [
        {"op": op, "backend": backend, "dtype": dtype, "gbps": gbps, "copy_fraction": gbps / copy,
         "agrees": agrees, "median_ms": 1.0, "rel_err": 0.0, "tolerance": 1e-6}
        for op, backend, dtype, gbps, agrees in ops
    ]  # fmt: skip
    benches = []
    for method in METHODS:  # ResNet-18: every method at 1.05x its floor, except occlusion's 1.30x
        benches.append(_bench(method, "resnet18", "float32", "floor", 2.0))
        fastxai = 2.6 if method == "occlusion" else 2.1
        benches.append(_bench(method, "resnet18", "float32", "fastxai", fastxai))
    # the graphed row is the best: 1.02x
    benches.append(_bench("integrated_gradients", "resnet18", "float32", "fastxai-graphed", 2.04))
    benches.append(_bench("smoothgrad", "resnet18", "bfloat16", "floor", 1.0))
    benches.append(_bench("smoothgrad", "resnet18", "bfloat16", "fastxai", 1.08))
    benches.append(_bench("pgd", "resnet50", "float32", "floor", 4.0))  # no fastxai row: not measured
    for method, captum, graphed in (
        ("integrated_gradients", 0.010, 0.002),  # 5x: met
        ("smoothgrad", 0.010, 0.004),  # 2.5x
    ):
        benches.append(_bench(method, "digits_mlp", "float32", "captum", captum))
        benches.append(_bench(method, "digits_mlp", "float32", "fastxai", 0.003))
        benches.append(_bench(method, "digits_mlp", "float32", "fastxai-graphed", graphed))
    benches.append(_bench("lrp", "digits_mlp", "float32", "captum", 0.004))  # no graphed form: best row
    benches.append(_bench("lrp", "digits_mlp", "float32", "fastxai", 0.001))
    benches.append(_bench("pgd", "digits_mlp", "float32", "torchattacks", 0.030))
    benches.append(_bench("pgd", "digits_mlp", "float32", "fastxai-graphed", 0.005))
    benches.append(  # another file's row: not the suite's, ignored by the targets
        {"group": "integrated_gradients-mlp-float32", "name": "x", "params": {"implementation": "floor"},
         "extra_info": {}, "stats": {"median": 9.0}}
    )  # fmt: skip
    return {
        "schema": "fastxai-gpu-check/1",
        "dry_run": False,
        "started_utc": "2000-01-01T00:00:00+00:00",
        "stages": [],
        "environment": {"device": {"name": "NVIDIA H200"}},
        "ops": {"device": "cuda", "reps": 20, "copy": {"gbps": copy}, "rows": rows},
        "benchmarks": {"machine_info": {"gpu": "NVIDIA H200"}, "benchmarks": benches, "tests": {}},
    }


def test_fused_ops_target_takes_each_ops_best_agreeing_backend() -> None:
    ops = _script("gpu_targets").evaluate(_summary())["fused_ops"]
    found = {(row["op"], row["dtype"]): row for row in ops["rows"]}
    assert set(found) == {("path_points", "float32"), ("occlude", "float32"), ("lrp_divide", "bfloat16")}
    assert found[("path_points", "float32")]["backend"] == "native"
    assert found[("path_points", "float32")]["copy_fraction"] == pytest.approx(3400 / 4000)
    assert found[("occlude", "float32")]["backend"] == "native"  # triton's disagreeing row skipped
    assert [found[key]["met"] for key in sorted(found)] == [True, False, True]  # lrp, occlude, path
    assert ops["status"] == "not met" and ops["copy_gbps"] == 4000.0


def test_resnet_floor_target_uses_each_groups_best_fastxai_row() -> None:
    floor = _script("gpu_targets").evaluate(_summary())["resnet_floor"]
    rows = {(row["method"], row["model"], row["dtype"]): row for row in floor["rows"]}
    ig = rows[("integrated_gradients", "resnet18", "float32")]
    assert ig["best"] == "fastxai-graphed" and ig["ratio"] == pytest.approx(2.04 / 2.0)
    assert ig["ratios"]["fastxai"] == pytest.approx(2.1 / 2.0) and ig["floor_s"] == 2.0
    assert not rows[("occlusion", "resnet18", "float32")]["met"]
    assert rows[("occlusion", "resnet18", "float32")]["ratio"] == pytest.approx(1.3)
    assert rows[("smoothgrad", "resnet18", "bfloat16")]["ratio"] == pytest.approx(1.08)
    met = {key for key, row in rows.items() if row["met"]}
    assert len(rows) == 8 and len(met) == 7
    # every ResNet-50 method is missing (PGD has only its floor); ResNet-18 is complete
    assert floor["missing"] == [f"{method} resnet50" for method in METHODS]
    assert floor["status"] == "not met"


def test_mlp_target_compares_the_graphed_row_with_the_peer() -> None:
    mlp = _script("gpu_targets").evaluate(_summary())["mlp_vs_captum"]
    rows = {row["method"]: row for row in mlp["rows"]}
    assert rows["integrated_gradients"]["speedup"] == pytest.approx(5.0)
    assert rows["integrated_gradients"]["met"] and rows["integrated_gradients"]["graphed"]
    assert rows["smoothgrad"]["speedup"] == pytest.approx(2.5) and not rows["smoothgrad"]["met"]
    assert rows["lrp"]["fastxai"] == "fastxai" and not rows["lrp"]["graphed"]
    assert rows["lrp"]["speedup"] == pytest.approx(4.0) and rows["lrp"]["met"]
    assert rows["pgd"]["peer"] == "torchattacks" and rows["pgd"]["speedup"] == pytest.approx(6.0)
    assert mlp["missing"] == ["gradient_shap", "occlusion", "kernel_shap"]
    assert mlp["status"] == "not met"


def test_statuses() -> None:
    targets = _script("gpu_targets")
    assert targets._status([], 3) == "not measured"
    assert targets._status([True, True], 0) == "met"
    assert targets._status([True, True], 1) == "incomplete"
    assert targets._status([True, False], 0) == "not met"
    empty = targets.evaluate({"schema": "fastxai-gpu-check/1"})
    assert {name: value["status"] for name, value in empty.items()} == {
        "fused_ops": "not measured",
        "resnet_floor": "not measured",
        "mlp_vs_captum": "not measured",
    }


def test_results_record_and_print_the_verdicts(tmp_path: Path) -> None:
    source = tmp_path / "gpu-check.json"
    source.write_text(json.dumps(_summary()))
    results = _script("gpu_results")
    out = tmp_path / "results"
    assert results.main([str(source), "--results-dir", str(out), "--date", "2000-01-01"]) == 0
    recorded = json.loads((out / "gpu-h200-2000-01-01.json").read_text())
    assert recorded["targets"]["resnet_floor"]["rows"][0]["floor_s"] == 2.0  # the raw numbers kept
    assert recorded["benchmarks"]["benchmarks"][0]["stats"]["median"] == 2.0
    text = (out / "gpu-h200-2000-01-01.txt").read_text()
    section = text[text.index("issue 18 targets") :]
    assert "each fused op >= 80% of copy bandwidth: NOT MET" in section
    assert "every method <= 1.10x the floor on ResNet-18 and ResNet-50: NOT MET" in section
    assert "occlusion             resnet18  float32     1.30x (fastxai; floor 2.0000 s)  NOT MET" in section
    assert "integrated_gradients     5.00x (captum 0.01000 s / fastxai-graphed 0.00200 s)  met" in section
    assert "not measured: gradient_shap, occlusion, kernel_shap" in section
    # the benchmark tables show the CUDA peak of the suite's rows
    assert "peak MiB" in text[: text.index("issue 18 targets")]
