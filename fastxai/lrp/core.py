"""``lrp``: one forward pass that keeps the node values the relevance pass reads (and drops the
others once no later node needs them, ``fastxai.lrp._plans``), then the relevance pass in reverse
topological order through the handlers of ``fastxai.lrp._nodes`` and ``fastxai.lrp._linear``.
The traced graph and the rule assignment (``Plan``) are cached per model and composite.

Cost (measured on a CPU by ``benchmarks/lrp_ratio.py``): the forward pass, then per z+
(or gamma, alpha-beta) layer one modified forward convolution and one transposed convolution,
against the floor's forward and backward: three convolution passes against two. On the CPU the
pass runs channels-last (``_pass_layout``), where oneDNN convolutions and max pooling are
faster than in the contiguous layout a model's batch usually comes in."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import fx

from fastxai import _backends, _compile, _model, _output, _precision, _scheduling
from fastxai._model import Model
from fastxai.lrp import _gradient, _graph, _nodes, _plans
from fastxai.lrp._linear import BATCHNORM_TYPES, LINEAR_TYPES
from fastxai.lrp.composites import Composite, resolve_composite

MAXPOOL_MODES = ("winner", "average")
FUNCTIONAL_MODES = ("lrp", "gradient")


def lrp(
    model: Model,
    inputs: torch.Tensor,
    target: object = None,
    *,
    composite: object = None,
    maxpool: str = "winner",
    merge_batchnorm: bool = True,
    return_layer_relevances: bool = False,
    chunk_size: int | None = None,
    backend: str | None = None,
    eval_mode: bool = True,
    functional: str = "lrp",
    forward_kwargs: dict[str, Any] | None = None,
    layer: object = None,
    engine: str = "auto",
    dtype: torch.dtype | None = None,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Layer-wise Relevance Propagation (Bach et al. 2015; Montavon et al. 2019).

    The relevance of the target logit, ``R = onehot(target) * f(x)``, is redistributed layer by
    layer onto the inputs; each Linear/Conv layer uses the rule the ``composite`` gives it (see
    ``fastxai.lrp.rules``), e.g. ``R_i = sum_j a_i w_ij / (z_j + eps sign0(z_j)) R_j`` for
    epsilon. BatchNorm after a Linear/Conv is merged into it for the pass (the model is not
    changed); residual sums split relevance in proportion to the contributions; attention
    (softmax, matmul, element-wise products, LayerNorm) follows AttnLRP (Achtibat et al. 2024);
    see ``fastxai.lrp._nodes`` for every parameter-free step. With no biases and stabilisers
    -> 0, ``R.sum()`` equals the target logit (conservation).

    composite: a registered name (``fastxai.lrp.COMPOSITES``), a ``Composite``, or a mapping
    ``{module type or dotted module name: rule}``. maxpool: ``"winner"`` (all relevance to the
    maximum) or ``"average"`` (as average pooling). ``merge_batchnorm=False`` gives every BatchNorm
    its own epsilon step instead (as Captum does). ``eval_mode=False`` runs every module in the
    mode it is in (a Dropout in training mode drops, and relevance passes it unchanged, as in
    Captum; a BatchNorm in training mode is refused: the pass reads its running statistics).
    ``functional="gradient"`` sends relevance back through parameter-free torch functions and
    tensor methods (``x + y``, ``torch.cat``, ``F.relu``, ...) as a gradient, ``R_in = J^T R``,
    instead of their LRP rules (Captum's LRP hooks modules only); steps inside a module the
    composite names keep their rules. The model is traced with torch.fx
    (``nn.MultiheadAttention`` and ``nn.TransformerEncoder(Layer)`` through plain-op stand-ins,
    ``fastxai.lrp._attention``); a module or function without a rule raises ``UnsupportedLayerError``.

    inputs: [B, *F]; target: int, [B] tensor or None (the predicted class; then the output may
    have other rows than the inputs, e.g. a model that pools over the batch, when the whole
    batch is one chunk). Returns ``R``
    [B, *F] in the inputs' dtype (accumulated in float32), and with
    ``return_layer_relevances`` also ``{node name: relevance of that node's output}`` (float32;
    module nodes are named by their dotted module name) for ``fastxai.lrp.conservation``.

    Two engines (``engine=``). ``"fx"``, the traced engine above. ``"gradient"``: the model's own
    forward runs with each op's backward replaced by its rule (AttnLRP as a modified gradient,
    ``fastxai.lrp._gradient``), ``R_h = h * grad_h``; no tracing, so it runs stock Hugging Face
    ``transformers`` classes (BERT, RoBERTa, GPT-2, Llama-style decoders, ViT) and any control
    flow; an op without a rule raises ``UnsupportedLayerError`` naming the model's line. It has
    the epsilon rule for Linear/Conv (composite default ``"epsilon"``; other rules are refused),
    identity for element-wise activations and RMSNorm, and the same AttnLRP rules; on models
    both run, the two agree (tests/lrp/test_lrp_gradient_engine.py). ``"auto"`` (default) takes
    the gradient engine for a transformers ``PreTrainedModel``, token-id inputs, ``forward_kwargs``
    or ``layer``, else the traced one. Gradient engine only: ``forward_kwargs`` (extra model
    arguments, e.g. ``{"attention_mask": mask}``; per-example tensors follow the chunks) and
    ``layer`` (a module or dotted name: relevance of its output, [B, *A]); token ids [B, T] start
    at the input embedding (``model.get_input_embeddings()``) and return per-token relevance
    [B, T] (summed over the hidden dim). ``composite=None``: ``"epsilon_plus_flat"`` for the
    traced engine, ``"epsilon"`` for the gradient engine. Outputs as every method reads them
    (``.logits`` of a ``ModelOutput``), targets as there: a tuple ``(t, v)`` picks
    ``logits[b, t, v]`` of a causal LM's [B, T, V].

    ``dtype=torch.bfloat16`` (or ``torch.float16``; traced engine): the forward pass runs in that
    precision (inputs rounded to it, the plan's layers under autocast) and the relevance pass in
    float32 as always, from the half-precision activations (``fastxai._precision``). A compiled
    model (``torch.compile(model)``) is traced as its original module (``fastxai._compile``).

    >>> R = fastxai.lrp(model, x, target=y, composite="epsilon_plus_flat")
    >>> R, layers = fastxai.lrp(model, x, target=y, return_layer_relevances=True)
    >>> R = fastxai.lrp(bert, ids, target=y, forward_kwargs={"attention_mask": mask})  # [B, T]
    """
    model = _compile.original(_model.check_model(model))
    if _gradient.choose_engine(engine, model, inputs, forward_kwargs, layer) == "gradient":
        if dtype is not None:
            raise ValueError(
                "dtype applies to the traced engine (engine='fx'); the gradient engine (chosen for "
                "transformers models, token ids, forward_kwargs or layer) runs in the model's own dtype"
            )
        _gradient.check_fx_options(
            maxpool=maxpool != "winner",
            merge_batchnorm=merge_batchnorm is not True,
            return_layer_relevances=return_layer_relevances is not False,
            functional=functional != "lrp",
        )
        if not isinstance(eval_mode, bool):
            raise TypeError(f"eval_mode must be a bool, got {type(eval_mode).__name__}")
        if backend is not None:
            _backends.check_choice(backend)
        resolved = resolve_composite("epsilon" if composite is None else composite)
        return _gradient.gradient_lrp(
            model, inputs, target, resolved, forward_kwargs, layer, chunk_size, backend, eval_mode
        )
    inputs = _model.check_inputs(inputs)
    if maxpool not in MAXPOOL_MODES:
        raise ValueError(f"maxpool must be one of {MAXPOOL_MODES}, got {maxpool!r}")
    if not isinstance(merge_batchnorm, bool):
        raise TypeError(f"merge_batchnorm must be a bool, got {type(merge_batchnorm).__name__}")
    if not isinstance(return_layer_relevances, bool):
        raise TypeError(
            f"return_layer_relevances must be a bool, got {type(return_layer_relevances).__name__}"
        )
    if not isinstance(eval_mode, bool):
        raise TypeError(f"eval_mode must be a bool, got {type(eval_mode).__name__}")
    if functional not in FUNCTIONAL_MODES:
        raise ValueError(f"functional must be one of {FUNCTIONAL_MODES}, got {functional!r}")
    if backend is not None:
        _backends.check_choice(backend)
    model_dtype = _precision.check_dtype(dtype, inputs.device)
    if not eval_mode:
        _check_batchnorm_mode(model)
    resolved = resolve_composite("epsilon_plus_flat" if composite is None else composite)
    resolved.check_names(model)
    chunk = _scheduling.auto_chunk_size(_scheduling.check_chunk_size(chunk_size), inputs)
    target_t = _model.check_target(target, inputs.shape[0], inputs.device)
    dtype = torch.float64 if inputs.dtype == torch.float64 else torch.float32
    backend = _op_backend(backend, inputs.device, dtype)
    x = inputs.detach()
    results: list[torch.Tensor] = []
    layers: dict[str, list[torch.Tensor]] = {}
    with _model.preserved_state(model, eval_mode=eval_mode), torch.no_grad():
        any_rows = target_t is None and chunk >= x.shape[0]
        nonnegative_input = bool(x.min() >= 0)

        def setup(retrace: bool) -> tuple[_graph.Plan, set[fx.Node], _Gradient | None, torch.Tensor]:
            plan = _plans.cached_plan(
                model, resolved, maxpool=maxpool, merge_batchnorm=merge_batchnorm, example=x[:2],
                retrace=retrace,
            )  # fmt: skip
            gradient = _gradient_plan(plan, resolved) if functional == "gradient" else None
            layout = x.to(model_dtype or x.dtype).contiguous(memory_format=_pass_layout(plan, x))
            return plan, _graph.nonnegative_nodes(plan, nonnegative_input), gradient, layout

        plan, nonnegative, gradient, x_pass = setup(retrace=False)
        # a cached plan is checked once per call against the model's own output (see _Stale)
        first_check = _same_output(model, any_rows) if _plan_may_be_stale(model) else None
        check = first_check
        for start in range(0, x.shape[0], chunk):
            stop = min(start + chunk, x.shape[0])
            chunk_target = None if target_t is None else target_t[start:stop]
            try:
                relevance, chunk_layers = _propagate(
                    plan, x_pass[start:stop], chunk_target, resolved.stabilizer, dtype, nonnegative, backend,
                    return_layer_relevances, gradient, any_rows,
                    None if check is None else functools.partial(check, x[start:stop]), model_dtype,
                )  # fmt: skip
            except _Stale:
                assert first_check is not None
                plan, nonnegative, gradient, x_pass = setup(retrace=True)
                final_check = functools.partial(first_check, x[start:stop], final=True)
                relevance, chunk_layers = _propagate(
                    plan, x_pass[start:stop], chunk_target, resolved.stabilizer, dtype, nonnegative, backend,
                    return_layer_relevances, gradient, any_rows, final_check, model_dtype,
                )  # fmt: skip
            check = None
            results.append(relevance)
            for name, value in chunk_layers.items():
                layers.setdefault(name, []).append(value)
    relevance = (results[0] if len(results) == 1 else torch.cat(results)).to(inputs.dtype).contiguous()
    if not return_layer_relevances:
        return relevance
    return relevance, {name: torch.cat(parts) for name, parts in layers.items()}


class _Stale(Exception):
    """The plan's forward output is not the model's: the cached trace followed another Python
    branch (``forward`` reads an attribute, a global, a flag that changed since the trace)."""


def _plan_may_be_stale(model: Model) -> bool:
    """Whether a cached plan serves this call and can be checked: an ``nn.Module`` (plain callables
    are traced at every call) with no module in training mode (a Dropout would make the model's
    own output random; such modules run only with ``eval_mode=False``)."""
    return isinstance(model, torch.nn.Module) and not any(module.training for module in model.modules())


def _same_output(model: Model, any_rows: bool) -> Callable[..., None]:
    """The check ``_propagate`` runs on the plan's output for the first chunk ``x`` (in the
    caller's layout, made contiguous: the pass may run channels-last, the model may not): the
    model's own output on the chunk's first row must equal the plan's up to rounding (BatchNorm
    merged into the convolutions, another summation order): 1e-3 of the output's largest
    magnitude, 3e-2 in half precision. All rows are compared when the output's rows are not the
    inputs' (pooled over the batch, or a forward closing over per-example tensors). One row costs
    a forward of one sample, not of the batch. Raises ``_Stale``, or with ``final`` (after a
    fresh trace) UnsupportedLayerError."""

    def check(x: torch.Tensor, output: torch.Tensor, *, final: bool = False) -> None:
        rows = x.shape[0] if any_rows or output.shape[0] != x.shape[0] else 1
        expected = _output.output_tensor(model(x[:rows].contiguous()))  # the layout models take
        if expected.shape[:1] != (rows,) and rows < x.shape[0]:
            # rows that do not follow the inputs' (a forward closing over per-example tensors)
            rows = x.shape[0]
            expected = _output.output_tensor(model(x.contiguous()))
        got = output[:rows]
        if expected.shape == got.shape:
            expected, got = expected.double(), got.double()
            low = x.dtype in (torch.float16, torch.bfloat16) or expected.dtype in (
                torch.float16,
                torch.bfloat16,
            )
            scale = float(expected.abs().max()) if expected.numel() else 0.0
            difference = (got - expected).abs().nan_to_num(nan=float("inf")).max() if got.numel() else 0.0
            if float(difference) <= (3e-2 if low else 1e-3) * scale + 1e-6 or torch.equal(got, expected):
                return
        if not final:
            raise _Stale
        raise _graph.UnsupportedLayerError(
            "the traced graph does not reproduce the model's output (shape "
            f"{tuple(expected.shape)} vs {tuple(got.shape)} for the first row, or values): forward hooks "
            "that change outputs, randomness, or Python control flow the trace cannot follow"
        )

    return check


def _check_batchnorm_mode(model: Model) -> None:
    if not isinstance(model, torch.nn.Module):
        return
    for name, module in model.named_modules():
        if isinstance(module, BATCHNORM_TYPES) and module.training:
            raise ValueError(
                f"BatchNorm {name!r} is in training mode: it would normalise with (and update) batch "
                "statistics, while the relevance pass reads its running statistics; call model.eval() "
                "(or leave lrp's eval_mode=True)"
            )


@dataclasses.dataclass
class _Gradient:
    """What ``functional="gradient"`` changes. ``functional``: torch functions and tensor methods
    outside the modules the composite names (Captum hooks modules only); ``nodes``: those of them
    relevance goes through as a gradient (max pooling keeps its winner-take-all handler, which is
    its gradient); ``layer_inputs``: inputs of steps with an LRP rule. Captum multiplies the
    gradient summed at a layer's input by that input, so a share a functional step sends to a
    layer input is multiplied by its value there (a residual skip from a layer's input)."""

    functional: set[fx.Node] = dataclasses.field(default_factory=set)
    nodes: set[fx.Node] = dataclasses.field(default_factory=set)
    layer_inputs: set[fx.Node] = dataclasses.field(default_factory=set)


def _gradient_plan(plan: _graph.Plan, composite: Composite) -> _Gradient:
    named = set(composite.name_map)
    result = _Gradient()
    for node, step in plan.steps.items():
        if step.kind == "input":
            continue
        if node.op in ("call_function", "call_method") and not named.intersection(
            node.meta.get("nn_module_stack") or ()
        ):  # a rule set on a module covers what it computes
            result.functional.add(node)
            if step.kind not in ("maxpool", "adaptive_maxpool"):
                result.nodes.add(node)
        elif step.kind not in ("pass", "reshape"):
            result.layer_inputs.update(arg for arg in node.all_input_nodes if arg in plan.steps)
    return result


def _gradient_shares(node: fx.Node, ctx: _nodes.Context, root: Any, relevance: torch.Tensor) -> Any:
    """``J^T R`` for one parameter-free step: the step run again on copies of its inputs that
    require gradients. None when its output carries no gradient (the caller keeps the LRP rule)."""
    values = {arg: ctx.env.get(arg) for arg in node.all_input_nodes if arg in ctx.steps}
    leaves = {
        arg: value.detach().to(ctx.dtype).requires_grad_()
        for arg, value in values.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point()
    }
    if not leaves:
        return None
    with torch.enable_grad():
        # clones: an in-place op (F.relu(x, inplace=True)) must not write into the leaf
        env = {**ctx.env, **{arg: leaf.clone() for arg, leaf in leaves.items()}}
        output = _nodes.run_node(node, dataclasses.replace(ctx, env=env), root, None)
        if not isinstance(output, torch.Tensor) or not output.requires_grad:
            return None
        grads = torch.autograd.grad(
            output, list(leaves.values()), relevance.to(output.dtype), allow_unused=True
        )
    return [(arg, grad) for arg, grad in zip(leaves, grads, strict=True) if grad is not None]


def _pass_layout(plan: _graph.Plan, x: torch.Tensor) -> torch.memory_format:
    """The memory layout of the pass: channels-last for 4-d CPU inputs of a model with 2-d
    convolutions. oneDNN runs convolutions in that layout without converting activations,
    and max pooling with indices is several times faster in it (measured: 0.69 -> 0.07 ms for
    [8, 16, 32, 32]); the relevance ops keep it (``fastxai.ops`` element-wise ops follow their
    first argument's layout), and the result is returned contiguous. Values are those of the
    contiguous pass up to the convolutions' summation order (tests/lrp/test_lrp_channels_last.py)."""
    if plan.channels_last and x.dim() == 4 and x.device.type == "cpu":
        return torch.channels_last
    return torch.contiguous_format


def _op_backend(backend: str | None, device: torch.device, dtype: torch.dtype) -> str | None:
    """The backend choice to pass to every fused op. A named backend (here or from
    ``use_backend``/``set_backend``) is checked once, before the model runs; when it is the one
    ``"auto"`` picks anyway, ``"auto"`` is passed on (the same kernels, without the per-call
    probe of the backends that a named choice costs in ``_backends.resolve``)."""
    choice = backend if backend is not None else _backends.get_backend()
    if choice == "auto":
        return backend
    name = _backends.resolve(choice, device, dtype)
    return "auto" if _backends.resolve("auto", device, dtype) == name else name


def _propagate(
    plan: _graph.Plan,
    x: torch.Tensor,
    target: torch.Tensor | None,
    stabilizer: float,
    dtype: torch.dtype,
    nonnegative: set[fx.Node],
    backend: str | None,
    keep_layers: bool,
    gradient: _Gradient | None,
    any_rows: bool,
    check: Callable[[torch.Tensor], None] | None = None,
    model_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One chunk: the plan's forward pass (under autocast ``model_dtype``), then the relevance
    pass in ``dtype``."""
    ctx = _nodes.Context({}, dtype, stabilizer, backend, nonnegative, steps=plan.steps)
    root = plan.root
    with _precision.autocast(model_dtype, x.device.type):
        for node in plan.graph.nodes:
            if node.op == "placeholder":
                ctx.env[node] = x
            elif node.op != "output":
                step = plan.steps.get(node)
                ctx.env[node] = _nodes.run_node(node, ctx, root, step)
                if step is not None and step.kind == "pass" and isinstance(step.module, LINEAR_TYPES):
                    _check_identity(step, ctx.env[node], ctx.env[node.all_input_nodes[0]])
                if gradient is not None:
                    continue  # gradients re-run steps on their inputs: every value is kept
                for value in plan.release.get(node, ()):
                    del ctx.env[value]  # read by no later node and no relevance handler
        result = plan.output.args[0]
        if not isinstance(result, fx.Node) or result not in plan.steps:
            raise _graph.UnsupportedLayerError("the model must return one tensor computed from its input")
        output = ctx.env[result]
        if check is not None and isinstance(output, torch.Tensor):
            check(output)  # before the relevance pass: a stale plan costs its forward only
    if isinstance(output, torch.Tensor) and output.dim() > 2 and output.shape[0] == x.shape[0]:
        # [batch, *O]: a tuple of indices per example (``_model.check_target``), flattened
        target = _model.flat_target(target, output.shape[1:])  # raises for None: no class dim
        logits = output.reshape(output.shape[0], -1)
    else:
        logits = output.unsqueeze(1) if isinstance(output, torch.Tensor) and output.dim() == 1 else output
    if (
        not isinstance(output, torch.Tensor)
        or logits.dim() != 2
        or (logits.shape[0] != x.shape[0] and not (any_rows and target is None))
    ):
        raise ValueError(
            f"model must return [batch, classes], [batch] or [batch, *O] with a tuple target, got "
            f"{getattr(output, 'shape', output)} for {x.shape[0]} inputs"
        )
    if target is None:
        target = logits.argmax(dim=1)
    elif output.dim() <= 2:
        _model.check_target_range(target, logits.shape[1])
    initial = torch.zeros_like(logits, dtype=dtype)
    initial.scatter_(1, target.view(-1, 1), logits.gather(1, target.view(-1, 1)).to(dtype))
    relevances: dict[fx.Node, torch.Tensor] = {result: initial.view(output.shape)}
    layers: dict[str, torch.Tensor] = {}
    for node in reversed(plan.graph.nodes):
        step = plan.steps.get(node)
        if step is None or node not in relevances:
            continue
        relevance = relevances.pop(node)
        if keep_layers:
            layers[step.name] = relevance
            if "merged_into" in step.extra:
                layers[step.extra["merged_into"]] = relevance
        if step.kind == "input":
            relevances[node] = relevance
            continue
        shares = None
        if gradient is not None and node in gradient.nodes:
            shares = _gradient_shares(node, ctx, root, relevance)
        if shares is None:
            shares = _nodes.HANDLERS[step.kind](step, ctx, relevance)
        for source, share in shares:
            if source not in plan.steps:
                continue  # a constant: its share is absorbed, like a bias's
            if gradient is not None and node in gradient.functional and source in gradient.layer_inputs:
                share = share * ctx.wide(source)  # see _Gradient
            previous = relevances.get(source)
            relevances[source] = share if previous is None else previous + share
        ctx.env.pop(node, None)  # nothing after this needs the node's value
    input_relevance = relevances.get(plan.placeholder)
    if input_relevance is None:
        input_relevance = torch.zeros_like(x, dtype=dtype)
    if keep_layers:
        layers = dict(reversed(list(layers.items())))
    return input_relevance, layers


def _check_identity(step: _graph.Step, output: torch.Tensor, inputs: torch.Tensor) -> None:
    """A Linear/Conv given ``Pass`` (Captum's IdentityRule) hands its relevance on unchanged,
    which needs an output of its input's shape."""
    if output.shape != inputs.shape:
        raise ValueError(
            f"rule Pass on {step.name!r} needs an output of its input's shape, got "
            f"{tuple(inputs.shape)} -> {tuple(output.shape)}"
        )


def conservation(
    layers: dict[str, torch.Tensor], output: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Per layer and sample, ``sum(R_layer) - output`` ([B] each): zero where relevance is
    conserved. ``output`` is the target logits [B]; None takes them from the model output's
    entry of ``layers`` (the last one). Sequential models conserve at every node; in models
    with branches (residual sums) only at nodes every path passes through.

    >>> R, layers = fastxai.lrp(model, x, target=y, return_layer_relevances=True)
    >>> errors = fastxai.lrp.conservation(layers)
    """
    if not isinstance(layers, dict) or not layers:
        raise TypeError("layers must be the non-empty dict returned with return_layer_relevances=True")
    totals = {name: value.flatten(1).sum(1) for name, value in layers.items()}
    reference: Any = output if output is not None else next(reversed(totals.values()))
    if not isinstance(reference, torch.Tensor) or reference.shape != next(iter(totals.values())).shape:
        raise ValueError("output must be the target logits, one per sample")
    return {name: total - reference.to(total.dtype) for name, total in totals.items()}
