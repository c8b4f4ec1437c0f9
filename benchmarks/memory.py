"""Peak memory of one attribution call, measured in a fresh process.

    python benchmarks/memory.py METHOD IMPLEMENTATION MODEL N  ->  prints peak MiB above the
    memory in use before the call.

On CUDA: ``torch.cuda.max_memory_allocated``. On the CPU: the process's resident-set high
water mark (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``) minus the resident set
just before the call; a fresh process per measurement keeps earlier allocations out of it,
and a fixed glibc mmap threshold makes freed buffers leave the resident set (with glibc's
adaptive threshold, freed blocks stay mapped and the resident set measures fragmentation).
"""

from __future__ import annotations

import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _call(method: str, implementation: str, model, x, target, n: int):  # type: ignore[no-untyped-def]
    import fastxai as fx

    if implementation == "captum":
        from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

        if method == "integrated_gradients":
            return lambda: IntegratedGradients(model).attribute(x, target=target, n_steps=n)
        return lambda: NoiseTunnel(Saliency(model)).attribute(
            x, nt_samples=n, stdevs=0.15, target=target, abs=False
        )
    backend = implementation.removeprefix("fastxai-")
    if method == "integrated_gradients":
        return lambda: fx.integrated_gradients(model, x, target=target, n_steps=n, backend=backend)
    return lambda: fx.smoothgrad(model, x, target=target, n_samples=n, seed=0, backend=backend)


def measure_here(method: str, implementation: str, model_name: str, n: int) -> float:
    import torch
    from models import case

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, x, target = case(model_name)
    model, x, target = model.to(device), x.to(device), target.to(device)
    function = _call(method, implementation, model, x, target, n)
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        function()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset VmHWM to the current resident set
    before = _status_kib("VmRSS")
    function()
    return (_status_kib("VmHWM") - before) / 1024


def measure(method: str, implementation: str, model_name: str, n: int) -> float:
    """Peak MiB of one call, measured in a child process."""
    environment = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    output = subprocess.run(
        [sys.executable, __file__, method, implementation, model_name, str(n)],
        check=True,
        capture_output=True,
        text=True,
        env=environment,
    ).stdout
    return float(output.strip().splitlines()[-1])


if __name__ == "__main__":
    method, implementation, model_name, n = sys.argv[1:5]
    print(f"{measure_here(method, implementation, model_name, int(n)):.3f}")
