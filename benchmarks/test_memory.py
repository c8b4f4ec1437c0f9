"""Peak memory for 16 and 256 samples/steps: streaming accumulation keeps it flat."""

from __future__ import annotations

import pytest
from conftest import implementations
from memory import measure

METHODS = ["integrated_gradients", "smoothgrad"]


@pytest.mark.parametrize("n", [16, 256])
@pytest.mark.parametrize("implementation", [name for name in implementations() if name != "floor"])
@pytest.mark.parametrize("method", METHODS)
def test_peak_memory(benchmark, method: str, implementation: str, n: int) -> None:
    benchmark.group = f"memory-{method}-mlp"
    peak = benchmark.pedantic(lambda: measure(method, implementation, "mlp", n), rounds=1, iterations=1)
    benchmark.extra_info.update(peak_mib=peak, n=n, implementation=implementation, method=method)
