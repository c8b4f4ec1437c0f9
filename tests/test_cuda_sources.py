"""The CUDA kernels compute nothing of their own, so the CPU tests exercise the GPU's arithmetic.

Every float32 operation of the fused ops lives in a function of the shared, torch-free headers
(csrc/float32.h, philox.h, elementwise.h, pgd.h, rescale.h, occlusion.h: ``FASTXAI_HD``, i.e.
``__host__ __device__``), called by both the CPU kernels (csrc/cpu) and the CUDA kernels
(csrc/cuda). Two checks on the sources, with no GPU or compiler:

- no arithmetic in csrc/cuda/*.cu, *.cuh: no operator (``+ - * /``, their compound assignments,
  comparisons, unary minus) next to a float value (a variable, parameter or array declared
  ``float`` or of the element type ``T``, an element read with ``Elem<T>::load``, a float
  returned by a shared function, a shuffle, a float literal or cast), and no math function or
  rounding intrinsic (``sqrtf``, ``__fadd_rn``, ``__hmul``, ``float32::fadd``...). Integer
  indexing is free; what the kernels may do with floats is load, store, select and pass them
  to the shared functions.
- every shared function is reached, directly or through other shared functions, from both a
  CPU and a CUDA kernel file: no helper is GPU-only or CPU-only.

The scanner (tests/kernel_sources.py) is a tokenizer, not a C++ parser (``auto``, which would hide
a value's type, is refused in kernel files); its own tests below show what it catches and what it
lets through.
"""

from __future__ import annotations

import re

import pytest
from kernel_sources import CPU, CUDA, HEADERS, arithmetic, body, one_sided, shared_functions


def test_the_shared_headers_are_torch_and_cuda_free() -> None:
    assert {"float32.h", "philox.h", "elementwise.h", "pgd.h", "rescale.h", "occlusion.h"} <= set(HEADERS)
    for name, text in HEADERS.items():
        includes = re.findall(r'#include\s+[<"]([^>"]+)[>"]', text)
        assert not [i for i in includes if re.match(r"(ATen|torch|c10|cuda|cub)", i)], (name, includes)


@pytest.mark.parametrize("name", sorted(CUDA))
def test_cuda_sources_compute_only_through_the_shared_functions(name: str) -> None:
    _, float_names = shared_functions(HEADERS)
    assert arithmetic(CUDA[name], float_names) == []


def test_every_shared_function_runs_on_both_backends() -> None:
    assert one_sided(HEADERS, CPU.values(), CUDA.values()) == {}


# op: (its CPU block function, its CUDA kernel, a shared function both must call)
KERNELS = [
    ("gaussian_perturb", "gaussian_span", "gaussian_perturb_kernel", "noise::perturbed"),
    ("gaussian_perturb", "gaussian_span", "gaussian_perturb_kernel", "philox::box_muller"),
    ("moment_accumulate", "moment_span", "moment_accumulate_kernel", "moments::add_square"),
    ("path_points", "path_span", "path_points_kernel", "path::point"),
    ("weighted_path_accumulate", "weighted_span", "weighted_path_accumulate_kernel", "path::accumulate"),
    ("pgd_step linf", "pgd_linf_elements", "pgd_linf_kernel", "pgd::linf"),
    ("pgd_step l2", "pgd_l2_delta", "pgd_l2_kernel", "pgd::l2_delta"),
    ("pgd_step l2", "pgd_l2_apply_span", "pgd_l2_kernel", "pgd::l2_apply"),
    ("lrp_divide", "lrp_divide_span", "lrp_divide_kernel", "lrp::divide"),
    ("lrp_product", "lrp_product_span", "lrp_product_kernel", "lrp::alpha_beta"),
    ("masked_blend", "masked_blend_span", "masked_blend_kernel", "path::point"),
    ("occlude", "occlude", "occlude_kernel", "occlusion::peel_start"),
    ("rescale_backward", "rescale_backward_span", "rescale_backward_kernel", "rescale::backward"),
]


@pytest.mark.parametrize(("op", "cpu", "cuda", "shared"), KERNELS, ids=[f"{k[0]}-{k[3]}" for k in KERNELS])
def test_each_ops_kernels_call_its_shared_arithmetic(op: str, cpu: str, cuda: str, shared: str) -> None:
    assert f"{shared}(" in body(CPU, cpu), (op, cpu)
    assert f"{shared}(" in body(CUDA, cuda), (op, cuda)


# ---- the scanner's own oracles ----------------------------------------------------------------

KERNEL = """
template <typename T, typename Index>
__global__ void k(const T* __restrict__ x, const float* __restrict__ sigma, T* __restrict__ out, float eps,
                  Index n) {{
  const Index stride = static_cast<Index>(gridDim.x) * kThreads;
  for (Index i = static_cast<Index>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {{
    const float v = Elem<T>::load(x[i]);
    float z[4];
    {line}
  }}
}}
"""

FLAGGED = [
    "out[i] = Elem<T>::store(v * eps);",
    "out[i] = Elem<T>::store(v + 1.0f);",
    "out[i] = Elem<T>::store(sigma[i / 4] * v);",
    "out[i] = Elem<T>::store(Elem<T>::load(x[i]) - v);",
    "out[i] = Elem<T>::store(noise::perturbed(v, eps, z[0]) / 2.0f);",
    "out[i] = x[i] * x[i];",
    "z[0] += v;",
    "out[i] = Elem<T>::store(-eps);",
    "out[i] = Elem<T>::store(v >= 0.0f ? v : 0.0f);",  # the old lrp_divide's select condition
    "out[i] = Elem<T>::store(static_cast<float>(i) * v);",
    "out[i] = Elem<T>::store(sqrtf(v));",
    "out[i] = Elem<T>::store(__fadd_rn(v, eps));",
    "out[i] = Elem<T>::store(fmul(v, eps));",  # the old kernels' `using philox::fmul`
    "out[i] = Elem<T>::store(float32::fdiv(v, eps));",
    "out[i] = __hmul(x[i], x[i]);",
    "const auto w = v; out[i] = Elem<T>::store(w);",
    "float a = v, b = eps; out[i] = Elem<T>::store(pgd::add(a, b) * b);",
]

CLEAN = [
    "out[i] = Elem<T>::store(noise::perturbed(v, sigma[i / 4], z[i % 4]));",
    "out[i * 2 + 1] = Elem<T>::store(path::point(v, eps, z[n - i - 1]));",
    "const Index b = i / n; out[b * n + i] = x[b * n + i];",
    "out[i] = i < n / 2 ? x[i] : out[i - 1];",
    "kernel<T, int32_t><<<blocks, kThreads, 0, stream>>>(x, out, n);",
    "out[i] = Elem<T>::store(pgd::linf(v, v, v, sigma[i], eps, -1, 1));",
]


@pytest.mark.parametrize("line", FLAGGED)
def test_the_scanner_finds_float_arithmetic(line: str) -> None:
    assert arithmetic(KERNEL.format(line=line), {"perturbed", "add"}) != []


@pytest.mark.parametrize("line", CLEAN)
def test_the_scanner_lets_indexing_and_shared_calls_through(line: str) -> None:
    assert arithmetic(KERNEL.format(line=line), {"perturbed", "point", "linf"}) == []


def test_the_scanner_scopes_declarations_to_their_function() -> None:
    """A float `start` in one kernel does not make another kernel's integer `start` a float."""
    source = """
    __global__ void a(const float* x, float* out) { const float start = x[0]; out[0] = start; }
    __global__ void b(int start, int* out) { for (int p = 0; p < 2; ++p) out[start + p] = 0; }
    """
    assert arithmetic(source) == []
    assert len(arithmetic(source.replace("out[0] = start;", "out[0] = start + 1;"))) == 1


def test_one_sided_helpers_are_found() -> None:
    header = """
    namespace fastxai {
    namespace lib {
    using float32::fadd;
    FASTXAI_HD float both(float a) { return inner(a); }
    FASTXAI_HD float inner(float a) { return fadd(a, a); }
    FASTXAI_HD float gpu(float a) { return a; }
    FASTXAI_HD float cpu(float a) { return a; }
    FASTXAI_HD float idle(float a) { return a; }
    }  // namespace lib
    namespace float32 {
    FASTXAI_HD float fadd(float a, float b) { return a + b; }
    }  // namespace float32
    }  // namespace fastxai
    """
    cpu = ["o[i] = lib::both(a[i]) + lib::cpu(a[i]);  // lib::gpu( in a comment does not count"]
    cuda = ["out[i] = lib::both(lib::gpu(v));"]
    assert one_sided({"lib.h": header}, cpu, cuda) == {
        "cpu only": ["lib::cpu"],
        "cuda only": ["lib::gpu"],
        "unused": ["lib::idle"],
    }
    assert one_sided({"lib.h": header}, [*cpu, "lib::gpu(x); lib::idle(x);"], [*cuda, "lib::cpu(x);"]) == {
        "cpu only": ["lib::idle"]
    }
