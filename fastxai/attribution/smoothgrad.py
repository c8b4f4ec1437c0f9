"""SmoothGrad, SmoothGrad-squared and VarGrad on fused noise and moment kernels."""

from __future__ import annotations

import torch

from fastxai import _backends, _budget, _model, _scheduling, ops
from fastxai._model import Model
from fastxai.attribution import _layer

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

    >>> a = fastxai.smoothgrad(model, x, target=y, n_samples=50, stdevs=0.15, seed=0)
    """
    model = _model.check_model(model)
    site, inputs = _layer.site_for(model, inputs, layer, forward_kwargs)
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
        x = site.origin
        acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        total = torch.zeros(x.shape, dtype=acc_dtype, device=x.device)
        total_sq = torch.zeros_like(total) if nt_type != "smoothgrad" else None
        target_t = site.forward.resolve_target(target_t, chunk)

        def body(sample: int, sample_stop: int, row: int, row_stop: int) -> None:
            count = sample_stop - sample
            noisy = ops.gaussian_perturb(
                x[row:row_stop], sigma[row:row_stop], seed, sample, count, row_offset + row, backend=backend
            )
            flat = noisy.view(count * (row_stop - row), *x.shape[1:])
            grads = site.gradients(flat, slice(row, row_stop), count, target_t[row:row_stop].repeat(count))[0]
            ops.moment_accumulate(
                grads.reshape(noisy.shape),
                total[row:row_stop],
                None if total_sq is None else total_sq[row:row_stop],
                noisy if multiply_by_inputs else None,
                backend=backend,
            )

        _scheduling.for_each_block(n_samples, x.shape[0], chunk, body, halve_on_oom=x.is_cuda)

    mean = total.div_(n_samples)
    if nt_type == "smoothgrad":
        result = mean
    else:
        assert total_sq is not None
        mean_sq = total_sq.div_(n_samples)
        result = mean_sq if nt_type == "smoothgrad_sq" else mean_sq.sub_(mean * mean)
    return result.to(x.dtype)
