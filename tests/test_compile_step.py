"""``compile=True``: each gradient method's per-chunk step (path or noise points, forward, backward,
fused accumulation) compiled as one graph (``fullgraph=True``: a graph break is an error), once per
call and reused, equal to the eager run; and the fused ops trace on every backend.

Inductor on the CPU costs seconds per graph: one Integrated Gradients check runs with inductor
always, the other methods' inductor checks are marked slow; the rest compile with ``aot_eager``
(Dynamo and AOTAutograd, the same tracing and the same fullgraph rule, without code generation).
"""

from __future__ import annotations

import pytest
import torch
from conftest import backend_params
from models import assert_same_state, mlp, model_state, small_cnn
from torch import nn

import fastxai as fx
from fastxai import _compile, ops

pytestmark = pytest.mark.usefixtures("one_thread")  # inductor's OpenMP kernels stall on a busy CPU

torch_dynamo = pytest.importorskip("torch._dynamo")
from torch._dynamo.utils import counters  # noqa: E402


@pytest.fixture
def fresh_dynamo():  # type: ignore[no-untyped-def]
    """A Dynamo with no compiled graphs and zeroed counters, so a test counts its own."""
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _graphs() -> int:
    return int(counters["stats"]["unique_graphs"])


def _cnn() -> nn.Module:
    return small_cnn(seed=3).eval()


def test_integrated_gradients_inductor_fullgraph_equals_eager(fresh_dynamo) -> None:  # type: ignore[no-untyped-def]
    """The CI check with inductor: one graph for the whole step, no graph break, the eager result
    to float rounding, and a second call with the same model and chunk shape compiles nothing."""
    model = _cnn()
    x, target = torch.rand(3, 1, 8, 8), torch.tensor([1, 4, 7])
    # 10 steps of 3 rows in chunks of 12: blocks of 4, 4 and a ragged 2 (run uncompiled)
    eager, delta = fx.integrated_gradients(
        model, x, target=target, n_steps=10, chunk_size=12, return_convergence_delta=True
    )
    compiled, compiled_delta = fx.integrated_gradients(
        model, x, target=target, n_steps=10, chunk_size=12, return_convergence_delta=True, compile=True
    )
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled_delta, delta, rtol=1e-4, atol=1e-6)
    assert _graphs() == 1
    assert not counters["graph_break"]
    again = fx.integrated_gradients(model, x, target=target, n_steps=10, chunk_size=12, compile=True)
    torch.testing.assert_close(again, compiled, rtol=0, atol=0)
    assert _graphs() == 1  # reused: guarded on the same model and shapes


def _methods(background: torch.Tensor) -> dict:
    return {
        "integrated_gradients": lambda m, x, t, **kw: fx.integrated_gradients(
            m, x, target=t, n_steps=7, **kw
        ),
        "smoothgrad": lambda m, x, t, **kw: fx.smoothgrad(
            m, x, t, n_samples=5, stdevs=0.2, seed=3, nt_type="vargrad", multiply_by_inputs=True, **kw
        ),
        "gradient_shap": lambda m, x, t, **kw: fx.gradient_shap(
            m, x, t, baselines=background, n_samples=5, stdevs=0.1, seed=3, **kw
        ),
        "saliency": lambda m, x, t, **kw: fx.saliency(m, x, t, abs=False, **kw),
        "input_x_gradient": lambda m, x, t, **kw: fx.input_x_gradient(m, x, t, **kw),
    }


def _check_compiled(method: str, compile: object, **options: object) -> None:
    model = _cnn()
    torch.manual_seed(0)
    x, target, background = torch.rand(3, 1, 8, 8), torch.tensor([0, 5, 9]), torch.rand(4, 1, 8, 8)
    run = _methods(background)[method]
    before = model_state(model)
    eager = run(model, x, target, chunk_size=6, **options)
    compiled = run(model, x, target, chunk_size=6, compile=compile, **options)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    assert _graphs() == 1 and not counters["graph_break"]
    assert_same_state(before, model_state(model))


@pytest.mark.parametrize(
    "method", ["integrated_gradients", "smoothgrad", "gradient_shap", "saliency", "input_x_gradient"]
)
def test_each_method_compiles_its_step_as_one_graph(method: str, fresh_dynamo) -> None:  # type: ignore[no-untyped-def]
    _check_compiled(method, "aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["smoothgrad", "gradient_shap", "saliency"])
def test_each_method_with_inductor(method: str, fresh_dynamo) -> None:  # type: ignore[no-untyped-def]
    _check_compiled(method, True)


@pytest.mark.parametrize(("backend", "device"), backend_params(include_reference=True))
@pytest.mark.parametrize("method", ["integrated_gradients", "smoothgrad"])
def test_fused_accumulation_of_every_backend_in_the_graph(
    method: str, backend: str, device: str, fresh_dynamo
) -> None:  # type: ignore[no-untyped-def]
    if device != "cpu":
        pytest.skip("the CPU form of this check; the GPU check runs the equivalence suite")
    _check_compiled(method, "aot_eager", backend=backend)


def test_compiled_step_with_bf16_and_forward_kwargs(fresh_dynamo) -> None:  # type: ignore[no-untyped-def]
    """Autocast inside the graph, and per-example keyword arguments cut to each chunk's rows."""

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = mlp(seed=2, features=6, classes=3)

        def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
            return self.body(x) * scale.view(-1, 1)

    model = Scaled().eval()
    x, scale = torch.randn(5, 6), torch.rand(5) + 0.5
    options = {"target": 2, "n_steps": 6, "chunk_size": 10, "forward_kwargs": {"scale": scale}}
    eager = fx.integrated_gradients(model, x, dtype=torch.bfloat16, **options)
    compiled = fx.integrated_gradients(model, x, dtype=torch.bfloat16, compile="aot_eager", **options)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    plain = fx.integrated_gradients(model, x, **options)
    assert not torch.equal(compiled, plain)  # bf16 did run: not the float32 result
    torch.testing.assert_close(compiled, plain, rtol=0.1, atol=0.05)


def test_compile_true_on_a_compiled_model_compiles_its_module_once(fresh_dynamo) -> None:  # type: ignore[no-untyped-def]
    model = _cnn()
    x = torch.rand(2, 1, 8, 8)
    eager = fx.smoothgrad(model, x, target=3, n_samples=4, seed=1, chunk_size=4)
    compiled_model = torch.compile(model, backend="aot_eager")
    got = fx.smoothgrad(compiled_model, x, target=3, n_samples=4, seed=1, chunk_size=4, compile="aot_eager")
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-6)
    # the step (holding the module's forward, not a nested compiled wrapper), and the compiled
    # model's own graph for the one-row target check that runs before it
    assert _graphs() == 2 and not counters["graph_break"]


class _Breaks(nn.Module):
    """A model Dynamo cannot trace as one graph: it reads a tensor's value into Python."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(x.sum()) > 1e9:  # a data-dependent branch: a graph break
            return -self.linear(x)
        return self.linear(x)


def test_a_graph_break_in_the_step_is_an_error_naming_compile(fresh_dynamo) -> None:  # type: ignore[no-untyped-def]
    model = _Breaks().train()
    before = model_state(model)
    with pytest.raises(RuntimeError, match=r"compile=True: the step .* does not compile as one graph"):
        fx.integrated_gradients(model, torch.randn(2, 4), target=1, n_steps=4, compile="aot_eager")
    assert_same_state(before, model_state(model))
    # without compile=True the same model runs; compiled as a model (graph breaks allowed) too
    expected = fx.integrated_gradients(model, torch.ones(2, 4), target=1, n_steps=4)
    got = fx.integrated_gradients(
        torch.compile(model, backend="aot_eager"), torch.ones(2, 4), target=1, n_steps=4
    )
    torch.testing.assert_close(got, expected)


class _Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = mlp(seed=1, features=4, classes=3)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda m, x: fx.integrated_gradients(m, x, target=0, compile="yes"),
            ValueError,
            "compile must be a bool or the name",
        ),
        (lambda m, x: fx.smoothgrad(m, x, target=0, compile=1), TypeError, "compile must be a bool"),
        (lambda m, x: fx.saliency(m, x, target=0, compile=None), TypeError, "compile must be a bool"),
        (
            lambda m, x: fx.gradient_shap(m, x, target=0, baselines=x, compile=True, layer="inner.0"),
            ValueError,
            "compile=True compiles the step of attributions at the input",
        ),
        (
            lambda m, x: fx.integrated_gradients(m, x, target=0, method="adaptive", compile=True),
            ValueError,
            "compile applies to the fixed rules",
        ),
        (
            lambda m, x: fx.integrated_gradients(m, x, target=0, method="exact", dtype=torch.bfloat16),
            ValueError,
            "dtype applies to the fixed rules",
        ),
        (
            lambda m, x: fx.integrated_gradients(m, x, target=0, dtype=torch.int8),
            ValueError,
            "dtype must be None",
        ),
        (lambda m, x: fx.smoothgrad(m, x, target=0, dtype="bfloat16"), TypeError, "dtype must be None"),
        (lambda m, x: fx.saliency(m, x, target=0, dtype=torch.float64), ValueError, "dtype must be None"),
        (
            lambda m, x: fx.occlusion(m, x, target=0, sliding_window_shapes=(2,), dtype=torch.int8),
            ValueError,
            "dtype must be None",
        ),
        (lambda m, x: fx.lrp.lrp(m, x, target=0, dtype=torch.int8), ValueError, "dtype must be None"),
        (
            lambda m, x: fx.lrp.lrp(m, x, target=0, dtype=torch.bfloat16, engine="gradient"),
            ValueError,
            "dtype applies to the traced engine",
        ),
    ],
)
def test_bad_compile_and_dtype_refused_before_any_model_call(call, error: type, message: str) -> None:  # type: ignore[no-untyped-def]
    model = _Counting().train()
    before = model_state(model)
    with pytest.raises(error, match=message):
        call(model, torch.randn(3, 4))
    assert model.calls == 0
    assert_same_state(before, model_state(model))


def _every_op(implementation: dict, tensors: dict) -> tuple:
    """Every fused op once, through the implementations ``ops._unchecked`` resolves, with
    arguments in the form the public ops hand on; in-place ops on clones of the accumulators."""
    t = tensors
    total, total_sq, acc = t["total"].clone(), t["total"].clone(), t["total"].clone()
    implementation["moment_accumulate"](t["values"], total, total_sq, t["values"])
    implementation["weighted_path_accumulate"](t["values"], t["weights"], acc)
    return (
        implementation["gaussian_perturb"](t["x"], t["sigma"], 7, 2, 3, 1),
        implementation["path_points"](t["x"], t["b"], t["alphas"]),
        implementation["pgd_step"](t["x"], t["b"], t["x"] * 0.5, t["sigma"], t["sigma"], -1.0, 1.0, "linf"),
        implementation["lrp_divide"](t["x"], t["b"], 1e-6),
        implementation["lrp_product"](t["x"], t["b"], t["x"], 2.0, 1.0),
        implementation["lrp_product"](t["x"], t["b"], None, 1.0, 0.0),
        implementation["masked_blend"](t["x"], t["b"], t["mask"], t["keep"], copy_major=True),
        implementation["occlude"](t["x"], t["b"], [1, 2], [1, 2], 1, 2, copy_major=False),
        implementation["rescale_backward"](t["x"], t["b"], t["x"] * 0.5, 1e-6, 0.1),
        implementation["relu_rescale"](t["x"], t["b"], 1e-6, 0.1),
        total,
        total_sq,
        acc,
    )


@pytest.mark.parametrize(("backend", "device"), backend_params(include_reference=True))
def test_every_fused_op_traces_on_every_backend(backend: str, device: str, fresh_dynamo) -> None:  # type: ignore[no-untyped-def]
    """Each op in a fullgraph-compiled function equals its eager call: the native ops through
    their fake (shape) kernels, Triton's through ``fastxai._triton``'s operators, the
    reference as plain PyTorch. In-place ops mutate their accumulators inside the graph."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, generator=generator).to(device)
    tensors = {
        "x": x,
        "b": torch.randn(2, 3, 4, generator=generator).to(device),
        "sigma": torch.tensor([0.5, 1.0], device=device),
        "alphas": torch.tensor([0.0, 0.25, 1.0], device=device),
        "values": torch.randn(3, 2, 3, 4, generator=generator).to(device),
        "weights": torch.rand(3, 2, generator=generator).to(device),
        "total": torch.randn(2, 3, 4, generator=generator).to(device),
        "mask": (torch.arange(12, device=device) % 3).view(3, 4),
        "keep": torch.rand(2, 5, 3, generator=generator).to(device),
    }
    names = [name for name in ops.__all__ if name != "occlusion_window_count"]
    implementation = {name: ops._unchecked(name, backend, x) for name in names}
    eager = _every_op(implementation, tensors)
    compiled = torch.compile(_every_op, backend="aot_eager", fullgraph=True)(implementation, tensors)
    for got, expected in zip(compiled, eager, strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert _graphs() == 1


def test_native_ops_have_fake_kernels() -> None:
    """Every op ``fastxai.ops`` dispatches to the native backend has a fake implementation: its
    output under FakeTensorMode has the eager output's shape and dtype."""
    from fastxai import _native

    if not _native.available()[0]:
        pytest.skip("the native extension is not built")
    from torch._subclasses.fake_tensor import FakeTensorMode

    names = sorted(name for name in ops.__all__ if name != "occlusion_window_count")
    # relu_rescale's forward is a composite kernel (a relu), which serves fake tensors itself.
    assert sorted(_native.FAKES) == [name for name in names if name != "relu_rescale"]
    assert all(hasattr(torch.ops.fastxai, name) for name in names)
    x = torch.randn(2, 3)
    with FakeTensorMode() as mode:
        fake = mode.from_tensor(x)
        relu = torch.ops.fastxai.relu_rescale(fake.requires_grad_(), mode.from_tensor(x), 1e-6, 0.0)
        assert relu.shape == x.shape and relu.dtype == x.dtype and relu.requires_grad
        out = torch.ops.fastxai.path_points(fake, fake, mode.from_tensor(torch.ones(5)))
        assert out.shape == (5, 2, 3) and out.dtype == x.dtype
        blend = torch.ops.fastxai.masked_blend(
            fake,
            fake,
            mode.from_tensor(torch.zeros(3, dtype=torch.long)),
            mode.from_tensor(torch.ones(2, 4, 1)),
            True,
        )
        assert blend.shape == (4, 2, 3)


def test_compile_option_names_a_backend_or_a_bool() -> None:
    assert _compile.check_compile(False) is None
    assert _compile.check_compile(True) == "inductor"
    assert _compile.check_compile("aot_eager") == "aot_eager"
    with pytest.raises(ValueError, match="'inductr'"):
        _compile.check_compile("inductr")


def test_triton_operators_have_the_native_schemas() -> None:
    """``fastxai._triton``'s operators (what a compiled step holds for the Triton backend) take
    exactly the native operators' arguments, so one set of fakes serves both."""
    pytest.importorskip("triton")
    from fastxai import _native, _triton

    if not _native.available()[0]:
        pytest.skip("the native extension is not built")
    for name in _native.FAKES:
        native = str(getattr(torch.ops.fastxai, name).default._schema)
        assert native.replace("fastxai::", "fastxai_triton::") == str(
            getattr(torch.ops.fastxai_triton, name).default._schema
        )
    assert sorted(_triton.SCHEMAS) == sorted(_native.FAKES)
