"""Memory estimates checked before work: a size that cannot fit is a ValueError naming the argument.

Methods stream their model passes through fixed-size chunks, so a large ``n_steps`` or
``n_samples`` is only slow; what can exhaust memory is what they hold for the whole run
(result buffers, random draws, coalition tables, quadrature points). Each method adds up those
bytes and calls :func:`check_fits` before the first model call, instead of letting the
allocator fail after minutes of work, or the kernel's out-of-memory killer end the process.

>>> _budget.check_fits("n_samples", n, n * batch * groups * 8, "the coalitions", x.device)
"""

from __future__ import annotations

import os

import torch


def available_bytes(device: torch.device) -> int:
    """About how many bytes can still be allocated on ``device``: free CUDA memory, or the
    host's available memory (``MemAvailable``; physical pages otherwise)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "meta":
        return 1 << 62  # nothing is allocated
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: do not refuse


def describe(nbytes: float) -> str:
    """``nbytes`` in binary units, e.g. ``74.5 GiB``."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def check_fits(
    name: str, value: object, nbytes: float, what: str, device: torch.device, advice: str | None = None
) -> None:
    """Raise a ValueError naming ``name=value`` when ``nbytes`` (what it makes the method hold
    for the whole run: ``what``) exceed the memory available on ``device``; ``advice`` (default
    ``use a smaller <name>``) ends the message."""
    available = available_bytes(device)
    if nbytes > available:
        raise ValueError(
            f"{name}={value!r}: {what} need {describe(nbytes)} on {device.type}; "
            f"available about {describe(available)}; {advice or f'use a smaller {name}'}"
        )


PHILOX_SAMPLES = 1 << 32
"""Noise samples one seed can address: the Philox counter holds the sample index in 32 bits."""


def check_philox_samples(name: str, n_samples: int) -> None:
    """Refuse, before any work, more noise samples than the Philox counter can number (the op
    itself would only fail at the chunk that crosses the limit, after all the passes before it)."""
    if n_samples > PHILOX_SAMPLES:
        raise ValueError(
            f"{name}={n_samples}: the noise generator numbers at most 2**32 samples per seed "
            f"({PHILOX_SAMPLES}); use fewer samples, or several seeds and average the results"
        )
