"""Where gradient attributions are taken: the model's input, or the output (or input) of layers.

Every gradient method of fastxai attributes the values of a *site*. By default the site is the
model's input; with ``layer=`` it is what a layer outputs (Captum's layer methods). A site
gives the values attributed, ``origin`` [B, *A], and the target's gradient at any points of
that space, for rows of the batch (``_rows.RowForward``: the model on rows, per-example
arguments repeated alike):

    site.gradients(points, rows, count, target)   # points [count * n, *A] for rows r (n rows)

At a layer, the model runs on the user's own inputs (any dtype: token ids too, which never
get gradients) and a forward hook replaces the layer's output by the points — path points of
Integrated Gradients, noisy points of SmoothGrad — as one leaf the backward stops at. A model
batch of ``count`` points per row is the rows' inputs repeated copy-major (copy ``c`` of row
``i`` is batch row ``c * n + i``), the layout of the fused ops, so the steps of a path go
through the model together exactly as at the input. Extra model arguments
(``forward_kwargs``; Captum's ``additional_forward_args``) that hold one row per example (a
tensor whose first dimension is the batch, like an attention mask) are repeated the same way;
all others are passed unchanged.

Several layers, layers returning a tuple of tensors, and a layer's inputs (a forward pre-hook)
are one site too: their tensors are flattened into one row per example ``[B, sum_k n_k]``
(``Slots.flatten``), so the methods and the fused ops see a single tensor.

A layer tensor whose batch is not dim 0 (sequence-first ``[T, B, D]``: XLNet,
``nn.TransformerEncoder`` without ``batch_first``) is seen batch-first, ``h.movedim(b, 0)``
(``Slots``): origins, points, gradients, baselines in the layer's space and the attributions
returned are all ``[B, *A]`` of that view.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import Any, Protocol

import torch
from torch import nn

from fastxai import _compile, _graphs, _model, _precision, _scheduling
from fastxai._layer_capture import Slots, resolve_layer
from fastxai._model import Model
from fastxai._rows import RowForward, Rows, check_forward_kwargs, is_integer, repeat_rows


def input_embedding(model: Model) -> nn.Module | None:
    """The model's input embedding: ``model.get_input_embeddings()`` (transformers' models),
    else its first ``nn.Embedding``; None if it has neither."""
    getter = getattr(model, "get_input_embeddings", None)
    if callable(getter):
        embedding = getter()
        if isinstance(embedding, nn.Module):
            return embedding
    if isinstance(model, nn.Module):
        for module in model.modules():
            if isinstance(module, nn.Embedding):
                return module
    return None


def sequence_witness(model: Model, inputs: torch.Tensor) -> nn.Module | None:
    """For token-id ``inputs``, the model's input embedding, which ``Slots`` watches to tell a
    sequence-first model (``Slots.batch_axis``); None for float inputs."""
    return input_embedding(model) if is_integer(inputs) else None


class GraphRule(Protocol):
    """A change of the backward pass made on the autograd graph of each forward (Guided
    Backpropagation's relu rule): ``apply`` hooks the graph's nodes and returns True, or
    returns False where the graph hides what it must change (an in-place op on a view wraps
    its node in a ``CopySlices``); the forward then runs again inside ``fallback()``."""

    def apply(self, root: torch.Tensor) -> bool: ...

    def fallback(self) -> AbstractContextManager[Any]: ...


GRAPH_RULE: ContextVar[GraphRule | None] = ContextVar("fastxai_graph_rule", default=None)
"""The rule every target gradient of this context is taken with (None: PyTorch's backward)."""


def _target_scores(run: Callable[[], torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """``f_target`` of ``run()``'s output [N], with the context's ``GRAPH_RULE`` on its graph."""
    scores = run().gather(1, target.view(-1, 1)).squeeze(1)
    rule = GRAPH_RULE.get()
    if rule is not None and not rule.apply(scores):
        with rule.fallback():
            scores = run().gather(1, target.view(-1, 1)).squeeze(1)
    return scores


def _target_gradients(
    run: Callable[[], torch.Tensor], leaves: Sequence[torch.Tensor], target: torch.Tensor
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Gradients of ``f_target`` w.r.t. ``leaves`` (zeros for a leaf the output does not use)."""
    with torch.enable_grad():
        scores = _target_scores(run, target)
        grads = torch.autograd.grad(scores.sum(), list(leaves), allow_unused=True, materialize_grads=True)
    return tuple(grads), scores.detach()


class InputSite:
    """Attributions w.r.t. the model's input: the points are the model's inputs."""

    def __init__(self, forward: RowForward) -> None:
        self.forward = forward
        self.origin = forward.inputs[0].detach().contiguous()

    def prepare(self, chunk: int) -> None:
        """Nothing to compute: the origin is the input."""

    def gradients(
        self, points: torch.Tensor, rows: Rows, count: int, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``d f_target / d points`` and ``f_target(points)``, points [count * n, *F]."""
        leaf = points.detach().requires_grad_(True)
        (grads,), scores = _target_gradients(
            lambda: self.forward.logits(rows, count, (leaf,)), [leaf], target
        )
        return grads, scores

    def scores(self, points: torch.Tensor, rows: Rows, count: int, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.forward.logits(rows, count, (points,)).gather(1, target.view(-1, 1)).squeeze(1)

    def check_target(self) -> None:
        """Check a target ``resolve_target`` left to the first model pass (``RowForward.logits``)
        now, on one row: a compiled step calls the model without that check."""
        if self.forward.unchecked_target is not None:
            with torch.no_grad():
                self.forward.logits(slice(0, 1), 1)


def point_gradients(
    model: Callable[..., Any],
    dtype: torch.dtype | None,
    points: torch.Tensor,
    target: torch.Tensor,
    kwargs: dict[str, Any],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``d f_target / d points`` and ``f_target(points)`` [N], as ``InputSite.gradients`` gives
    them for ``model(points, **kwargs)`` (under autocast ``dtype``), by ``torch.func.grad``: the
    form a compiled step (``_compile.Step``) traces, where ``torch.autograd.grad`` breaks the graph.
    ``target`` indexes the flattened output; ``kwargs`` are the model batch's (``RowForward.extras``)."""

    def total(leaf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with _precision.autocast(dtype, leaf.device.type):
            output = _model.flat_outputs(lambda head: model(head, **kwargs), leaf)
        scores = output.gather(1, target.view(-1, 1)).squeeze(1)
        return scores.sum(), scores

    grads, scores = torch.func.grad(total, has_aux=True)(points)
    return grads, scores.detach()


def check_graph(
    site: Site | None, cuda_graph: object, inputs: torch.Tensor, compile_backend: str | None
) -> bool:
    """``cuda_graph=`` of a gradient method (``_graphs.check_cuda_graph``): like ``compile=``,
    the graphed step takes attributions at the input."""
    graphed = _graphs.check_cuda_graph(cuda_graph, inputs, compile_backend)
    if graphed and site is not None and not isinstance(site, InputSite):
        raise ValueError(
            "cuda_graph=True graphs the step of attributions at the input; with layer= the model runs "
            "with hooks on the layer: pass cuda_graph=False"
        )
    return graphed


def check_compile(site: Site | None, compile: object) -> str | None:
    """``compile=`` of a gradient method (``_compile.check_compile``): the compiled step takes
    attributions at the input (``site`` an ``InputSite``; None when the method has no layer)."""
    backend = _compile.check_compile(compile)
    if backend is not None and site is not None and not isinstance(site, InputSite):
        raise ValueError(
            "compile=True compiles the step of attributions at the input; with layer= the model runs "
            "with hooks on the layer, uncompiled: pass compile=False"
        )
    return backend


class LayerSite:
    """Attributions w.r.t. the outputs (or inputs) of layers; ``prepare`` captures the origin."""

    def __init__(
        self,
        forward: RowForward,
        layers: Sequence[nn.Module],
        to_input: bool = False,
        *,
        one_tensor: bool = False,
    ) -> None:
        witness = sequence_witness(forward.plain, forward.inputs[0])
        self.forward, self.slots = forward, Slots(layers, to_input, witness)
        self.one_tensor = one_tensor  # the functional API returns one tensor [B, *A]
        self._origin: torch.Tensor | None = None

    @property
    def origin(self) -> torch.Tensor:
        if self._origin is None:
            raise RuntimeError("LayerSite.prepare must run (inside the model's state guard) first")
        return self._origin

    def prepare(self, chunk: int) -> None:
        if self._origin is None:
            self._origin = self.activations(None, chunk)
            self._check_one_tensor()

    def _check_one_tensor(self) -> None:
        if self.one_tensor and len(self.slots.shapes) > 1:
            raise ValueError(
                f"layer outputs {len(self.slots.shapes)} tensors; layer= takes a layer with one output "
                "tensor (fastxai.compat.captum's layer classes take tuple outputs)"
            )

    def activations(self, inputs: Sequence[torch.Tensor] | None, chunk: int) -> torch.Tensor:
        """The layer values for the batch's inputs, or for other inputs of as many rows (the
        baselines' token ids), in chunks: [N, *A] (flattened for several tensors)."""
        rows_total = self.forward.batch if inputs is None else inputs[0].shape[0]
        if inputs is not None and rows_total != self.forward.batch and self.forward.has_per_example:
            raise ValueError(
                f"{rows_total} baseline inputs for {self.forward.batch} examples with per-example "
                "model arguments: give one baseline per example, or baselines in the layer's output space"
            )
        parts = []
        for start in range(0, rows_total, chunk):
            rows = slice(start, start + chunk)
            own = None if inputs is None else tuple(tensor[rows] for tensor in inputs)
            model, head = self.forward.bound(rows, 1, own)
            with torch.no_grad(), self.slots.hooked("capture", stop=True, batch=head.shape[0], ids=head):
                model(head)
            parts.append(self.slots.flatten(self.slots.collected()))
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def gradients(
        self, points: torch.Tensor, rows: Rows, count: int, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The model on the rows' inputs with the layer values replaced by ``points``
        [count * n, *A]: ``d f_target / d points`` and the scores."""
        leaf = points.detach().requires_grad_(True)

        def run() -> torch.Tensor:
            with self.slots.hooked("replace", self.slots.unflatten(leaf)):
                output = self.forward.logits(rows, count)
            self.slots.collected()
            return output

        (grads,), scores = _target_gradients(run, [leaf], target)
        return grads, scores

    def scores(self, points: torch.Tensor, rows: Rows, count: int, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self.slots.hooked("replace", self.slots.unflatten(points)):
            return self.forward.logits(rows, count).gather(1, target.view(-1, 1)).squeeze(1)

    def gradients_and_activations(
        self, rows: Rows, count: int, target: torch.Tensor, inputs: Sequence[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One forward and backward on the rows' inputs (or ``inputs``): the gradient at the
        layer, the layer values (flattened alike) and the scores."""
        taken: list[torch.Tensor] = []
        head: torch.Tensor | None
        if inputs is not None:
            batch, head = inputs[0].shape[0], inputs[0]
        else:
            own = self.forward.inputs[0]
            batch = count * (len(range(own.shape[0])[rows]) if isinstance(rows, slice) else rows.numel())
            # The ids only matter in the pass that finds the layer's batch axis.
            head = repeat_rows(own, rows, count) if len(self.slots.axes) < len(self.slots.layers) else None

        def run() -> torch.Tensor:
            with self.slots.hooked("grad", batch=batch, ids=head):
                output = self.forward.logits(rows, count, inputs)
            taken[:] = self.slots.collected()
            self._check_one_tensor()
            return output

        with torch.enable_grad():
            scores = _target_scores(run, target)
            grads = torch.autograd.grad(scores.sum(), taken, allow_unused=True, materialize_grads=True)
        return self.slots.flatten(grads), self.slots.flatten([t.detach() for t in taken]), scores.detach()


Site = InputSite | LayerSite


class PathSite(Protocol):
    """What a path integral needs of a site (``InputSite``, ``LayerSite``, or paths over their
    rows): the origin [N, *A], and the gradients and scores at points of rows."""

    @property
    def origin(self) -> torch.Tensor: ...

    def gradients(
        self, points: torch.Tensor, rows: Rows, count: int, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def scores(self, points: torch.Tensor, rows: Rows, count: int, target: torch.Tensor) -> torch.Tensor: ...


def site_for(
    model: Model, inputs: Any, layer: object, forward_kwargs: object, dtype: object = None
) -> tuple[Site, torch.Tensor]:
    """The site of a functional method: the input, or ``layer``'s output. Integer inputs take
    the model's input embedding when ``layer`` is None (refused, naming ``layer=``, when the
    model has none). At a layer a compiled model runs as its original module (its hooks go on
    that module's layers; ``_compile``). ``dtype``: the model's precision (``_precision``).
    Returns (site, checked inputs)."""
    kwargs = check_forward_kwargs(forward_kwargs)
    if layer is None and isinstance(inputs, torch.Tensor) and is_integer(inputs):
        model = _compile.original(model)
        layer = input_embedding(model)
    inputs = _model.check_inputs(inputs, allow_integer=layer is not None, layer_option=True)
    checked_dtype = _precision.check_dtype(dtype, inputs.device)
    if layer is None:
        return InputSite(RowForward(model, (inputs,), (), kwargs, dtype=checked_dtype)), inputs
    model = _compile.original(model)
    forward = RowForward(model, (inputs,), (), kwargs, dtype=checked_dtype)
    return LayerSite(forward, [resolve_layer(model, layer)], one_tensor=True), inputs


def check_layer_baselines(baselines: object, inputs: torch.Tensor) -> None:
    """Type checks that need no model call: token ids only for integer inputs."""
    if isinstance(baselines, bool):
        raise TypeError("baselines must be a number or a tensor, got bool")
    integer_ids = isinstance(baselines, int) or (
        isinstance(baselines, torch.Tensor) and is_integer(baselines)
    )
    if integer_ids and isinstance(baselines, torch.Tensor) and not is_integer(inputs):
        raise TypeError(
            f"baselines is an integer tensor ({baselines.dtype}) but inputs are {inputs.dtype}: token-id "
            "baselines go with token-id inputs; give a float tensor in the layer's output space"
        )


def token_id_baselines(baselines: object, inputs: torch.Tensor) -> torch.Tensor | None:
    """For integer inputs: an int (a pad id) or an integer tensor of ids ([B, *F], [1, *F] or
    [*F]) as ids [B, *F]; None when ``baselines`` are values in the layer's output space."""
    if not is_integer(inputs):
        return None
    if isinstance(baselines, int) and not isinstance(baselines, bool):
        return torch.full_like(inputs, baselines)
    if isinstance(baselines, torch.Tensor) and is_integer(baselines):
        shape = tuple(inputs.shape)
        ids = baselines.unsqueeze(0) if baselines.dim() == inputs.dim() - 1 else baselines
        fits = ids.dim() == inputs.dim() and tuple(ids.shape[1:]) == shape[1:]
        if not fits or ids.shape[0] not in (1, shape[0]):
            raise ValueError(
                f"token-id baselines must have shape {shape}, (1, *{shape[1:]}) or {shape[1:]}, "
                f"got {tuple(baselines.shape)}"
            )
        return ids.to(inputs.device).expand(shape)
    return None


def layer_distribution(
    site: LayerSite, baselines: torch.Tensor, inputs: torch.Tensor, chunk: int
) -> torch.Tensor:
    """Baselines to draw from at a layer: K token-id sequences [K, *F] (integer inputs) as their
    layer values through forward passes, or values in the layer's output space as given."""
    if not is_integer(baselines):
        return baselines
    return site.activations((token_id_sequences(baselines, inputs),), chunk)


def token_id_background(baselines: object, inputs: torch.Tensor) -> torch.Tensor:
    """The background of token-id inputs: K sequences of ids [K, *F] (one sequence [*F], or an
    int such as the pad id for one baseline of that id everywhere) on the inputs' device."""
    if isinstance(baselines, int) and not isinstance(baselines, bool):
        return torch.full((1, *inputs.shape[1:]), baselines, dtype=inputs.dtype, device=inputs.device)
    if not isinstance(baselines, torch.Tensor) or not is_integer(baselines):
        got = baselines.dtype if isinstance(baselines, torch.Tensor) else type(baselines).__name__
        raise TypeError(
            f"baselines of token-id inputs must be token ids (an integer tensor [K, *F] or an int), got {got}"
        )
    return token_id_sequences(baselines.detach(), inputs).contiguous()


def token_id_sequences(baselines: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """K baseline sequences of token ids [K, *F] (one sequence [*F] as K = 1) for the token ids
    ``inputs`` [B, *F], on their device."""
    ids = baselines.to(inputs.device)
    ids = ids.unsqueeze(0) if ids.dim() == inputs.dim() - 1 else ids
    if ids.dim() != inputs.dim() or ids.shape[1:] != inputs.shape[1:] or ids.shape[0] < 1:
        features = tuple(inputs.shape[1:])
        raise ValueError(
            f"token-id baselines must have shape (K, *{features}) with K >= 1, got {tuple(baselines.shape)}"
        )
    return ids


def chunk_scores(site: PathSite, points: torch.Tensor, target: torch.Tensor, chunk: int) -> torch.Tensor:
    """``f_target`` at points [K, B, *A] (K points per example), in chunks: [K, B]."""
    count_total, batch = points.shape[0], points.shape[1]
    result = torch.empty(count_total, batch, dtype=torch.float64, device=points.device)

    def body(step: int, step_stop: int, row: int, row_stop: int) -> None:
        count = step_stop - step
        block = points[step:step_stop, row:row_stop].reshape(-1, *points.shape[2:])
        values = site.scores(block, slice(row, row_stop), count, target[row:row_stop].repeat(count))
        result[step:step_stop, row:row_stop] = values.view(count, -1).to(torch.float64)

    _scheduling.for_each_block(count_total, batch, chunk, body)
    return result


__all__ = [
    "InputSite",
    "LayerSite",
    "PathSite",
    "RowForward",
    "Rows",
    "Site",
    "check_compile",
    "check_forward_kwargs",
    "check_graph",
    "check_layer_baselines",
    "chunk_scores",
    "input_embedding",
    "is_integer",
    "layer_distribution",
    "point_gradients",
    "repeat_rows",
    "sequence_witness",
    "site_for",
    "token_id_background",
    "token_id_baselines",
    "token_id_sequences",
]
