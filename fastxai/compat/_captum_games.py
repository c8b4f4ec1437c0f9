"""What Captum's perturbation classes share, on fastxai's batched methods: Captum's inputs
(tensors or tuples, integer and bool tensors included), its forward functions (a score per
example, or one aggregated over the batch: a Python number, a 0-d tensor, ``[1]``, ``[1, K]``),
its chunking knob and progress bar.

Two ways to run a method, chosen from one forward pass over the inputs (Captum runs it too):

- **per example** (the common case: ``[B]``, ``[B, 1]``, or ``[B, C]`` with a target): the
  fastxai method attributes every example's score, ``[B, *F]``, as fast as it can;
- **over the batch** (Captum's "aggregate" mode, and ``target=None`` on an output with several
  numbers per example): the forward's output, flattened to ``K`` numbers, is a function of the
  whole batch, and each of them is attributed to every element of the batch. The batch becomes
  one virtual example ``[1, B * N]`` (its mask and baselines likewise), so a perturbation
  changes every example at once, as in Captum, and the method runs once per output number
  (``K`` is small in practice; the forward passes are shared: a replayed call reuses the
  recorded outputs). A forward that aggregates is called once per perturbed copy of the batch,
  which is all that an aggregate allows. Captum's *sparse inputs*, a tuple whose tensors differ
  in rows (an index list ``[L]`` beside a dense batch ``[B, F]``), are attributed this way only:
  the tuple is the virtual example, an element of ``F_k`` one feature across its tensor's rows.

Integer and bool inputs are attributed as floats; the forward function receives each perturbed
input in the dtype Captum would build, ``torch.result_type(input, baseline)`` (integers stay
integers when the baseline is one). Attributions come back in Captum's dtype: the output's for
the ablation classes (``int64`` for an integer-valued forward, rounded), float otherwise.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import torch

from fastxai.compat._captum_inputs import PackedForward, PackedInputs, chunk_rows
from fastxai.compat._captum_targets import CaptumTypeError, check_int_at_least, select_target
from fastxai.compat.captum import Attribution, check_target


class AggregateOutputError(ValueError, AssertionError):
    """A forward that aggregates the batch cannot score several copies per call (Captum raises
    AssertionError; fastxai's bad-input convention is ValueError: this is both)."""


class FutureUsageError(TypeError, AssertionError):
    """``attribute`` on a forward returning futures, or ``attribute_future`` on one that does not
    (Captum raises AssertionError)."""


class Progress:
    """Captum's ``show_progress``: a tqdm bar ``"<Name> attribution"`` counting perturbed copies
    of the batch scored, completed at the end (so it reads 100%)."""

    def __init__(self, show: object, name: str) -> None:
        self.bar: Any = None
        if show:
            from tqdm.auto import tqdm

            self.bar = tqdm(desc=f"{name} attribution", unit="evals", total=None)

    def update(self, count: int) -> None:
        if self.bar is not None:
            self.bar.update(count)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.total = max(self.bar.n, 1)
            self.bar.n = self.bar.total
            self.bar.refresh()
            self.bar.close()


def _float_dtype(tensors: tuple[torch.Tensor, ...]) -> torch.dtype:
    floats = [t.dtype for t in tensors if t.is_floating_point()]
    if not floats:
        return torch.get_default_dtype()
    if all(d == floats[0] for d in floats):
        return floats[0]
    raise TypeError(f"every floating-point input must share one dtype, got {sorted(set(map(str, floats)))}")


def _as_number_or_float(value: Any, dtype: torch.dtype) -> Any:
    """A baseline entry as the methods take it: numbers as float, tensors as ``dtype``."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, torch.Tensor) and not value.is_floating_point():
        return value.to(dtype)
    return value


def parse_output(output: object, *, futures: bool) -> torch.Tensor:
    """Captum's forward outputs as a tensor: a Future (only under ``attribute_future``), a
    Python int or float (int64 / float64, Captum's reading), or a tensor."""
    if isinstance(output, torch.futures.Future):
        if not futures:
            raise FutureUsageError("forward_func returned a Future: call attribute_future, not attribute")
        output = output.wait()
    elif futures:
        raise FutureUsageError("attribute_future needs a forward_func that returns a torch.futures.Future")
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, bool) or not isinstance(output, (int, float)):
        raise TypeError(f"forward_func must return a tensor, an int or a float, got {type(output).__name__}")
    return torch.tensor(output, dtype=torch.int64 if isinstance(output, int) else torch.float64)


class Game:
    """One ``attribute`` call's inputs, forward function and output mode (see the module doc)."""

    def __init__(
        self,
        owner: PerturbationAttribution,
        inputs: Any,
        baselines: Any,
        target: Any,
        additional_forward_args: Any,
        perturbations_per_eval: object,
        show_progress: object,
    ) -> None:
        self.per_eval = check_int_at_least(perturbations_per_eval, "perturbations_per_eval", 1)
        self.target = check_target(target)
        self.futures = owner._futures
        self.owner_forward = owner.forward_func
        self.progress = Progress(show_progress, owner.progress_name)
        self.is_tuple = isinstance(inputs, tuple)
        originals = inputs if self.is_tuple else (inputs,)
        for index, tensor in enumerate(originals):
            if not isinstance(tensor, torch.Tensor):
                label = f"inputs[{index}]" if self.is_tuple else "inputs"
                raise TypeError(f"{label} must be a torch.Tensor, got {type(tensor).__name__}")
        self.dtype = _float_dtype(originals)
        floats = tuple(t if t.is_floating_point() else t.to(self.dtype) for t in originals)
        self.baselines = self._float_baselines(baselines)
        # Captum's sparse inputs: a tuple whose tensors have different numbers of rows (an index
        # list beside a dense batch) can only be scored by a forward that aggregates them all; the
        # tuple is then one virtual example, each tensor a [1, R_k, *F_k] slice of it
        self.ragged = (
            self.is_tuple and all(t.dim() >= 1 for t in floats) and len({t.shape[0] for t in floats}) > 1
        )
        self.row_counts = [t.shape[0] for t in floats] if self.ragged else []
        if self.ragged:
            self.baselines = self._ragged_baselines(self.baselines, floats)
            floats = tuple(t.unsqueeze(0) for t in floats)
        self.inputs = floats if self.is_tuple else floats[0]
        # the dtype each input reaches the forward in: Captum's input * keep + baseline * (1 - keep)
        base_list = baselines if isinstance(baselines, tuple) else (baselines,) * len(originals)
        self.model_dtypes = [
            t.dtype if b is None else torch.result_type(t, b)
            for t, b in zip(originals, base_list, strict=False)
        ]
        self.packed = PackedInputs(self.inputs)
        forward = self._ragged_forward if self.ragged else self._cast_forward
        self.forward = PackedForward(self.packed, forward, additional_forward_args)
        self.aggregates = False

    def start(self) -> None:
        """The forward pass over the inputs that tells the output mode (after every argument check)."""
        self.output = select_target(self._evaluate(self.packed.flat), self.target)
        if self.ragged:
            if self.output.dim() >= 1 and self.output.shape[0] != 1:
                raise AggregateOutputError(
                    f"inputs have {self.row_counts} rows: a tuple whose tensors differ in rows (Captum's "
                    "sparse inputs) needs a forward_func that aggregates them (a number, [1] or [1, K]); "
                    f"it returned {tuple(self.output.shape)}"
                )
            self.per_example = self.scales = False  # one virtual example, scored copy by copy
            self.forward.calls = 0
            return
        batch = self.packed.batch
        # whether the output has rows per example (a batch of one cannot tell: tried, see batch_model)
        self.scales = self.output.dim() >= 1 and self.output.shape[0] == batch
        self.per_example = (
            self.output.dim() >= 1
            and self.output.shape[0] == batch
            and (self.target is not None or self.output.numel() == batch)
        )
        if not self.per_example and self.per_eval > 1 and not self.scales:
            raise AggregateOutputError(
                "perturbations_per_eval must be 1 when forward_func aggregates the batch: its output "
                f"for {batch} examples has shape {tuple(self.output.shape)}, not one score per example"
            )
        self.forward.calls = 0  # the class-count probe of a one-row call is allowed again

    def _float_baselines(self, baselines: Any) -> Any:
        parts = baselines if isinstance(baselines, tuple) else (baselines,)
        for index, part in enumerate(parts):
            if part is not None and not isinstance(part, (int, float, torch.Tensor)):
                # Captum's perturbation classes take no callable either (ProductBaselines is
                # for LLMAttribution's text templates): refused before torch meets the object.
                label = f"baselines[{index}]" if isinstance(baselines, tuple) else "baselines"
                raise CaptumTypeError(f"{label} must be a number or a tensor, got {type(part).__name__}")
        if isinstance(baselines, tuple):
            return tuple(_as_number_or_float(b, self.dtype) for b in baselines)
        return _as_number_or_float(baselines, self.dtype)

    def _ragged_baselines(self, baselines: Any, floats: tuple[torch.Tensor, ...]) -> Any:
        """Sparse inputs' baselines: numbers as given, a tensor broadcast to its input's
        ``[R_k, *F_k]`` as the virtual example's ``[1, R_k, *F_k]``."""
        if not isinstance(baselines, tuple):
            return baselines
        parts = []
        for index, (part, tensor) in enumerate(zip(baselines, floats, strict=False)):
            if isinstance(part, torch.Tensor):
                try:
                    part = torch.broadcast_to(part, tensor.shape)
                except RuntimeError:
                    raise ValueError(
                        f"baselines[{index}] has shape {tuple(part.shape)}, which does not broadcast to "
                        f"inputs[{index}]'s {tuple(tensor.shape)}"
                    ) from None
                part = part.unsqueeze(0)
            parts.append(part)
        return (*parts, *baselines[len(parts) :])

    def feature_mask(self, feature_mask: Any, keep_ids: bool) -> torch.Tensor | None:
        """``flat_feature_mask`` of this call's inputs. For sparse inputs (``ragged``) a group is
        a set of elements of ``F_k`` across all ``R_k`` rows, as in Captum: a mask must broadcast to
        ``(1, *F_k)``, and without one each element of ``F_k`` is a group."""
        if not self.ragged:
            return flat_feature_mask(self.packed, feature_mask, keep_ids)
        shapes = [shape[1:] for shape in self.packed.shapes]
        if feature_mask is None:
            offsets = [0, *itertools.accumulate(math.prod(shape) for shape in shapes)]
            feature_mask = tuple(
                torch.arange(start, stop, device=self.packed.device).reshape(1, *shape)
                for start, stop, shape in zip(offsets, offsets[1:], shapes, strict=False)
            )
        elif isinstance(feature_mask, tuple):
            for index, (part, shape) in enumerate(zip(feature_mask, shapes, strict=False)):
                if isinstance(part, torch.Tensor) and part.dim() == len(shape) + 1 and part.shape[0] != 1:
                    raise ValueError(
                        f"feature_mask[{index}] has {part.shape[0]} rows; with inputs of different row "
                        f"counts {self.row_counts} a group spans all rows: its shape must be {shape} or "
                        f"(1, *{shape})"
                    )
        return flat_feature_mask(self.packed, feature_mask, keep_ids)

    def user_parts(self, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Flat rows ``[K, N]`` as per-input tensors ``[K, *F_k]`` (sparse inputs: ``[K, *F_k]``
        from the first of each input's rows, which all carry the same attributions; zeros for an
        input without rows)."""
        parts = self.packed.unpack(rows)
        if not self.ragged:
            return parts
        return tuple(
            part[:, 0] if count > 0 else part.new_zeros(part.shape[0], *part.shape[2:])
            for part, count in zip(parts, self.row_counts, strict=True)
        )

    def user_inputs(self, row: torch.Tensor) -> Any:
        """One flat row (an example, or the virtual batch) in the user's form: the forward's inputs."""
        parts = self.packed.unpack(row.reshape(-1, self.packed.features))
        if self.ragged:
            parts = tuple(part[0] for part in parts)
        return parts if self.is_tuple else parts[0]

    def _ragged_forward(self, *args: Any) -> Any:
        count = len(self.model_dtypes)
        if any(part.shape[0] != 1 for part in args[:count]):  # sparse inputs are scored copy by copy
            raise AssertionError("sparse inputs reached the forward with several copies at once")
        return self._cast_forward(*(part[0] for part in args[:count]), *args[count:])

    def _cast_forward(self, *args: Any) -> Any:
        count = len(self.model_dtypes)
        parts = [
            part if part.dtype == dtype else part.to(dtype)
            for part, dtype in zip(args[:count], self.model_dtypes, strict=True)
        ]
        return self.owner_forward(*parts, *args[count:])

    def _evaluate(self, flat: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return parse_output(self.forward(flat), futures=self.futures)

    def chunk_size(self) -> int | None:
        """Captum's default ``perturbations_per_eval=1`` is fastxai's automatic chunking; a larger
        value is a ceiling on the copies of the batch per forward pass."""
        whole = self.forward.has_per_example_args
        if self.per_eval == 1:
            return chunk_rows(None, self.packed.flat, whole_batches=whole, forward_only=True)
        return self.per_eval * self.packed.batch

    # per-example mode ---------------------------------------------------------------------------

    def model(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The forward on flat rows ``[R, N]`` returning ``[R]`` or ``[R, C]`` (per-example mode)."""
        batch = self.packed.batch

        def model(flat: torch.Tensor) -> torch.Tensor:
            rows = flat.shape[0]
            self.progress.update(max(1, rows // batch))
            if not self.aggregates:
                output = parse_output(self.forward(flat), futures=self.futures)
                if rows == 1 or (output.dim() >= 1 and output.shape[0] == rows):
                    return output
                if batch > 1 or self.per_eval > 1:
                    raise AggregateOutputError(
                        f"forward_func returned {tuple(output.shape)} for {rows} rows: it must return one "
                        f"score per row when called on several copies of the {batch} examples"
                    )
                # one example, and a forward that aggregates its batch: score copy by copy
                self.aggregates = True
            return torch.cat(
                [
                    parse_output(self.forward(row), futures=self.futures).reshape(1, -1)
                    for row in flat.split(1)
                ]
            )

        return model

    # whole-batch mode ---------------------------------------------------------------------------

    def virtual(self, flat: torch.Tensor | float) -> torch.Tensor | float:
        """A per-example companion ``[1 or B, N]`` (baselines, masks) as the virtual example's row."""
        if not isinstance(flat, torch.Tensor):
            return flat
        return flat.expand(self.packed.batch, -1).reshape(1, -1)

    def batch_model(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The forward on virtual rows ``[R, B * N]`` (each a perturbed batch) returning ``[R, K]``:
        the selected output of every perturbed batch, flattened; forward passes replayed when a
        later run asks for the very same rows."""
        batch, features = self.packed.batch, self.packed.features
        records: list[tuple[torch.Tensor, torch.Tensor]] = []
        position = [0]

        def score(rows: torch.Tensor) -> torch.Tensor:
            if self.scales:
                output = select_target(self._evaluate(rows.reshape(-1, features)), self.target)
                if output.dim() >= 1 and output.shape[0] == rows.shape[0] * batch:
                    return output.reshape(rows.shape[0], -1)
                if batch > 1 or self.per_eval > 1:
                    raise AggregateOutputError(
                        f"forward_func returned {tuple(output.shape)} for {rows.shape[0] * batch} rows "
                        f"({rows.shape[0]} copies of the batch): its output must grow with the batch"
                    )
                self.scales = False  # one example, and a forward that aggregates: copy by copy
            outputs = [select_target(self._evaluate(row.view(batch, features)), self.target) for row in rows]
            return torch.stack([output.reshape(-1) for output in outputs])

        def model(rows: torch.Tensor) -> torch.Tensor:
            index = position[0]
            position[0] += 1
            if index < len(records) and torch.equal(records[index][0], rows):
                return records[index][1]
            output = score(rows)
            self.progress.update(rows.shape[0])
            records.append((rows.clone(), output))
            return output

        def rewind() -> None:
            position[0] = 0

        model.rewind = rewind  # type: ignore[attr-defined]
        return model

    def over_batch(
        self, method: Callable[..., torch.Tensor], mask: torch.Tensor | None, **options: Any
    ) -> torch.Tensor:
        """``method`` on the whole batch as one example, once per output number: ``[K, N]`` (or
        ``[K, M]`` when the method returns group values), row ``k`` for output ``k``: the
        attribution of the example output ``k`` belongs to when the output holds whole rows per
        example, else of example 0. Without a mask, element i is one feature across the batch
        (Captum's default), so every example's row is the same for an aggregate."""
        batch = self.packed.batch
        count = self.output.numel()
        model = self.batch_model()
        if mask is None:  # Captum's default: element i is one feature across the whole batch
            mask = torch.arange(self.packed.features, device=self.packed.device).view(1, -1)
        virtual_mask = self.virtual(mask)
        per_row = self.scales and count % batch == 0
        rows = []
        for k in range(count):
            model.rewind()  # type: ignore[attr-defined]
            result = method(model, self.packed.flat.reshape(1, -1), k, feature_mask=virtual_mask, **options)
            if options.get("return_input_shape", True):
                result = result.view(batch, -1)[k // (count // batch) if per_row else 0]
            rows.append(result.reshape(-1))
        return torch.stack(rows)


class PerturbationAttribution(Attribution):
    """Base of the perturbation classes: ``attribute_future`` (for the classes whose Captum
    counterpart has it), Captum's properties, one ``Game`` per call."""

    progress_name = "Perturbation"
    supports_future = False
    _futures = False  # also for subclasses whose __init__ goes another way (NeuronFeatureAblation)

    def __init__(self, forward_func: Callable[..., Any]) -> None:
        # explicit, not super(): Captum's own ShapleyValues calls ShapleyValueSampling.__init__ on itself
        Attribution.__init__(self, forward_func)
        self._futures = False

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    def attribute_future(self, *args: Any, **kwargs: Any) -> torch.futures.Future:
        """Captum's ``attribute_future``: the forward returns futures; the result is a completed
        future. A forward that returns plain tensors raises ``AssertionError`` here, as in Captum."""
        if not self.supports_future:
            raise NotImplementedError(
                f"{type(self).__name__}.attribute_future is not implemented (as in Captum)"
            )
        self._futures = True
        try:
            future = super().attribute_future(*args, **kwargs)
        finally:
            self._futures = False
        try:
            future.value()
        except FutureUsageError:
            raise
        except Exception:
            pass
        return future

    def _call(self, function: Callable[[], Any], game: Game) -> Any:
        try:
            return self._run(function)
        finally:
            game.progress.close()


def flat_baselines(packed: PackedInputs, inputs: Any, baselines: Any) -> torch.Tensor | float:
    """Captum's baselines (None, a number, a tensor, or a tuple like the inputs) as fastxai's:
    0.0, a number, or one flat row per example or for all ``[1 or B, N]``."""
    from fastxai.attribution.integrated_gradients import check_baselines

    if baselines is None:
        return 0.0
    if isinstance(baselines, (int, float)) and not packed.is_tuple:
        return float(baselines)
    if not packed.is_tuple and isinstance(baselines, torch.Tensor):
        if baselines.dim() == 0:
            return float(baselines)
        # one tensor: Captum's broadcasting rules for a baseline of that input
        return check_baselines(baselines, inputs).reshape(packed.batch, -1)
    flat = packed.pack(baselines, name="baselines")
    if flat.shape[0] not in (1, packed.batch):
        raise ValueError(
            f"baselines must have 1 or {packed.batch} rows (one per example), got {flat.shape[0]}"
        )
    return flat


def flat_feature_mask(packed: PackedInputs, feature_mask: Any, keep_ids: bool) -> torch.Tensor | None:
    """Captum's mask (a tensor or tuple like the inputs; fewer dims broadcast, 0-d is one group
    for the whole input) as one flat mask ``[1 or B, N]``, ids renumbered to 0..M-1 (with
    ``keep_ids`` they must already be)."""
    if feature_mask is None:
        return None
    parts = feature_mask if isinstance(feature_mask, tuple) else (feature_mask,)
    if len(parts) != len(packed.shapes):
        raise ValueError(f"feature_mask must have {len(packed.shapes)} entries like inputs, got {len(parts)}")
    flat_parts = []
    for index, (part, shape) in enumerate(zip(parts, packed.shapes, strict=True)):
        label = f"feature_mask[{index}]" if packed.is_tuple else "feature_mask"
        if not isinstance(part, torch.Tensor):
            raise TypeError(f"{label} must be an integer torch.Tensor, got {type(part).__name__}")
        if part.is_floating_point() or part.is_complex() or part.dtype == torch.bool:
            raise TypeError(f"{label} must hold integer group ids, got {part.dtype}")
        if part.dim() <= len(shape):
            part = part.reshape((1,) * (len(shape) + 1 - part.dim()) + tuple(part.shape))
        try:
            rows = part.shape[0] if part.dim() == len(shape) + 1 else -1
            if rows not in (1, packed.batch):
                raise RuntimeError
            expanded = part.expand(rows, *shape)
        except RuntimeError:
            raise ValueError(
                f"{label} must have shape {shape}, (1, *{shape}) or ({packed.batch}, *{shape}), "
                f"size-1 dims broadcasting; got {tuple(part.shape)}"
            ) from None
        flat_parts.append(expanded.reshape(rows, -1).to(device=packed.device, dtype=torch.int64))
    rows = max(part.shape[0] for part in flat_parts)
    mask = torch.cat([part.expand(rows, -1) for part in flat_parts], dim=1)
    ids, renumbered = torch.unique(mask, return_inverse=True)
    if int(ids[0]) < 0:
        raise ValueError(f"feature_mask ids must be >= 0, got {int(ids[0])}")
    if ids.numel() != int(ids[-1]) + 1:
        if keep_ids:
            raise ValueError(
                "feature_mask ids must be 0..M-1 without gaps when return_input_shape=False "
                f"(got {ids.numel()} distinct ids up to {int(ids[-1])})"
            )
        mask = renumbered
    return mask


def output_dtype(output: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Attributions in the output's dtype, as Captum's ablation classes give them (rounded for
    an integer-valued forward)."""
    if output.is_floating_point():
        return values.to(output.dtype)
    if output.dtype == torch.bool:
        return values.to(torch.float32)
    return values.round().to(output.dtype)
