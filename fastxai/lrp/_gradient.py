"""The gradient engine of ``fastxai.lrp``: LRP on a model's own forward pass, no tracing.

The model runs as it is (Hugging Face ``transformers`` classes included: attention-interface
dispatch, mask utilities, decorators and hooks all run unchanged) inside ``RuleMode``
(``fastxai.lrp._gradient_ops``), which gives every op the backward of its LRP rule. The
relevance at the start layer ``h`` is then ``R_h = h * d f_target / d h`` under those
backwards; the relevance of the output is ``f_target`` itself (the gradient there is 1).

Where the rule of a step is not an op's: module hooks, removed after the call.

- the start: a forward hook makes the start layer's output a leaf (the input embedding for
  token ids, ``layer=`` for any other layer); for a float input without ``layer=``, the input;
- ``transformers.activations`` modules (``NewGELUActivation`` is ``tanh`` of a cubic, written
  as plain ops) and RMSNorm modules (class name ending in ``RMSNorm``: ``x * rsqrt(mean(x^2))
  * w``): run on a detached input, then given the identity rule, ``R_in = R_out``;
- ``nn.MultiheadAttention``, ``nn.TransformerEncoder(Layer)``: run, then computed again as plain
  ops (``fastxai.lrp._attention``), whose result carries the relevance; attention weights
  the module returns carry none;
- ``nn.LSTM``, ``nn.GRU``, ``nn.RNN``: run, then unrolled in plain ops with their gates as
  constants (``fastxai.lrp._unrolled``), checked against the module's output; the output
  sequence and the final states carry relevance;
- Linear/Conv modules: their Epsilon rule's epsilon, for the op they run.

Where both engines run a model (plain PyTorch models of the traced engine's ops, torchvision's
ViT), they give the same relevance to rounding: the rules are the same, only their form differs
(tests/lrp/test_lrp_gradient_engine.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from fastxai import _backends, _layer, _model, _scheduling
from fastxai._layer_capture import resolve_layer
from fastxai._model import Model
from fastxai.lrp import _attention, _unrolled
from fastxai.lrp._errors import UnsupportedLayerError
from fastxai.lrp._gradient_ops import RuleMode, identity_rule, variables
from fastxai.lrp._linear import LINEAR_TYPES
from fastxai.lrp.composites import Composite
from fastxai.lrp.rules import Epsilon, Pass

ENGINES = ("auto", "fx", "gradient")
_DEFAULT_EPSILON = 1e-6  # the traced engine's default for a Linear/Conv the composite leaves out


def is_transformers_model(model: object) -> bool:
    """Whether ``model`` is a Hugging Face ``PreTrainedModel`` (without importing transformers)."""
    return any(
        cls.__name__ == "PreTrainedModel" and cls.__module__.startswith("transformers.")
        for cls in type(model).__mro__
    )


def choose_engine(
    engine: object, model: object, inputs: object, forward_kwargs: object, layer: object
) -> str:
    """``"gradient"`` or ``"fx"`` for ``engine`` (``"auto"``: gradient for a transformers model,
    token-id inputs, ``forward_kwargs`` or ``layer=``; the traced engine otherwise)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    needs = [
        name
        for name, given in (
            ("forward_kwargs", forward_kwargs is not None),
            ("layer", layer is not None),
            ("integer inputs (token ids)", isinstance(inputs, torch.Tensor) and _layer.is_integer(inputs)),
        )
        if given
    ]
    if engine == "fx" and needs:
        raise ValueError(
            f"engine='fx' (the traced engine) does not take {', '.join(needs)}: use engine='gradient'"
        )
    if engine == "auto":
        return "gradient" if needs or is_transformers_model(model) else "fx"
    return str(engine)


def check_fx_options(**given: bool) -> None:
    """Refuse, naming it, an option of the traced engine given to the gradient engine."""
    for name, value in given.items():
        if value:
            raise ValueError(
                f"{name} is an option of the traced engine (engine='fx'); the gradient engine "
                "(transformers models, token ids, forward_kwargs, layer=) does not take it"
            )


def linear_epsilons(model: Model, composite: Composite) -> dict[nn.Module, float]:
    """The epsilon of every Linear/Conv module; the engine has the epsilon rule only (plus the
    identity rule the element-wise steps get anyway), so any other rule is refused here."""
    if composite.first_map:
        raise ValueError(
            "composite has first-layer rules (e.g. Flat, ZBox), which the gradient engine cannot apply: "
            "use composite='epsilon' (or a mapping to rules.Epsilon), or engine='fx' for a traceable model"
        )
    if not isinstance(model, nn.Module):
        return {}
    epsilons: dict[nn.Module, float] = {}
    for name, module in model.named_modules():
        rule = composite.rule(name, module, False)
        linear = isinstance(module, LINEAR_TYPES)
        if isinstance(rule, Epsilon) and (linear or name in composite.name_map):
            if not linear:
                raise ValueError(f"composite gives {name!r} ({type(module).__name__}) an Epsilon rule; "
                                 "the gradient engine applies rules to Linear/Conv modules only")  # fmt: skip
            epsilons[module] = rule.epsilon
        elif linear and rule is None:
            epsilons[module] = _DEFAULT_EPSILON
        elif rule is not None and not (isinstance(rule, Pass) and not linear):
            raise ValueError(
                f"composite gives {name!r} ({type(module).__name__}) the rule {rule!r}; the gradient engine "
                "(used for transformers models, token ids, forward_kwargs and layer=) has the epsilon rule "
                "for Linear/Conv layers only: use composite='epsilon', or engine='fx' for a traceable model"
            )
    return epsilons


def _identity_module(module: nn.Module) -> bool:
    cls = type(module)
    return cls.__module__ == "transformers.activations" or cls.__name__.endswith("RMSNorm")


def _detached(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (tuple, list)):
        return type(value)(_detached(item) for item in value)
    if isinstance(value, dict):
        return {key: _detached(item) for key, item in value.items()}
    return value


@contextmanager
def _hooked(model: Model, mode: RuleMode, epsilons: dict[nn.Module, float], start: nn.Module | None,
            leaves: list[torch.Tensor]) -> Iterator[None]:  # fmt: skip
    """The module hooks of the module docstring, removed on exit (also on error)."""
    handles: list[Any] = []
    names = {module: name for name, module in model.named_modules()} if isinstance(model, nn.Module) else {}

    def push(eps: float, module: nn.Module, args: Any) -> None:
        mode.epsilons.append(eps)

    def pop(module: nn.Module, args: Any, output: Any) -> None:
        mode.epsilons.pop()

    def start_output(module: nn.Module, args: Any, output: Any) -> torch.Tensor:
        if not isinstance(output, torch.Tensor) or not output.is_floating_point():
            raise ValueError(
                f"layer ({names.get(module) or type(module).__name__}) must return one floating-point "
                f"tensor to start the relevance from, got {type(output).__name__}"
            )
        leaf = output.detach().requires_grad_(True)
        leaves.append(leaf)
        return leaf

    stashed: dict[nn.Module, list[Any]] = {}

    def detach_inputs(module: nn.Module, args: Any, kwargs: Any) -> Any:
        carries = bool(variables(args) or variables(kwargs))
        if carries and isinstance(module, nn.RNNBase):
            _unrolled.check_input(module, args, kwargs, names.get(module))
        stashed.setdefault(module, []).append((args, kwargs) if carries else None)
        return (_detached(args), _detached(kwargs)) if carries else None

    def identity(module: nn.Module, args: Any, kwargs: Any, output: Any) -> Any:
        saved = stashed[module].pop()
        if saved is None:
            return None
        inputs = saved[0][0] if saved[0] else None
        if not isinstance(inputs, torch.Tensor) or not isinstance(output, torch.Tensor):
            raise UnsupportedLayerError(
                f"{names.get(module)!r} ({type(module).__name__}) must map one tensor argument to one tensor "
                "for the identity rule"
            )
        return identity_rule(inputs, output, mode.backend)

    def decomposed(
        function: Callable[..., Any], module: nn.Module, args: Any, kwargs: Any, output: Any
    ) -> Any:
        saved = stashed[module].pop()
        if saved is None:
            return None
        if isinstance(module, nn.RNNBase):  # the final states carry relevance as the output does
            result = function(module, *saved[0], **saved[1], name=names.get(module),
                              stabilizer=mode.stabilizer, backend=mode.backend)  # fmt: skip
            _unrolled.check_close(module, result, output, names.get(module))
            return result
        result = function(module, *saved[0], **saved[1], name=names.get(module))
        return (result[0], *_detached(result[1:])) if isinstance(result, tuple) else result

    try:
        for module in model.modules() if isinstance(model, nn.Module) else ():
            if module in epsilons:
                handles.append(module.register_forward_pre_hook(functools.partial(push, epsilons[module])))
                handles.append(module.register_forward_hook(pop))
            function = _attention.decomposition(module) or _unrolled.decomposition(module)
            if function is not None or _identity_module(module):
                handles.append(module.register_forward_pre_hook(detach_inputs, with_kwargs=True))
                post = identity if function is None else functools.partial(decomposed, function)
                handles.append(module.register_forward_hook(post, with_kwargs=True))
        if start is not None:
            handles.append(start.register_forward_hook(start_output))
        yield
    finally:
        for handle in handles:
            handle.remove()


def gradient_lrp(
    model: Model,
    inputs: Any,
    target: object,
    composite: Composite,
    forward_kwargs: object,
    layer: object,
    chunk_size: int | None,
    backend: str | None,
    eval_mode: bool,
) -> torch.Tensor:
    """``fastxai.lrp`` by the gradient engine (arguments as there, already checked but these):
    [B, T] per token for token ids without ``layer=``, [B, *A] at ``layer``, [B, *F] at a float input."""
    kwargs = _layer.check_forward_kwargs(forward_kwargs)
    start = layer
    per_token = layer is None and isinstance(inputs, torch.Tensor) and _layer.is_integer(inputs)
    if per_token:
        start = _layer.input_embedding(model)
        if start is None:
            raise ValueError(
                "integer inputs (token ids) start the relevance at the input embedding, and the model has "
                "none (no get_input_embeddings(), no nn.Embedding): give layer= (the module to start at)"
            )
    inputs = _model.check_inputs(inputs, allow_integer=start is not None, layer_option=True)
    module = None if start is None else resolve_layer(model, start)
    # the rules' fused ops run in the inputs' dtype (the embedding's for token ids): a backend that
    # cannot, said before the model runs rather than at the first op
    weight = getattr(module, "weight", None)
    anchor = inputs if inputs.is_floating_point() or not isinstance(weight, torch.Tensor) else weight
    _backends.resolve(backend, anchor.device, anchor.dtype)
    composite.check_names(model)
    epsilons = linear_epsilons(model, composite)
    chunk = _scheduling.auto_chunk_size(_scheduling.check_chunk_size(chunk_size), inputs)
    target_t = _model.check_target(target, inputs.shape[0], inputs.device)
    forward = _layer.RowForward(model, (inputs,), (), kwargs)
    mode = RuleMode(composite.stabilizer, backend)
    leaves: list[torch.Tensor] = []
    results = []
    with (
        _model.preserved_state(model, eval_mode=eval_mode),
        _hooked(model, mode, epsilons, module, leaves),
        torch.enable_grad(),
    ):
        for first in range(0, inputs.shape[0], chunk):
            rows = slice(first, min(first + chunk, inputs.shape[0]))
            run, head = forward.bound(rows, 1)
            leaves.clear()
            if module is None:
                head = head.detach().requires_grad_(True)
                leaves.append(head)
            results.append(_relevance(run, head, mode, leaves, target_t, rows, module))
    relevance = torch.cat(results) if len(results) > 1 else results[0]
    if per_token:
        return relevance.sum(-1)
    return relevance if module is not None else relevance.to(inputs.dtype)


def _relevance(
    run: Callable[[torch.Tensor], Any], head: torch.Tensor, mode: RuleMode, leaves: list[torch.Tensor],
    target: torch.Tensor | None, rows: slice, module: nn.Module | None,
) -> torch.Tensor:  # fmt: skip
    def forward(x: torch.Tensor) -> Any:
        mode.linear_outputs.clear()
        try:
            with mode:
                return run(x)
        except Exception:
            if mode.failure is not None:  # raised, maybe turned into another error (see RuleMode)
                raise mode.failure from None
            raise
        finally:
            mode.linear_outputs.clear()  # the backward hooks keep what they read

    output = _model.outputs(forward, head)
    if len(leaves) != 1:
        raise UnsupportedLayerError(
            f"the start layer ({type(module).__name__}) ran {len(leaves)} times in one forward pass; "
            "give layer= a module that runs once"
        )
    index = _model.flat_target(None if target is None else target[rows], output.shape[1:])
    if index is None:
        index = output.argmax(dim=1)
    scores = output.reshape(output.shape[0], -1).gather(1, index.view(-1, 1))
    if not scores.requires_grad:
        raise UnsupportedLayerError(
            "the model's output carries no relevance from the start layer: it is computed from constants "
            "of the pass only (e.g. norms or standard deviations of activations, which LRP takes as "
            "constants, as LayerNorm's 1/std), or under torch.no_grad()"
        )
    (grad,) = torch.autograd.grad(scores.sum(), leaves, allow_unused=True, materialize_grads=True)
    dtype = torch.float64 if leaves[0].dtype == torch.float64 else torch.float32
    return leaves[0].detach().to(dtype) * grad.to(dtype)


__all__ = [
    "ENGINES",
    "check_fx_options",
    "choose_engine",
    "gradient_lrp",
    "is_transformers_model",
    "linear_epsilons",
]
