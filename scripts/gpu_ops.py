"""Workers of scripts/gpu_check.py, each run in its own process: ``env`` (device, driver, versions),
``verify`` (what the build produced), ``cmake`` (the CUDA build without setuptools) and ``ops``
(each fused op alone, timed and checked).

    python scripts/gpu_ops.py ops --result ops.json [--dry-run]

``ops``: every fused op of ``fastxai.ops`` on each kernel backend the device has, in float32 and
bfloat16, at ResNet-input size (B=128, 3x224x224, 8 samples/steps/copies: outputs of 0.6 GB in
float32, far past the 60 MB L2 of an H200). The time is the public op's (its argument checks
included): the median over 5 groups of 4 back-to-back calls timed with CUDA events, after 3
warm-up calls. The bytes are the fewest the op must move (each input read once, each output
written once, an in-place accumulator read and written), so GB/s over the device's copy
bandwidth (a 1 GiB device-to-device copy, bytes read plus written) is the share of the memory
roofline reached. Before timing, each backend's output is compared with the reference backend's
at that size: ‖got − want‖ / ‖want‖ in float64, within 1e-5 (float32) or 1e-2 (bfloat16); NaN
never agrees. The result file is rewritten after every row, so a worker killed at its timeout
leaves its rows.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = (
    "numpy",
    "triton",
    "captum",
    "torchattacks",
    "zennit",
    "pytest",
    "pytest-benchmark",
    "hypothesis",
    "setuptools",
    "pybind11",
    "cmake",
    "ninja",
    "torchvision",
    "timm",
    "transformers",
)
TOLERANCE = {"float32": 1e-5, "bfloat16": 1e-2}
GROUP = 4  # calls per timed group on a GPU


def _output(argv: list[str], timeout: float = 20.0) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _line(argv: list[str], index: int) -> str | None:
    lines = (_output(argv) or "").splitlines()
    return lines[index] if lines else None


def _tool(name: str) -> str | None:
    """A CUDA or driver tool: on PATH, else where the CUDA image keeps it (the driver's folder
    /usr/local/nvidia is a mount that PATH may miss)."""
    folders = [os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin"), "/usr/local/cuda/bin",
               "/usr/local/cuda/compute-sanitizer", "/usr/local/nvidia/bin", "/usr/bin"]  # fmt: skip
    for candidate in (shutil.which(name), *(os.path.join(folder, name) for folder in folders)):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def env_info(dry: bool) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "platform": {
            "system": platform.system(),
            "machine": platform.machine(),
            "kernel": platform.release(),
        },
        "cpu": {"count": os.cpu_count(), "model": _cpu_model()},
        "torch": {
            "version": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "cuda_available": torch.cuda.is_available(),
            "threads": torch.get_num_threads(),
        },
        "packages": {name: _version(name) for name in PACKAGES},
    }
    with_triton = importlib.util.find_spec("triton") is not None
    info["triton"] = {"version": importlib.import_module("triton").__version__ if with_triton else None}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["device"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "l2_mib": round(getattr(props, "L2_cache_size", 0) / 2**20, 1) or None,
            "count": torch.cuda.device_count(),
        }
    else:
        info["device"] = {"name": "cpu", "model": info["cpu"]["model"]}
    smi = _tool("nvidia-smi")
    if smi:
        fields = "name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu"
        fields += ",power.draw,pstate"
        row = _output([smi, f"--query-gpu={fields}", "--format=csv,noheader"])
        header = _output([smi]) or ""
        cuda = re.search(r"CUDA Version:\s*([\d.]+)", header)
        info["driver"] = {
            "nvidia_smi": dict(zip(fields.split(","), (row or "").split(", "), strict=False)),
            "cuda_version": cuda.group(1) if cuda else None,
        }
    else:
        info["driver"] = None
    nvcc = _tool("nvcc")
    info["nvcc"] = {"path": nvcc, "version": _line([nvcc, "--version"], -1)} if nvcc else None
    sanitizer = _tool("compute-sanitizer")
    info["compute_sanitizer"] = (
        {"path": sanitizer, "version": _line([sanitizer, "--version"], -1)} if sanitizer else None
    )
    info["cmake"] = _line(["cmake", "--version"], 0)
    commit = _output(["git", "rev-parse", "HEAD"])
    info["git"] = (
        {"commit": commit, "dirty": bool(_output(["git", "status", "--porcelain"]))} if commit else None
    )
    info["dry_run"] = dry
    return info


def verify_build(link_kernels: bool) -> dict[str, Any]:
    """What the build left: does fastxai._C load, with CUDA; do the Triton kernels import; which
    GPU targets the module's cubins have."""
    import fastxai
    from fastxai import _native

    data: dict[str, Any] = {}
    ok, reason = _native.available()
    data["native"] = ok
    data["native_reason"] = reason
    data["native_cuda"] = bool(ok and _native.cuda_available())
    module = sys.modules.get("fastxai._C")
    data["module"] = getattr(module, "__file__", None)
    try:
        importlib.import_module("fastxai.kernels")
    except ImportError as exc:
        data["kernels_error"] = str(exc)
        if link_kernels and not (ROOT / "fastxai" / "kernels").exists():
            # Not installed (the CMake fallback): the kernels live in kernels/ and install as
            # fastxai.kernels; a link in this throwaway copy of the tree serves the same.
            (ROOT / "fastxai" / "kernels").symlink_to(Path("..") / "kernels")
            importlib.invalidate_caches()
            importlib.import_module("fastxai.kernels")
            data["kernels_linked"] = True
    data["kernels_importable"] = "fastxai.kernels" in sys.modules
    data["backends"] = {name: str(info) for name, info in fastxai.backends().items()}
    cuobjdump = _tool("cuobjdump")
    if data["module"] and cuobjdump:
        listing = _output([cuobjdump, "--list-elf", data["module"]]) or ""
        data["cubin_targets"] = sorted(set(re.findall(r"sm_\d+a?", listing)))
    return data


def cmake_build() -> dict[str, Any]:
    """The extension with its CUDA kernels for sm_90, by CMake alone (the arguments setup.py passes)."""
    import sysconfig

    import pybind11
    import torch.utils

    build = ROOT / "build" / "gpu-check"
    configure = [
        "cmake", "-S", str(ROOT), "-B", str(build), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
        f"-DPython_EXECUTABLE={sys.executable}", f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
        f"-Dpybind11_DIR={pybind11.get_cmake_dir()}", f"-DFASTXAI_OUTPUT_DIR={ROOT / 'fastxai'}",
        f"-DFASTXAI_EXT_SUFFIX={sysconfig.get_config_var('EXT_SUFFIX')}", "-DFASTXAI_WITH_CUDA=ON",
        "-DFASTXAI_CUDA_ARCHS=90",
    ]  # fmt: skip
    nvcc = _tool("nvcc")
    if nvcc:
        configure.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
    subprocess.run(configure, check=True)
    jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 4)
    subprocess.run(["cmake", "--build", str(build), "--parallel", jobs], check=True)
    return {"built": str(build)}


# ---- ops: each fused op alone -------------------------------------------------------------------


def _cases(torch: Any, device: str, dry: bool) -> list[tuple[str, Callable[[Any, int], dict[str, Any]]]]:
    """(name, make(dtype, element size)): make returns {"state": () -> fresh accumulators (or ()),
    "run": (backend, state) -> outputs, "bytes": the fewest bytes the op moves}."""
    from fastxai import ops

    batch, features, k = (2, (3, 8, 8), 2) if dry else (128, (3, 224, 224), 8)
    patch = 4 if dry else 16
    numel = batch * features[0] * features[1] * features[2]
    generator = torch.Generator(device=device).manual_seed(0)

    def rand(*shape: int, dtype: Any) -> Any:
        return torch.randn(*shape, generator=generator, device=device).to(dtype)

    def accumulators() -> tuple[Any, Any]:
        return (torch.zeros(batch, *features, device=device), torch.zeros(batch, *features, device=device))

    def gaussian(dtype: Any, s: int) -> dict[str, Any]:
        x = rand(batch, *features, dtype=dtype)
        return {
            "state": lambda: (),
            "bytes": (1 + k) * numel * s,
            "run": lambda b, _: ops.gaussian_perturb(x, 0.5, 7, 0, k, 0, backend=b),
        }

    def path(dtype: Any, s: int) -> dict[str, Any]:
        x, base = rand(batch, *features, dtype=dtype), rand(batch, *features, dtype=dtype)
        alphas = torch.linspace(0, 1, k, device=device)
        return {
            "state": lambda: (),
            "bytes": (2 + k) * numel * s,
            "run": lambda b, _: ops.path_points(x, base, alphas, backend=b),
        }

    def moments(dtype: Any, s: int) -> dict[str, Any]:
        values = rand(k, batch, *features, dtype=dtype)

        def run(b: str, acc: tuple[Any, Any]) -> tuple[Any, Any]:
            ops.moment_accumulate(values, acc[0], acc[1], backend=b)
            return acc

        return {"state": accumulators, "bytes": k * numel * s + 16 * numel, "run": run}

    def weighted(dtype: Any, s: int) -> dict[str, Any]:
        grads, weights = rand(k, batch, *features, dtype=dtype), torch.rand(k, batch, device=device)

        def run(b: str, acc: tuple[Any, Any]) -> Any:
            ops.weighted_path_accumulate(grads, weights, acc[0], backend=b)
            return acc[0]

        return {"state": accumulators, "bytes": k * numel * s + 8 * numel, "run": run}

    def pgd(norm: str) -> Callable[[Any, int], dict[str, Any]]:
        def make(dtype: Any, s: int) -> dict[str, Any]:
            origin = torch.rand(batch, *features, generator=generator, device=device).to(dtype)
            adv = (origin.float() + 0.01 * rand(batch, *features, dtype=torch.float32)).clamp(0, 1).to(dtype)
            grad = rand(batch, *features, dtype=dtype)
            eps = 0.03 if norm == "linf" else 3.0
            return {
                "state": lambda: (),
                "bytes": 4 * numel * s,
                "run": lambda b, _: ops.pgd_step(adv, grad, origin, eps / 4, eps, 0.0, 1.0, norm, backend=b),
            }

        return make

    def divide(dtype: Any, s: int) -> dict[str, Any]:
        relevance, z = rand(batch, *features, dtype=dtype), rand(batch, *features, dtype=dtype)
        return {
            "state": lambda: (),
            "bytes": 3 * numel * s,
            "run": lambda b, _: ops.lrp_divide(relevance, z, 1e-6, backend=b),
        }

    def product(dtype: Any, s: int) -> dict[str, Any]:
        a, c, c_neg = (rand(batch, *features, dtype=dtype) for _ in range(3))
        return {
            "state": lambda: (),
            "bytes": 4 * numel * s,
            "run": lambda b, _: ops.lrp_product(a, c, c_neg, 2.0, 1.0, backend=b),
        }

    def blend(dtype: Any, s: int) -> dict[str, Any]:
        x, base = rand(batch, *features, dtype=dtype), rand(batch, *features, dtype=dtype)
        rows = torch.arange(features[1], device=device) // patch
        cols = torch.arange(features[2], device=device) // patch
        groups_per_row = (features[2] + patch - 1) // patch
        mask = (rows.view(-1, 1) * groups_per_row + cols.view(1, -1)).expand(features).contiguous()
        groups = int(mask.max()) + 1
        keep = (torch.rand(batch, k, groups, generator=generator, device=device) < 0.5).float()
        moved = (2 + k) * numel * s + mask.numel() * 8 + keep.numel() * 4
        return {
            "state": lambda: (),
            "bytes": moved,
            "run": lambda b, _: ops.masked_blend(x, base, mask, keep, backend=b),
        }

    def occlude(dtype: Any, s: int) -> dict[str, Any]:
        x, base = rand(batch, *features, dtype=dtype), rand(batch, *features, dtype=dtype)
        window = (features[0], patch, patch)
        return {
            "state": lambda: (),
            "bytes": (2 + k) * numel * s,
            "run": lambda b, _: ops.occlude(x, base, window, window, 0, k, backend=b),
        }

    return [
        ("gaussian_perturb", gaussian),
        ("path_points", path),
        ("moment_accumulate", moments),
        ("weighted_path_accumulate", weighted),
        ("pgd_step_linf", pgd("linf")),
        ("pgd_step_l2", pgd("l2")),
        ("lrp_divide", divide),
        ("lrp_product", product),
        ("masked_blend", blend),
        ("occlude", occlude),
    ]


def _time_ms(torch: Any, device: str, function: Callable[[], Any], warmup: int, reps: int) -> list[float]:
    """Milliseconds per call, one figure per group of GROUP calls run back to back between two
    CUDA events: the host's work for a call (the op's checks, the launch) overlaps the previous
    call's kernel, so only the first call of a group can leave the device idle."""
    for _ in range(warmup):
        function()
    group = GROUP if device == "cuda" else 1
    times = []
    if device == "cuda":
        torch.cuda.synchronize()
    for _ in range(max(reps // group, 1)):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(group):
                function()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / group)
        else:
            begin = time.perf_counter()
            function()
            times.append((time.perf_counter() - begin) * 1e3)
    return times


def _relative_error(torch: Any, got: Any, want: Any) -> float:
    got_t = got if isinstance(got, tuple) else (got,)
    want_t = want if isinstance(want, tuple) else (want,)
    num = sum(float((g.double() - w.double()).norm()) ** 2 for g, w in zip(got_t, want_t, strict=True))
    den = sum(float(w.double().norm()) ** 2 for w in want_t)
    return (num / den) ** 0.5 if den > 0 else num**0.5


def _copy_bandwidth(torch: Any, device: str, elements: int, warmup: int, reps: int) -> dict[str, float]:
    source = torch.rand(elements, device=device)
    target = torch.empty_like(source)
    median = statistics.median(_time_ms(torch, device, lambda: target.copy_(source), warmup, reps))
    moved = 2 * elements * source.element_size()
    return {"bytes": moved, "median_ms": median, "gbps": moved / median / 1e6}


def _measure(
    torch: Any, device: str, case: dict[str, Any], backend: str, want: Any, warmup: int, reps: int
) -> dict[str, Any]:
    """The backend's output against the reference's (rel_err), then its time and GB/s."""
    state = case["state"]()
    error = _relative_error(torch, case["run"](backend, state), want)
    times = _time_ms(torch, device, lambda: case["run"](backend, state), warmup, reps)
    median = statistics.median(times)
    return {"rel_err": error, "median_ms": median, "min_ms": min(times), "gbps": case["bytes"] / median / 1e6}


def ops_bench(dry: bool, result: Path) -> dict[str, Any]:
    import torch

    import fastxai

    device = "cuda" if torch.cuda.is_available() else "cpu"
    warmup, reps = (1, 1) if dry else (3, 20)
    backends = [
        name
        for name, info in fastxai.backends().items()
        if name != "reference" and info.available and device in info.devices
    ]
    data: dict[str, Any] = {
        "device": device,
        "backends": backends,
        "warmup": warmup,
        "reps": reps,
        "rows": [],
    }
    # The roofline: a large device-to-device copy, bytes read plus written.
    data["copy"] = _copy_bandwidth(torch, device, 2**20 if dry else 2**28, warmup, reps)
    dtypes = [torch.float32] if dry else [torch.float32, torch.bfloat16]
    for dtype in dtypes:
        dtype_name = str(dtype).removeprefix("torch.")
        for name, make in _cases(torch, device, dry):
            case = make(dtype, torch.tensor([], dtype=dtype).element_size())
            want = case["run"]("reference", case["state"]())
            for backend in backends:
                row = {"op": name, "backend": backend, "dtype": dtype_name, "bytes": case["bytes"]}
                try:
                    row.update(_measure(torch, device, case, backend, want, warmup, reps))
                    row["agrees"] = (
                        row["rel_err"] == row["rel_err"] and row["rel_err"] <= TOLERANCE[dtype_name]
                    )
                    row["tolerance"] = TOLERANCE[dtype_name]
                    row["copy_fraction"] = row["gbps"] / data["copy"]["gbps"]
                except Exception as exc:  # recorded; the other rows still run
                    row.update(agrees=False, error=f"{type(exc).__name__}: {exc}"[:500])
                data["rows"].append(row)
                _write(result, data)  # after every row: a worker killed at its timeout leaves them
                print(
                    f"{name:25} {backend:7} {dtype_name:9} "
                    + (
                        f"{row['median_ms']:8.3f} ms {row['gbps']:8.1f} GB/s rel_err {row['rel_err']:.1e}"
                        if "median_ms" in row
                        else row.get("error", "")
                    ),
                    flush=True,
                )
            del want, case
            if device == "cuda":
                torch.cuda.empty_cache()
    data["note"] = f"copy bandwidth {data['copy']['gbps']:.0f} GB/s"
    return data


def _write(path: Path, data: dict[str, Any]) -> None:
    if str(path) == os.devnull:
        return
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(data, indent=1, default=str))
    part.replace(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("worker", choices=("env", "verify", "ops", "cmake"))
    parser.add_argument("--result", required=True, help="JSON file to write")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument(
        "--link-kernels",
        action="store_true",
        help="verify: link fastxai/kernels to kernels/ when the package is not installed",
    )
    args = parser.parse_args()
    result = Path(args.result)
    if args.worker == "env":
        data = env_info(args.dry_run)
    elif args.worker == "verify":
        data = verify_build(args.link_kernels)
    elif args.worker == "cmake":
        data = cmake_build()
    else:
        data = ops_bench(args.dry_run, result)
    _write(result, data)
    print(json.dumps(data, default=str)[:3000] if args.worker != "ops" else data.get("note", ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
