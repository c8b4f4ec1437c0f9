"""Running a user's model without changing it: state guard, reading its output, targets,
target gradients."""

from __future__ import annotations

import contextlib
import math
import operator
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from fastxai._compile import original
from fastxai._output import output_tensor

Model = Callable[[torch.Tensor], torch.Tensor]


def check_model(model: object) -> Model:
    if not callable(model):
        raise TypeError(
            f"model must be an nn.Module or a callable returning logits, got {type(model).__name__}"
        )
    return model


_HOOK_ATTRIBUTES = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
# Hugging Face transformers installs its output-capturing hooks (attentions, hidden states) on the
# first forward that asks for them and marks the model with this flag; when that first forward
# runs inside ``preserved_state``, the hooks are removed after it and the flag must go too, or
# the model would never install them again and silently return no attentions.
_LAZY_HOOK_FLAGS = ("_output_capturing_hooks_installed",)


# One re-entrant lock per model (by id, dropped when the model is collected): the state guards
# hold it for the whole call, so calls on one model from several threads run one after another
# (each sees the model in eval mode, with only its own hooks, and the last one out restores what
# the first one found), while calls on different models run in parallel.
_MODEL_LOCKS: dict[int, tuple[weakref.ref[nn.Module], threading.RLock]] = {}
_MODEL_LOCKS_GUARD = threading.Lock()


def _forget_lock(reference: weakref.ref[nn.Module], key: int) -> None:
    # runs when the model is collected, possibly while this thread holds the guard: no lock here
    entry = _MODEL_LOCKS.get(key)
    if entry is not None and entry[0] is reference:
        _MODEL_LOCKS.pop(key, None)


def model_lock(model: nn.Module) -> threading.RLock:
    """The re-entrant lock that serialises fastxai's calls on ``model`` across threads."""
    entry = _MODEL_LOCKS.get(id(model))
    if entry is not None and entry[0]() is model:
        return entry[1]
    with _MODEL_LOCKS_GUARD:
        entry = _MODEL_LOCKS.get(id(model))
        if entry is None or entry[0]() is not model:
            key = id(model)
            entry = (weakref.ref(model, lambda reference: _forget_lock(reference, key)), threading.RLock())
            _MODEL_LOCKS[key] = entry
        return entry[1]


@contextlib.contextmanager
def preserved_state(model: Model, *, eval_mode: bool = True) -> Iterator[None]:
    """Run a block with the model in eval mode and frozen parameters, then put back exactly
    what was there: every submodule's ``training`` flag, every parameter's ``requires_grad``,
    and the hook dictionaries (hooks a method adds are removed even if it raises).

    Cheap on the common path (it runs once per method call, also for models whose forward
    pass takes well under a millisecond): only non-empty hook dictionaries are copied, only
    parameters that require gradients are touched, and ``eval()`` is skipped when no module
    is training.

    Thread-safe per model: the block holds the model's re-entrant lock (``model_lock``), so a
    second thread's call on the same model waits for this one (nested guards in one thread do
    not); a plain callable is not guarded. A compiled model (``torch.compile(model)``) holds the
    lock of the module it wraps: both change the same submodules.
    """
    if not isinstance(model, nn.Module):
        yield
        return
    with model_lock(original(model)):
        yield from _preserved(model, eval_mode)


def submodules(model: nn.Module) -> list[nn.Module]:
    """Every module of ``model`` once, itself first (``model.modules()`` as a list, breadth
    first, without its recursive generator walk: a third of the cost on a 35-module ResNet)."""
    found = [model]
    seen = {id(model)}
    index = 0
    while index < len(found):
        for child in found[index]._modules.values():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                found.append(child)
        index += 1
    return found


def _restore_training(modules: list[nn.Module], training: list[bool]) -> None:
    """Put back each module's ``training`` flag, writing only those that changed
    (``nn.Module.__setattr__`` costs about 1 us a module; reading the flag is free)."""
    for module, flag in zip(modules, training, strict=True):
        if module.training != flag:
            module.training = flag


def _preserved(model: nn.Module, eval_mode: bool) -> Iterator[None]:
    # This runs on every method call, also for models whose forward pass takes tens of
    # microseconds: one comprehension per kind of state, and the hook dictionaries walked again
    # at the end only when a hook was registered inside the block.
    modules = submodules(model)
    states = [module.__dict__ for module in modules]
    training = [module.training for module in modules]
    # the parameters that require gradients, each once (a shared parameter is listed by every
    # module that holds it; tensors hash by identity)
    frozen = list(
        dict.fromkeys(
            parameter
            for state in states
            for parameter in state.get("_parameters", {}).values()
            if parameter is not None and parameter.requires_grad
        )
    )
    saved = [
        (entries, dict(entries))
        for state in states
        for attr in _HOOK_ATTRIBUTES
        if (entries := state.get(attr))
    ]
    flagged = {id(state) for state in states for marker in _LAZY_HOOK_FLAGS if marker in state}
    # Every hook registration (module, tensor or global) takes the next handle id: when the
    # counter has not moved, no hook was added anywhere, and only the dictionaries that held
    # hooks at the start can have lost one.
    first_id = RemovableHandle.next_id
    # Run as found (the Captum-shaped classes keep train mode, as Captum does): a training
    # BatchNorm then normalises with batch statistics, as it should, but also folds them into its
    # running statistics; those are put back so the call leaves the model as found.
    statistics = [] if eval_mode else _running_statistics(modules)
    try:
        if eval_mode and any(training):
            model.eval()
        for parameter in frozen:
            parameter.requires_grad_(False)
        yield
    finally:
        _restore_training(modules, training)
        if RemovableHandle.next_id != first_id:
            _drop_new_hooks(states, {id(entries) for entries, _ in saved}, flagged)
        for entries, before in saved:
            if len(entries) != len(before) or entries.keys() != before.keys():
                entries.clear()
                entries.update(before)
        for parameter in frozen:
            parameter.requires_grad_(True)
        _restore_statistics(statistics)


def _drop_new_hooks(states: list[dict[str, Any]], held: set[int], flagged: set[int]) -> None:
    """Empty every hook dictionary that was empty when the block began (ids of the others in
    ``held``; ``_preserved`` puts those back), and drop the lazy-hook flags set since then
    (``flagged``: the ids of the module dictionaries that had one)."""
    for state in states:
        for attr in _HOOK_ATTRIBUTES:
            current = state.get(attr)
            if current and id(current) not in held:
                current.clear()
        if id(state) not in flagged:
            for marker in _LAZY_HOOK_FLAGS:
                if marker in state:
                    del state[marker]  # its hooks were just removed: let the library reinstall them


def _running_statistics(modules: list[nn.Module]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(buffer, copy) for the running statistics of every training norm layer that tracks them."""
    return [
        (tensor, tensor.detach().clone())
        for module in modules
        if module.training
        and isinstance(module, nn.modules.batchnorm._NormBase)
        and module.track_running_stats
        for tensor in (module.running_mean, module.running_var, module.num_batches_tracked)
        if tensor is not None
    ]


def _restore_statistics(statistics: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Copy back what ``_running_statistics`` recorded."""
    if statistics:
        with torch.no_grad():
            for tensor, value in statistics:
                tensor.copy_(value)


@contextlib.contextmanager
def gradient_state(model: Model) -> Iterator[None]:
    """``preserved_state(model, eval_mode=False)`` for work that runs the model in the mode it is
    in, changes no mode or ``requires_grad`` flag, takes gradients with ``torch.autograd.grad``
    with respect to inputs or activations only (no parameter gradient is computed or
    accumulated) and removes every hook it registers itself in a ``finally`` (the one-pass
    classes of the Captum drop-in). Modes, flags and hooks then need no record, so the running
    statistics that a training norm layer folds in are all there is to put back: one walk over
    the modules instead of the full guard's record of every flag and hook, which is most of such
    a call's own cost on a small model. Holds the model's lock like ``preserved_state``.
    """
    if not isinstance(model, nn.Module):
        yield
        return
    with model_lock(original(model)):
        statistics = _running_statistics(submodules(model))
        try:
            yield
        finally:
            _restore_statistics(statistics)


@contextlib.contextmanager
def inference_state(model: Model) -> Iterator[None]:
    """``preserved_state`` for methods that only run the model under ``torch.no_grad`` and add no
    hooks (the perturbation methods): the model is in eval mode during the block and every
    submodule's ``training`` flag is put back after it, also if it raises. Parameters'
    ``requires_grad`` and the hooks are not touched, so there is nothing else to restore; this
    costs one walk over the modules, which matters for models whose forward pass takes well
    under a millisecond. Holds the model's lock like ``preserved_state``.
    """
    if not isinstance(model, nn.Module):
        yield
        return
    with model_lock(original(model)):
        yield from _inference(model)


def _inference(model: nn.Module) -> Iterator[None]:
    training = [module for module in model.modules() if module.training]
    try:
        if training:
            model.eval()
        yield
    finally:
        for module in training:
            module.training = True


def _batch_output(output: Any, inputs: torch.Tensor) -> torch.Tensor:
    """``output_tensor(output)`` checked to be [B, *O] for ``inputs`` [B, ...]; [B] becomes [B, 1]."""
    if not isinstance(output, torch.Tensor):
        output = output_tensor(output)
    if output.dim() == 0 or output.shape[0] != inputs.shape[0]:
        raise ValueError(
            f"model must return [batch, classes] (or [batch], or [batch, *dims] with a tuple target) "
            f"for {inputs.shape[0]} inputs, got shape {tuple(output.shape)}"
        )
    return output.unsqueeze(1) if output.dim() == 1 else output


def outputs(model: Model, inputs: torch.Tensor) -> torch.Tensor:
    """Model output as [B, *O] (read by ``output_tensor``; a 1-d output [B] becomes [B, 1])."""
    return _batch_output(model(inputs), inputs)


def logits(model: Model, inputs: torch.Tensor) -> torch.Tensor:
    """Model output as [N, C] (read by ``output_tensor``); a 1-d output [N] is one score per input
    and becomes [N, 1]. For methods that need classes (attacks, predictions)."""
    output = model(inputs)
    if isinstance(output, torch.Tensor) and output.dim() == 2 and output.shape[0] == inputs.shape[0]:
        return output
    output = _batch_output(output, inputs)
    if output.dim() != 2:
        raise ValueError(
            f"model must return [batch, classes] (or [batch]) for {inputs.shape[0]} inputs, got shape "
            f"{tuple(output.shape)}; the attribution methods take such outputs with a tuple target"
        )
    return output


def flat_outputs(model: Model, inputs: torch.Tensor) -> torch.Tensor:
    """Model output [B, *O] flattened to [B, prod(O)], which ``flat_target`` indices index."""
    output = model(inputs)
    if isinstance(output, torch.Tensor) and output.dim() == 2 and output.shape[0] == inputs.shape[0]:
        return output
    return _batch_output(output, inputs).reshape(inputs.shape[0], -1)


def check_target(target: object, batch: int, device: torch.device) -> torch.Tensor | None:
    """Normalise ``target`` to a LongTensor: [B] class indices, or [B, k] indices into an output
    [B, *O] with ``k = len(O)`` dimensions after the batch (Captum's forms):

    - an int, or a 0-d / one-element tensor: that class for every sample;
    - a list or a [B] tensor of ints: one class per sample;
    - a tuple of ints ``(t, v)``: the element ``output[b, t, v]`` of every sample;
    - a list of B such tuples, or a [B, k] tensor: one element per sample.

    None stays None (the predicted class is used). The ranges, and that ``k`` fits the output,
    are checked once the output's shape is known (``flat_target``).
    """
    if target is None:
        return None
    if isinstance(target, (bool, str, bytes, float)):
        raise TypeError(
            f"target must be an int, a tuple, a tensor of class indices or None, got {type(target).__name__} "
            f"{target!r}"
        )
    if isinstance(target, int):
        return torch.full((batch,), target, dtype=torch.long, device=device)
    if isinstance(target, tuple):
        index = _index_tuple(target, "target")
        return torch.tensor(index, dtype=torch.long, device=device).expand(batch, len(index))
    if isinstance(target, list) and any(isinstance(item, tuple) for item in target):
        rows = [_index_tuple(item, f"target[{i}]") for i, item in enumerate(target)]
        if len(rows) != batch or len({len(row) for row in rows}) != 1:
            raise ValueError(
                f"a target list of tuples needs one tuple per example ({batch}), all of one length; "
                f"got lengths {[len(row) for row in rows]}"
            )
        return torch.tensor(rows, dtype=torch.long, device=device)
    tensor = torch.as_tensor(target, device=device) if not isinstance(target, torch.Tensor) else target
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise TypeError(f"target must hold integer class indices, got {tensor.dtype}")
    if tensor.dim() == 0 or tensor.shape == (1,):
        tensor = tensor.reshape(()).expand(batch)  # one index for every sample, as Captum reads it
    if tensor.shape != (batch,) and not (tensor.dim() == 2 and tensor.shape[0] == batch and tensor.shape[1]):
        raise ValueError(
            f"target must be an int or have shape ({batch},) (or ({batch}, k) for outputs with k dims "
            f"after the batch), got {tuple(tensor.shape)}"
        )
    return tensor.to(device=device, dtype=torch.long)


def _index_tuple(item: object, name: str) -> tuple[int, ...]:
    if not isinstance(item, tuple) or not item:
        raise TypeError(f"{name} must be a non-empty tuple of ints, got {item!r}")
    try:
        if any(isinstance(index, bool) for index in item):
            raise TypeError
        return tuple(operator.index(index) for index in item)
    except TypeError:
        raise TypeError(f"{name} must be a tuple of ints, got {item!r}") from None


def check_target_range(target: torch.Tensor, classes: int) -> None:
    if target.dim() == 2:
        if target.shape[1] != 1:
            raise ValueError(
                f"target has {target.shape[1]} indices per example, but the model output has one "
                "dim after the batch ([batch, classes])"
            )
        target = target[:, 0]
    if not target.numel():
        return
    extremes = torch.aminmax(target)
    low, high = int(extremes.min), int(extremes.max)
    if low < 0 or high >= classes:
        raise ValueError(
            f"target must be in [0, {classes}) for a model with {classes} outputs, "
            f"got values in [{low}, {high}]"
        )


def flat_target(target: torch.Tensor | None, shape: Sequence[int]) -> torch.Tensor | None:
    """``target`` from ``check_target`` as [B] indices into the output [B, *O] flattened to
    [B, prod(O)] (``flat_outputs``), for ``shape = O``; ranges checked. None (the predicted
    class) needs O = (C,)."""
    dims = len(shape)
    if target is None or target.dim() == 1 or (dims == 1 and target.shape[1] == 1):
        if dims != 1:
            given = "target=None (the predicted class)" if target is None else "a class index per example"
            raise ValueError(
                f"{given} needs a [batch, classes] output; the model returns [batch, "
                f"{', '.join(map(str, shape))}]: give target as a tuple of {dims} indices "
                "(or a list of tuples, one per example)"
            )
        if target is not None:
            check_target_range(target, shape[0])
            return target.view(-1)
        return None
    if target.shape[1] != dims:
        raise ValueError(
            f"target has {target.shape[1]} indices per example, the model output has {dims} dims "
            f"after the batch: [batch, {', '.join(map(str, shape))}]"
        )
    low, high = target.amin(0).tolist(), target.amax(0).tolist()
    for dim, size in enumerate(shape):
        if low[dim] < 0 or high[dim] >= size:
            raise ValueError(
                f"target index {dim} must be in [0, {size}) for a model output [batch, "
                f"{', '.join(map(str, shape))}], got values in [{low[dim]}, {high[dim]}]"
            )
    strides = torch.tensor(
        [math.prod(shape[dim + 1 :]) for dim in range(dims)], dtype=torch.long, device=target.device
    )
    return (target * strides).sum(1)


def resolve_target(
    model: Model, inputs: torch.Tensor, target: torch.Tensor | None, chunk_size: int
) -> torch.Tensor:
    """Per-sample indices into ``flat_outputs``; None means the predicted class. Checks the
    target against the output's shape (read off one input's output when the target is given)."""
    with torch.no_grad():
        if target is not None:
            resolved = flat_target(target, outputs(model, inputs[:1]).shape[1:])
            assert resolved is not None
            return resolved
        predictions = []
        for start in range(0, inputs.shape[0], chunk_size):
            output = outputs(model, inputs[start : start + chunk_size])
            if output.dim() != 2:
                flat_target(None, output.shape[1:])  # raises: no predicted class
            predictions.append(output.argmax(dim=1))
    return torch.cat(predictions)


def target_gradients(
    model: Model, inputs: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of ``f_target`` w.r.t. each input, and the target scores: ([N, *F], [N]);
    ``target`` indexes ``flat_outputs`` (``resolve_target``)."""
    leaf = inputs.detach().requires_grad_(True)
    with torch.enable_grad():
        scores = flat_outputs(model, leaf).gather(1, target.view(-1, 1)).squeeze(1)
        (grads,) = torch.autograd.grad(scores.sum(), leaf)
    return grads, scores.detach()


def target_scores(model: Model, inputs: torch.Tensor, target: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """``f_target(inputs)`` without gradients, in chunks: [N]; ``target`` as in ``target_gradients``."""
    with torch.no_grad():
        return torch.cat(
            [
                flat_outputs(model, inputs[start : start + chunk_size])
                .gather(1, target[start : start + chunk_size].view(-1, 1))
                .squeeze(1)
                for start in range(0, inputs.shape[0], chunk_size)
            ]
        )


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether no element is NaN or infinite: a finite sum proves it in one cheap reduction;
    only when the sum is not finite (a NaN, an infinity, or an overflow) are elements checked.

    The sum runs in the tensor's own dtype (float32 for half types, which overflow early):
    a float64 sum of a float32 tensor is a conversion loop PyTorch does not vectorise, 35x
    slower than the float32 sum on a [64, 3, 224, 224] batch (40 vs 1.2 ms on one thread).
    """
    low_precision = tensor.dtype in (torch.float16, torch.bfloat16)
    total = tensor.sum(dtype=torch.float32) if low_precision else tensor.sum()
    if math.isfinite(total.item()):
        return True
    return bool(torch.isfinite(tensor).all())


def check_inputs(inputs: Any, *, allow_integer: bool = False, layer_option: bool = False) -> torch.Tensor:
    """Inputs must be a tensor [B, ...] with B >= 1: floating point with no NaN or infinity, or,
    with ``allow_integer`` (attribution at a layer), integer (token ids, which never get gradients).

    ``layer_option`` says the method takes ``layer=``: the error for integer inputs then names it.
    """
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    integer = not inputs.is_floating_point() and not inputs.is_complex() and inputs.dtype != torch.bool
    if not inputs.is_floating_point() and not (integer and allow_integer):
        hint = (
            "; integer inputs (token ids) need layer= (attributions at a layer, e.g. the embedding)"
            if integer and layer_option
            else ""
        )
        raise TypeError(f"inputs must be a floating-point tensor, got {inputs.dtype}{hint}")
    if inputs.dim() < 1 or inputs.shape[0] < 1:
        raise ValueError(f"inputs must be [batch, ...] with batch >= 1, got shape {tuple(inputs.shape)}")
    if inputs.device.type == "meta":
        raise ValueError(
            "inputs are on the meta device (shapes without values); move them to 'cpu' or 'cuda'"
        )
    if inputs.is_floating_point() and not all_finite(inputs):
        raise ValueError("inputs contain NaN or infinity")
    return inputs
