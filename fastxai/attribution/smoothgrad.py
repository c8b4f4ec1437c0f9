"""SmoothGrad, SmoothGrad-squared and VarGrad on fused noise and moment kernels."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fastxai import _backends, _budget, _graphs, _layer, _model, _precision, _scheduling, ops
from fastxai._model import Model

NT_TYPES = ("smoothgrad", "smoothgrad_sq", "vargrad")


def _check_stdevs(stdevs: object, inputs: torch.Tensor) -> torch.Tensor:
    batch = inputs.shape[0]
    if isinstance(stdevs, bool):
        raise TypeError("stdevs must be a float or one float per sample, got bool")
    try:
        sigma = torch.as_tensor(stdevs, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(
            f"stdevs must be a float or one float per sample, got {type(stdevs).__name__}"
        ) from error
    if sigma.dim() == 0:
        sigma = sigma.expand(batch)
    if sigma.shape != (batch,):
        raise ValueError(
            f"stdevs must be a float or have one value per sample ({batch}), got shape {tuple(sigma.shape)}"
        )
    if not bool(torch.isfinite(sigma).all()) or bool((sigma < 0).any()):
        raise ValueError(f"stdevs must be finite and >= 0, got {sigma.tolist()}")
    return sigma.to(device=inputs.device, dtype=torch.float32)


def _check_seed(seed: object) -> int:
    if seed is None:
        return int(torch.randint(0, 2**62, ()).item())
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be None or an int in [0, 2**63), got {seed!r}")
    return seed


def smoothgrad(
    model: Model,
    inputs: torch.Tensor,
    target: object = None,
    *,
    n_samples: int = 50,
    stdevs: float | torch.Tensor = 0.15,
    nt_type: str = "smoothgrad",
    multiply_by_inputs: bool = False,
    seed: int | None = None,
    row_offset: int = 0,
    layer: object = None,
    forward_kwargs: dict | None = None,
    chunk_size: int | None = None,
    backend: str | None = None,
    dtype: torch.dtype | None = None,
    compile: bool | str = False,
    cuda_graph: bool = False,
) -> torch.Tensor:
    """SmoothGrad (Smilkov et al. 2017) and its squared / variance forms (Adebayo et al. 2018).

    With ``a_s = grad f_target(x + sigma * z_s)`` (times ``x + sigma * z_s`` when
    ``multiply_by_inputs``), ``z_s ~ N(0, I)``: ``smoothgrad`` = mean_s a_s,
    ``smoothgrad_sq`` = mean_s a_s**2, ``vargrad`` = mean_s a_s**2 - (mean_s a_s)**2 —
    Captum's ``NoiseTunnel`` meanings. ``stdevs`` is the absolute noise level, a float or one
    per sample. The noise is a function of (seed, sample, row, element), so a seed gives the
    same result for any ``chunk_size`` and backend; the n gradients are never held at once.

    ``row_offset`` is the index of the first input in a larger data set: the noise of input
    ``b`` is keyed by ``row_offset + b``, so attributing a data set batch by batch gives the
    same result as one call over all of it.

    inputs: [B, *F]; returns [B, *F] in the inputs' dtype (accumulated in float32).

    ``layer`` (a module of the model or its dotted name): the noise is added to that layer's
    output ``h`` [B, *A] and gradients are taken there (``x`` above becomes ``h``; the model
    runs on the inputs with the layer's output replaced by the noisy points, ``n_samples``
    copies per model batch); returns [B, *A] in the layer's dtype. Integer inputs (token ids)
    are then accepted, and ``layer=None`` means the model's input embedding
    (``model.get_input_embeddings()``, else its first ``nn.Embedding``); per token:
    ``a.sum(-1)``. ``forward_kwargs``: extra keyword arguments to the model (an attention
    mask); tensors with one row per example are repeated with the rows of each model batch.

    ``dtype=torch.bfloat16`` (or ``torch.float16``): the noisy points are made in that dtype and
    the model runs under autocast; the fused op sums the half-precision gradients in float32
    (``fastxai._precision``). ``compile=True`` (or a ``torch.compile`` backend's name) compiles
    one chunk's forward, backward and fused accumulation as one graph, once per call
    (``fastxai._compile``; attributions at the input; the noise is drawn outside it).
    ``cuda_graph=True`` (inputs on a CUDA device) captures that step as a CUDA graph once and
    replays it per chunk (``fastxai._graphs``; at the input).

    >>> a = fastxai.smoothgrad(model, x, target=y, n_samples=50, stdevs=0.15, seed=0)
    >>> a = fastxai.smoothgrad(model, x, target=y, seed=0, dtype=torch.bfloat16, compile=True)
    """
    model = _model.check_model(model)
    site, inputs = _layer.site_for(model, inputs, layer, forward_kwargs, dtype)
    compile_backend = _layer.check_compile(site, compile)
    graphed = _layer.check_graph(site, cuda_graph, inputs, compile_backend)
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be an int >= 1, got {n_samples!r}")
    _budget.check_philox_samples("n_samples", n_samples)
    if nt_type not in NT_TYPES:
        raise ValueError(f"nt_type must be one of {NT_TYPES}, got {nt_type!r}")
    sigma = _check_stdevs(stdevs, inputs)
    seed = _check_seed(seed)
    if isinstance(row_offset, bool) or not isinstance(row_offset, int) or not 0 <= row_offset < 2**31:
        raise ValueError(f"row_offset must be an int in [0, 2**31), got {row_offset!r}")
    if backend is not None:
        _backends.check_choice(backend)
    chunk = _scheduling.auto_chunk_size(_scheduling.check_chunk_size(chunk_size), inputs)
    target_t = _model.check_target(target, inputs.shape[0], inputs.device)

    with _model.preserved_state(model):
        site.prepare(chunk)
        origin = site.origin
        x = origin.to(_precision.points_dtype(origin, site.forward.dtype))  # the noisy points' dtype
        total = torch.zeros(x.shape, dtype=_precision.accumulator_dtype(x.dtype), device=x.device)
        total_sq = torch.zeros_like(total) if nt_type != "smoothgrad" else None
        target_t = site.forward.resolve_target(target_t, chunk)
        step: Callable[..., None] | None = _graphs.make_step(_noise_step, compile_backend, graphed)
        if step is not None:
            assert isinstance(site, _layer.InputSite)
            site.check_target()
            accumulate = ops._unchecked("moment_accumulate", backend, x)

        def body(sample: int, sample_stop: int, row: int, row_stop: int) -> None:
            count = sample_stop - sample
            noisy = ops.gaussian_perturb(
                x[row:row_stop], sigma[row:row_stop], seed, sample, count, row_offset + row, backend=backend
            )
            rows, rows_target = slice(row, row_stop), target_t[row:row_stop].repeat(count)
            sums = total[rows], None if total_sq is None else total_sq[rows]
            if step is not None:
                forward = site.forward
                step(forward.plain, forward.dtype, accumulate, noisy, *sums, multiply_by_inputs, rows_target,
                     forward.extras(rows, count))  # fmt: skip
                return
            flat = noisy.view(count * (row_stop - row), *x.shape[1:])
            grads = site.gradients(flat, rows, count, rows_target)[0]
            ops.moment_accumulate(
                grads.reshape(noisy.shape), *sums, noisy if multiply_by_inputs else None, backend=backend
            )

        _scheduling.for_each_block(n_samples, x.shape[0], chunk, body, halve_on_oom=x.is_cuda)

    mean = total.div_(n_samples)
    if nt_type == "smoothgrad":
        result = mean
    else:
        assert total_sq is not None
        mean_sq = total_sq.div_(n_samples)
        result = mean_sq if nt_type == "smoothgrad_sq" else mean_sq.sub_(mean * mean)
    return result.to(origin.dtype)


def _noise_step(
    model: Callable[..., Any],
    dtype: torch.dtype | None,
    accumulate: Callable[..., None],
    noisy: torch.Tensor,
    total: torch.Tensor,
    total_sq: torch.Tensor | None,
    multiply_by_inputs: bool,
    target: torch.Tensor,
    kwargs: dict[str, Any],
) -> None:
    """One chunk of SmoothGrad as one graph (``_compile.Step``): the target's gradients at the
    noisy points [n, B, *F], summed into ``total`` (and their squares into ``total_sq``) by the
    fused op's implementation ``accumulate`` (``ops._unchecked``)."""
    grads, _ = _layer.point_gradients(model, dtype, noisy.view(-1, *noisy.shape[2:]), target, kwargs)
    accumulate(
        grads.reshape(noisy.shape).contiguous(), total, total_sq, noisy if multiply_by_inputs else None
    )
