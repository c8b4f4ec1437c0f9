"""Issue 18's performance targets, checked on a GPU check's recorded numbers (``gpu-check.json``):

  fused ops      each fused op alone at >= 80% of the device's copy bandwidth (the ``ops`` stage:
                 per op and dtype the best backend whose output agrees with the reference)
  ResNet floor   every method <= 1.10x its floor on ResNet-18 and ResNet-50 (224x224, batch 64,
                 32 points; ``benchmarks/test_gpu_models.py``): per method, model and dtype the
                 best fastxai row (eager, graphed or compiled) over the floor of that group
  MLP vs Captum  >= 3x Captum on the digits-size MLP with graphs: per method Captum's median
                 (torchattacks' for PGD) over fastxai's graphed row (its best row where the
                 method has no graphed form, e.g. LRP)

``evaluate`` returns, per target, a status (``met``; ``not met``: a measured item misses it;
``incomplete``: every measured item meets it but some were not measured; ``not measured``) and
the raw numbers each verdict rests on; ``render`` makes the text summary's lines.

    >>> targets = evaluate(json.load(open("gpu-check.json")))
    >>> targets["resnet_floor"]["status"]
"""

from __future__ import annotations

import textwrap
from collections import defaultdict
from typing import Any

COPY_FRACTION = 0.80
FLOOR_RATIO = 1.10
MLP_SPEEDUP = 3.0
METHODS = ("integrated_gradients", "smoothgrad", "gradient_shap", "lrp", "occlusion", "kernel_shap", "pgd")
RESNETS = ("resnet18", "resnet50")
SUITE = "issue18"  # extra_info["suite"] of benchmarks/test_gpu_models.py's rows


def _status(verdicts: list[bool], missing: int) -> str:
    if not verdicts:
        return "not measured"
    if not all(verdicts):
        return "not met"
    return "incomplete" if missing else "met"


def fused_ops(summary: dict[str, Any]) -> dict[str, Any]:
    ops = summary.get("ops") or {}
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for row in ops.get("rows", []):
        key = (row["op"], row["dtype"])
        candidate = row if row.get("agrees") and "copy_fraction" in row else None
        held = best.get(key)
        if held is None or (
            candidate is not None and candidate["copy_fraction"] > held.get("copy_fraction", -1.0)
        ):
            best[key] = candidate or {"op": row["op"], "dtype": row["dtype"]}
    rows = []
    for (op, dtype), row in best.items():
        fraction = row.get("copy_fraction")
        rows.append(
            {
                "op": op,
                "dtype": dtype,
                "backend": row.get("backend"),
                "gbps": row.get("gbps"),
                "copy_fraction": fraction,
                "met": fraction is not None and fraction >= COPY_FRACTION,
                **({} if fraction is not None else {"note": "no backend agreed with the reference"}),
            }
        )
    return {
        "target": f"each fused op >= {COPY_FRACTION:.0%} of copy bandwidth",
        "copy_gbps": (ops.get("copy") or {}).get("gbps"),
        "status": _status([row["met"] for row in rows], 0),
        "rows": rows,
    }


def _suite_rows(summary: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, float]]:
    """{(method, model, dtype): {implementation: median s}} of the issue-18 suite's rows."""
    groups: dict[tuple[str, str, str], dict[str, float]] = defaultdict(dict)
    for bench in (summary.get("benchmarks") or {}).get("benchmarks", []):
        info = bench.get("extra_info") or {}
        if info.get("suite") != SUITE:
            continue
        key = (info["method"], info["model"], info["dtype"])
        groups[key][info["variant"]] = bench["stats"]["median"]
    return groups


def resnet_floor(summary: dict[str, Any]) -> dict[str, Any]:
    groups = _suite_rows(summary)
    rows, missing = [], []
    for model in RESNETS:
        for method in METHODS:
            for dtype in ("float32", "bfloat16"):
                times = groups.get((method, model, dtype), {})
                ours = {name: s for name, s in times.items() if name.startswith("fastxai")}
                floor = times.get("floor")
                if not floor or not ours:
                    if dtype == "float32":  # bfloat16 rows exist only for methods with dtype=
                        missing.append(f"{method} {model}")
                    continue
                ratios = {name: seconds / floor for name, seconds in sorted(ours.items())}
                best = min(ratios, key=ratios.__getitem__)
                rows.append(
                    {
                        "method": method,
                        "model": model,
                        "dtype": dtype,
                        "floor_s": floor,
                        "medians_s": dict(sorted(ours.items())),
                        "ratios": ratios,
                        "best": best,
                        "ratio": ratios[best],
                        "met": ratios[best] <= FLOOR_RATIO,
                    }
                )
    return {
        "target": f"every method <= {FLOOR_RATIO:.2f}x the floor on ResNet-18 and ResNet-50",
        "status": _status([row["met"] for row in rows], len(missing)),
        "rows": rows,
        "missing": missing,
    }


def mlp_vs_captum(summary: dict[str, Any]) -> dict[str, Any]:
    groups = _suite_rows(summary)
    rows, missing = [], []
    for method in METHODS:
        times = groups.get((method, "digits_mlp", "float32"), {})
        peer = "torchattacks" if method == "pgd" else "captum"
        ours = {name: s for name, s in times.items() if name.startswith("fastxai")}
        if peer not in times or not ours:
            missing.append(method)
            continue
        name = "fastxai-graphed" if "fastxai-graphed" in ours else min(ours, key=ours.__getitem__)
        speedup = times[peer] / ours[name]
        rows.append(
            {
                "method": method,
                "peer": peer,
                "peer_s": times[peer],
                "fastxai": name,
                "fastxai_s": ours[name],
                "graphed": name == "fastxai-graphed",
                "speedup": speedup,
                "met": speedup >= MLP_SPEEDUP,
            }
        )
    return {
        "target": f">= {MLP_SPEEDUP:.0f}x Captum (torchattacks for PGD) on the digits MLP with graphs",
        "status": _status([row["met"] for row in rows], len(missing)),
        "rows": rows,
        "missing": missing,
    }


def evaluate(summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "fused_ops": fused_ops(summary),
        "resnet_floor": resnet_floor(summary),
        "mlp_vs_captum": mlp_vs_captum(summary),
    }


def _mark(met: bool) -> str:
    return "met" if met else "NOT MET"


def _missing(names: list[str]) -> list[str]:
    text = "not measured: " + ", ".join(names)
    return textwrap.wrap(text, 106, initial_indent="    ", subsequent_indent="      ") if names else []


def render(targets: dict[str, Any]) -> list[str]:
    """The text summary's section: each target's status, then the numbers behind it."""
    lines = ["issue 18 targets"]
    ops = targets["fused_ops"]
    lines.append(f"  {ops['target']}: {ops['status'].upper()}")
    for row in ops["rows"]:
        if row["copy_fraction"] is None:
            lines.append(f"    {row['op']:25} {row['dtype']:9} {row.get('note', '')}  NOT MET")
        else:
            lines.append(
                f"    {row['op']:25} {row['dtype']:9} {row['backend']:7} {row['gbps']:8.1f} GB/s "
                f"{100 * row['copy_fraction']:6.1f}%  {_mark(row['met'])}"
            )
    floor = targets["resnet_floor"]
    lines.append(f"  {floor['target']}: {floor['status'].upper()}")
    for row in floor["rows"]:
        others = ", ".join(
            f"{name} {ratio:.2f}x" for name, ratio in row["ratios"].items() if name != row["best"]
        )
        lines.append(
            f"    {row['method']:21} {row['model']:9} {row['dtype']:9} {row['ratio']:6.2f}x "
            f"({row['best']}; floor {row['floor_s']:.4f} s)  {_mark(row['met'])}"
            + (f"  [{others}]" if others else "")
        )
    lines += _missing(floor["missing"])
    mlp = targets["mlp_vs_captum"]
    lines.append(f"  {mlp['target']}: {mlp['status'].upper()}")
    for row in mlp["rows"]:
        lines.append(
            f"    {row['method']:21} {row['speedup']:7.2f}x ({row['peer']} {row['peer_s']:.5f} s / "
            f"{row['fastxai']} {row['fastxai_s']:.5f} s)  {_mark(row['met'])}"
            + ("" if row["graphed"] else "  (no graphed row)")
        )
    lines += _missing(mlp["missing"])
    return lines
