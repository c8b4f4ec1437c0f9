"""Turn a pytest-benchmark JSON file into tables of ratios.

    python benchmarks/report.py results.json

Time: for each group (method, model, dtype), every implementation's median, its ratio to the
floor's own benchmark, its ratio to the floor timed in alternation with it (the steadier
figure on a shared machine), and its ratio to fastxai's best backend; on a GPU, rows that recorded
their CUDA peak (``peak_cuda_mib``) show it too. Memory: peak MiB at n=16 and n=256 and their ratio.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def report(path: str) -> str:
    with open(path) as handle:
        data = json.load(handle)
    lines = [
        f"machine: {data['machine_info'].get('cpu', {}).get('brand_raw', '?')}, "
        f"torch {data['machine_info'].get('torch', '?')}, {data['machine_info'].get('threads', '?')} threads"
        + (f", {data['machine_info']['gpu']}" if "gpu" in data["machine_info"] else "")
    ]
    groups: dict[str, dict[str, float]] = defaultdict(dict)
    paired: dict[str, dict[str, float]] = defaultdict(dict)
    cuda_peaks: dict[str, dict[str, float]] = defaultdict(dict)
    memory: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for bench in data["benchmarks"]:
        info = bench.get("extra_info", {})
        if "peak_mib" in info:
            memory[info["method"]][info["implementation"]][info["n"]] = info["peak_mib"]
            continue
        params = bench["params"]
        implementation = params.get("implementation") or params.get("variant", bench["name"])
        groups[bench["group"]][implementation] = bench["stats"]["median"]
        if "peak_cuda_mib" in info:
            cuda_peaks[bench["group"]][implementation] = info["peak_cuda_mib"]
        if "paired_floor_median" in info:
            paired[bench["group"]][implementation] = bench["stats"]["median"] / info["paired_floor_median"]
    for group, times in sorted(groups.items()):
        floor = times.get("floor")
        ours = {k: v for k, v in times.items() if k == "fastxai" or k.startswith("fastxai-")}
        best = min(ours.values()) if ours else None
        lines.append(f"\n{group}")
        columns: tuple[str, ...] = ("median s", "/ floor", "/ paired floor", "/ fastxai best")
        widths: tuple[int, ...] = (10, 8, 15, 15)
        if cuda_peaks[group]:
            columns, widths = (*columns, "peak MiB"), (*widths, 9)
        header = " ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True))
        lines.append(f"  {'implementation':20} {header}")
        for implementation, seconds in sorted(times.items(), key=lambda item: item[1]):
            to_floor = f"{seconds / floor:8.2f}" if floor else f"{'-':>8}"
            ratio = paired[group].get(implementation)
            to_paired = f"{ratio:15.2f}" if ratio else f"{'-':>15}"
            to_best = f"{seconds / best:15.2f}" if best else f"{'-':>15}"
            line = f"  {implementation:20} {seconds:10.4f} {to_floor} {to_paired} {to_best}"
            if cuda_peaks[group]:
                peak = cuda_peaks[group].get(implementation)
                line += f" {peak:9.0f}" if peak is not None else f" {'-':>9}"
            lines.append(line)
    if memory:
        lines.append("\npeak memory, MiB above the memory in use before the call (MLP, batch 32)")
        lines.append(f"  {'method':22} {'implementation':20} {'n=16':>9} {'n=256':>9} {'ratio':>7}")
        for method, rows in sorted(memory.items()):
            for implementation, peaks in sorted(rows.items()):
                small, large = peaks.get(16), peaks.get(256)
                ratio = f"{large / small:7.2f}" if small and large else f"{'-':>7}"
                small_text = f"{small:9.1f}" if small else f"{'-':>9}"
                large_text = f"{large:9.1f}" if large else f"{'-':>9}"
                lines.append(f"  {method:22} {implementation:20} {small_text} {large_text} {ratio}")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/report.py RESULTS.json")
    print(report(sys.argv[1]))
