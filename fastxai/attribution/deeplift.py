"""DeepLIFT (Rescale rule) and DeepLiftShap: one forward and one backward over inputs and baselines."""

from __future__ import annotations

import math

import torch
from torch import nn

from fastxai import _compile, _layer, _model, _precision, _scheduling
from fastxai._layer_capture import resolve_layer
from fastxai._model import Model
from fastxai.attribution._rescale import PairedMode, RecordMode, Unpaired
from fastxai.attribution.gradient_shap import _check_distribution
from fastxai.attribution.layer_deeplift import layer_pairs


def _check_options(multiply_by_inputs: object, return_convergence_delta: object, eps: object) -> float:
    for name, flag in (
        ("multiply_by_inputs", multiply_by_inputs),
        ("return_convergence_delta", return_convergence_delta),
    ):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    return float(eps)


def _check_baselines(baselines: object, inputs: torch.Tensor) -> torch.Tensor:
    """A number, one baseline [*F] or [1, *F], or one per input [B, *F] -> [B, *F]."""
    if isinstance(baselines, (int, float)) and not isinstance(baselines, bool):
        if not math.isfinite(baselines):
            raise ValueError(f"baselines must be finite, got {baselines}")
        return torch.full_like(inputs, float(baselines))
    if not isinstance(baselines, torch.Tensor):
        raise TypeError(f"baselines must be a number or a tensor, got {type(baselines).__name__}")
    if not baselines.is_floating_point():
        raise TypeError(f"baselines must be a floating-point tensor, got {baselines.dtype}")
    features = tuple(inputs.shape[1:])
    if tuple(baselines.shape) == features and baselines.dim() == inputs.dim() - 1:
        baselines = baselines.unsqueeze(0)
    if (
        baselines.dim() != inputs.dim()
        or tuple(baselines.shape[1:]) != features
        or baselines.shape[0]
        not in (
            1,
            inputs.shape[0],
        )
    ):
        raise ValueError(
            f"baselines must have shape {features}, (1, *{features}) or ({inputs.shape[0]}, *{features}), "
            f"got {tuple(baselines.shape)}"
        )
    if not _model.all_finite(baselines):
        raise ValueError("baselines contain NaN or infinity")
    return baselines.detach().to(device=inputs.device, dtype=inputs.dtype).expand_as(inputs)


def rows_independent(model: Model) -> bool:
    """Whether the model computes each row from that row alone, so that equal baselines give
    equal rows whatever their position: an ``nn.Module`` (the methods' contract: rows of a batch
    must not interact), or a callable that says so (``_fastxai_rows_independent``, as the
    drop-in classes' wrappers do when no extra argument has one row per example)."""
    return isinstance(model, nn.Module) or getattr(model, "_fastxai_rows_independent", False) is True


def rescale_multipliers(
    model: Model,
    inputs: torch.Tensor,
    baselines: torch.Tensor,
    target: torch.Tensor | None,
    eps: float,
    share_equal_baselines: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The DeepLIFT multipliers ``m`` [N, *F] of ``f_target`` and the score differences
    ``f(x) - f(x')`` [N], for inputs and baselines [N, *F] and target [N] (None: the predicted
    class). Two model passes (``fastxai.attribution._rescale``): the baselines' without autograd,
    recording each nonlinearity's argument, then the inputs' with the Rescale rule on each call
    and one backward over ``N`` rows.

    With ``share_equal_baselines`` (a model whose rows are independent, ``rows_independent``),
    baselines whose rows are all equal (a number, one baseline for the batch, ``zeros_like``:
    the common case) run as one row, and each record is broadcast over the inputs' rows where
    the inputs' pass needs it: the baselines' pass then costs one row instead of ``N``. Where a
    one-row pass does not line up with the inputs' (a model that folds the batch into another
    dimension, or fails on one row), the baselines run again with all their rows.

    The target's range is checked on the inputs' output, before the backward (no probe call:
    a one-row forward costs a ResNet a few percent of the whole method); the predicted class is
    read off the same output."""
    rows = baselines.shape[0]
    equal = share_equal_baselines and rows > 1
    if equal and baselines.stride(0) != 0:
        equal = torch.equal(baselines, baselines[:1].expand_as(baselines))  # no temporary, stops early
    if equal:
        try:
            record, reference_output = _reference_pass(model, baselines[:1])
        except Exception:  # a model that cannot run one row runs the full batch below
            record = None
        if record is not None and reference_output.dim() == 2 and reference_output.shape[0] == 1:
            try:
                return _inputs_pass(
                    model, inputs, record, reference_output.expand(rows, -1), target, eps, broadcast=True
                )
            except Unpaired:
                pass
    record, reference_output = _reference_pass(model, baselines)
    return _inputs_pass(model, inputs, record, reference_output, target, eps)


def _reference_pass(model: Model, baselines: torch.Tensor) -> tuple[RecordMode, torch.Tensor]:
    record = RecordMode()
    with torch.no_grad(), record:
        reference_output = _model.logits(model, baselines)
    return record, reference_output


def _inputs_pass(
    model: Model,
    inputs: torch.Tensor,
    record: RecordMode,
    reference_output: torch.Tensor,
    target: torch.Tensor | None,
    eps: float,
    broadcast: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = inputs.detach().requires_grad_(True)
    with torch.enable_grad():
        paired = PairedMode(record.calls, eps, broadcast)
        with paired:
            output = _model.logits(model, leaf)
        paired.finish()
        if target is None:
            target = output.detach().argmax(1)
        else:
            _model.check_target_range(target, output.shape[1])
        index = target.view(-1, 1)
        scores = output.gather(1, index).squeeze(1)
        (multipliers,) = torch.autograd.grad(scores.sum(), leaf)
    return multipliers, scores.detach() - reference_output.gather(1, index).squeeze(1)


def _accumulator(inputs: torch.Tensor) -> torch.dtype:
    return torch.float64 if inputs.dtype == torch.float64 else torch.float32


def autocast_outputs(model: Model, dtype: torch.dtype | None, device_type: str) -> Model:
    """``dtype=``: ``model`` run under autocast in ``dtype`` (``fastxai._precision``), its output
    [B, *O] handed on in float32 (float64 for float64 inputs), so the score differences
    ``f(x) - f(x')`` and the convergence deltas are not taken in half precision. Both passes
    run under it, so each nonlinearity sees its half-precision argument in both and the pairs
    match in dtype; relu's fused Rescale (``ops.relu_rescale``) takes half precision and
    computes its multipliers in float32. The model itself for None (the fast path, untouched).
    """
    if dtype is None:
        return model

    def run(points: torch.Tensor) -> torch.Tensor:
        with _precision.autocast(dtype, device_type):
            output = _model.outputs(model, points)
        return output.to(_precision.accumulator_dtype(points.dtype))

    return run


def deeplift(
    model: Model,
    inputs: torch.Tensor,
    target: object = None,
    baselines: float | torch.Tensor = 0.0,
    *,
    multiply_by_inputs: bool = True,
    return_convergence_delta: bool = False,
    chunk_size: int | None = None,
    eps: float = 1e-10,
    layer: object = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """DeepLIFT with the Rescale rule (Shrikumar et al. 2017; Captum's ``DeepLift``).

    Every nonlinearity's derivative is replaced by the multiplier
    ``(f(x) - f(x')) / (x - x')`` of its activations on the input and on the baseline (the
    derivative where ``|x - x'| < eps``); max pooling and softmax have their own rules (see
    ``fastxai.attribution._rescale``). The attribution is

        attribution = m * (x - x'),   m = d~ f_target / d x   (the modified chain rule),

    and the attributions of an input sum to ``f_target(x) - f_target(x')`` (summation-to-delta)
    for networks built from linear maps and the supported nonlinearities. Per chunk, the model
    runs on the baselines (no autograd), then on the inputs with one backward (half the
    backward of a joint pass over both); nonlinearities are caught as modules and as
    functional calls (``torch.relu``, ``F.relu``), also when a module is used several times.
    The model runs in eval mode and is left as found.

    inputs: [B, *F]; baselines: a number, [*F], [1, *F] or [B, *F]; target: int, [B] indices or
    None (the predicted class); ``multiply_by_inputs=False`` returns the multipliers ``m``;
    ``chunk_size``: most model rows per chunk, both passes together (two per input). Returns
    [B, *F] in the inputs' dtype, and with ``return_convergence_delta`` also
    ``sum(attribution) - (f(x) - f(x'))`` [B].

    ``layer`` (a module of the model or its dotted name, with one output tensor): DeepLIFT at
    that layer's output ``h``, ``m_h * (h - h')`` [B, *A] with ``h'`` its value at the
    baselines and ``m_h`` the Rescale multipliers downstream of it (Captum's
    ``LayerDeepLift``; ``fastxai.attribution.layer_deeplift``); the baselines then run row by
    row, not shared. Integer inputs (token ids) are taken at ``layer``, by default the model's
    input embedding (``model.get_input_embeddings()``, else its first ``nn.Embedding``), with
    baselines of token ids (an int, e.g. the pad id, or an integer tensor; the default ``0.0``
    is token 0); per token: ``a.sum(-1)``.

    ``dtype=torch.bfloat16`` (or ``torch.float16``): both passes run under autocast in that
    dtype (``fastxai._precision``), so the recorded and paired pre-activations are half
    precision; relu's multipliers are computed in float32 from them, the target scores,
    ``x - x'`` and the products are float32 and the result in the inputs' dtype. Summation to
    delta then holds for the half-precision model: the README's "bf16" table gives the
    completeness error against the float32 model.

    >>> a = fastxai.deeplift(model, x, target=y, baselines=0.0)
    >>> a = fastxai.deeplift(model, x, target=y, layer="layer3")          # [B, *A]
    >>> a, delta = fastxai.deeplift(model, x, target=y, return_convergence_delta=True)
    """
    model = _compile.original(_model.check_model(model))
    if layer is None and isinstance(inputs, torch.Tensor) and _layer.is_integer(inputs):
        layer = _layer.input_embedding(model)  # token ids: at the embedding, as the gradient methods
    inputs = _model.check_inputs(inputs, allow_integer=layer is not None, layer_option=True)
    eps = _check_options(multiply_by_inputs, return_convergence_delta, eps)
    if _layer.is_integer(inputs) and isinstance(baselines, float) and baselines.is_integer():
        baselines = int(baselines)  # the default 0.0: token 0
    ids = _layer.token_id_baselines(baselines, inputs)
    if _layer.is_integer(inputs) and ids is None:
        raise TypeError(
            "baselines of token-id inputs must be token ids (an int such as the pad id, or an integer "
            f"tensor), got {baselines!r}" if not isinstance(baselines, torch.Tensor)
            else f"baselines of token-id inputs must be an integer tensor of ids, got {baselines.dtype}"
        )
    reference = ids if ids is not None else _check_baselines(baselines, inputs)
    chunk = _scheduling.auto_chunk_size(_scheduling.check_chunk_size(chunk_size), inputs)
    target_t = _model.check_target(target, inputs.shape[0], inputs.device)
    model_dtype = _precision.check_dtype(dtype, inputs.device)
    x = inputs.detach()
    scored = autocast_outputs(model, model_dtype, x.device.type)  # the model itself for None
    if layer is not None:
        module = resolve_layer(model, layer)
        with _model.preserved_state(model):
            result, delta = layer_pairs(
                scored, module, x, reference, target_t, eps, multiply_by_inputs, max(1, chunk // 2),
                upcast=model_dtype is not None, witness=_layer.sequence_witness(model, x),
            )  # fmt: skip
        if inputs.is_floating_point():  # token ids: the layer's dtype
            result = result.to(inputs.dtype)
        return (result, delta) if return_convergence_delta else result
    batch = x.shape[0]
    result = torch.empty_like(x)
    delta = torch.empty(batch, dtype=_accumulator(x), device=x.device)

    share = rows_independent(model)
    with _model.preserved_state(model):

        def body(_sample: int, _sample_stop: int, row: int, row_stop: int) -> None:
            rows_target = None if target_t is None else target_t[row:row_stop]
            multipliers, difference = rescale_multipliers(
                scored, x[row:row_stop], reference[row:row_stop], rows_target, eps, share
            )
            out = result[row:row_stop]
            if multiply_by_inputs:
                torch.mul(multipliers, torch.sub(x[row:row_stop], reference[row:row_stop]), out=out)
            else:
                out.copy_(multipliers)
            if return_convergence_delta:  # a reduction over every attribution: only when asked
                total = out.reshape(row_stop - row, -1).sum(1, dtype=delta.dtype)
                delta[row:row_stop] = total - difference.to(delta.dtype)

        _scheduling.for_each_block(1, batch, max(1, chunk // 2), body, halve_on_oom=x.is_cuda)

    return (result, delta) if return_convergence_delta else result


def deeplift_shap(
    model: Model,
    inputs: torch.Tensor,
    target: object = None,
    baselines: torch.Tensor | None = None,
    *,
    multiply_by_inputs: bool = True,
    return_convergence_delta: bool = False,
    chunk_size: int | None = None,
    eps: float = 1e-10,
    layer: object = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """DeepLiftShap (Lundberg & Lee 2017; Captum's ``DeepLiftShap``): DeepLIFT against each of
    ``K`` baselines ``x'_k`` of a background distribution, averaged,

        attribution = mean_k m_k * (x - x'_k),

    which sums to ``f_target(x) - mean_k f_target(x'_k)``. The ``B * K`` (input, baseline) pairs
    run baseline-major (``K`` copies of the batch), ``2 * B * K`` model rows over both passes in
    chunks of at most ``chunk_size`` rows; see ``deeplift`` for the rule.

    inputs: [B, *F]; baselines: [K, *F] (or one baseline [*F]); target: int, [B] or None (the
    predicted class of each input). Token ids (integer inputs) are taken at the input embedding,
    as in ``deeplift``, against K baseline sequences of ids [K, *F] (or an int: one baseline).
    Returns [B, *F] in the inputs' dtype (the embedding's for token ids), and with
    ``return_convergence_delta`` the per-pair ``sum(m_k (x - x'_k)) - (f(x) - f(x'_k))`` [B * K],
    ordered by input, then baseline (Captum's order). ``layer``: at that layer's output, as
    ``deeplift`` (Captum's ``LayerDeepLiftShap``), [B, *A]. ``dtype``: as ``deeplift``.

    >>> a = fastxai.deeplift_shap(model, x, target=y, baselines=background)
    """
    model = _compile.original(_model.check_model(model))
    if layer is None and isinstance(inputs, torch.Tensor) and _layer.is_integer(inputs):
        layer = _layer.input_embedding(model)  # token ids: at the embedding, as deeplift
    inputs = _model.check_inputs(inputs, allow_integer=layer is not None, layer_option=True)
    eps = _check_options(multiply_by_inputs, return_convergence_delta, eps)
    if baselines is None:
        raise TypeError(
            "baselines must be a tensor [K, *F] of baselines (the background distribution), got None"
        )
    if _layer.is_integer(inputs):
        distribution = _layer.token_id_background(baselines, inputs)
    else:
        distribution = _check_distribution(baselines, inputs)
    chunk = _scheduling.auto_chunk_size(_scheduling.check_chunk_size(chunk_size), inputs)
    target_t = _model.check_target(target, inputs.shape[0], inputs.device)
    model_dtype = _precision.check_dtype(dtype, inputs.device)
    x = inputs.detach()
    batch, count = x.shape[0], distribution.shape[0]
    scored = autocast_outputs(model, model_dtype, x.device.type)  # the model itself for None
    if layer is not None:
        module = resolve_layer(model, layer)
        with _model.preserved_state(model):
            pairs, pair_delta = layer_pairs(
                scored,
                module,
                x.repeat_interleave(count, dim=0),
                distribution.repeat(batch, *([1] * (x.dim() - 1))),
                None if target_t is None else target_t.repeat_interleave(count, dim=0),
                eps,
                multiply_by_inputs,
                max(1, chunk // 2),
                upcast=model_dtype is not None,
                witness=_layer.sequence_witness(model, x),
            )
        mean = pairs.view(batch, count, *pairs.shape[1:]).mean(1)
        if inputs.is_floating_point():  # token ids: the layer's dtype
            mean = mean.to(inputs.dtype)
        return (mean, pair_delta) if return_convergence_delta else mean
    acc_dtype = _accumulator(x)
    total = torch.zeros(x.shape, dtype=acc_dtype, device=x.device)
    delta = torch.empty(count, batch, dtype=acc_dtype, device=x.device)

    with _model.preserved_state(model):

        def body(sample: int, sample_stop: int, row: int, row_stop: int) -> None:
            copies, rows = sample_stop - sample, row_stop - row
            x_rows = x[row:row_stop].repeat(copies, *([1] * (x.dim() - 1)))
            references = distribution[sample:sample_stop].repeat_interleave(rows, dim=0)
            rows_target = None if target_t is None else target_t[row:row_stop].repeat(copies)
            multipliers, difference = rescale_multipliers(scored, x_rows, references, rows_target, eps)
            if multiply_by_inputs:
                multipliers = multipliers * (x_rows - references)
            per_pair = multipliers.reshape(copies, rows, *x.shape[1:])
            sums = per_pair.reshape(copies, rows, -1).sum(2, dtype=acc_dtype)
            delta[sample:sample_stop, row:row_stop] = sums - difference.view(copies, rows).to(acc_dtype)
            total[row:row_stop] += per_pair.sum(0, dtype=acc_dtype)

        _scheduling.for_each_block(count, batch, max(1, chunk // 2), body, halve_on_oom=x.is_cuda)

    result = total.div_(count).to(inputs.dtype)
    return (result, delta.t().reshape(-1)) if return_convergence_delta else result
