"""``LRP``: captum.attr.LRP's shape on ``fastxai.lrp``.

    from fastxai.compat._captum_lrp import LRP
    attributions = LRP(model).attribute(x, target=y)

Captum's semantics: the relevance of the target output, ``R = f_target(x)``, goes back through
every module by its rule and through everything else (``x + y``, ``torch.cat``, ``x.view``,
``F.relu``) as a gradient, ``R_in = J^T R``, and where a tensor feeds a layer, what reaches
it that way is multiplied by it, as Captum's input hook multiplies the summed gradient (on a
residual skip from a layer's input). These are ``fastxai.lrp.lrp(functional="gradient")``;
``LRP(model, functional="lrp")`` gives those steps fastxai's conserving rules instead. Side by
side with Captum: its test_lrp.py passes, and torchvision's resnet18 agrees to 1.4e-7 relative
in float64 (float32 results of epsilon 1e-9 are noisy in both).
Default rules: epsilon (1e-9) for Linear, Conv, average, adaptive average and max pooling (max
pooling's epsilon step gives all relevance to the maximum) and BatchNorm (its own step, not
merged into the layer before it); ReLU, Tanh and Dropout pass relevance on unchanged. Rules set
as ``module.rule`` map to ``fastxai.lrp.rules`` (see its docstring for the formulas):
``EpsilonRule`` -> ``Epsilon``, ``IdentityRule`` -> ``Pass``, ``GammaRule`` and
``Alpha1_Beta0_Rule`` -> their one-term forms ``z = L(a; W + gamma W+, b)`` and
``z = L(a; W+, b)``; a fastxai rule is accepted as it is. The model runs in the mode it is in (a
Dropout in training mode drops). ``target``: an int or tuple indexes every sample's output
(``output[:, *target]``, any output shape); a [B] tensor or list picks one class per sample of a
[B, C] output; None takes the predicted class. Tuple inputs each get their relevance;
``additional_forward_args`` are constants of the traced graph.

Like Captum: ``module.rule`` that is not a rule raises TypeError in the constructor; a torch.nn
leaf module with no rule and no default (e.g. Sigmoid) raises TypeError, also when forward does
not call it (``rule = IdentityRule()`` passes relevance through it); a layer with a rule called
twice in one forward raises RuntimeError; ``attribute_future`` raises NotImplementedError.
Unlike Captum: the model is never modified (no ``rule`` is written onto its modules, nothing is
hooked), it is traced with torch.fx (``forward``'s optional arguments keep their defaults; a
forward branching on tensor values cannot be traced and raises ``UnsupportedLayerError``, a
TypeError), Conv1d/3d, BatchNorm1d/3d, 1-d/3-d pooling, Flatten and Identity have defaults
too, a custom rule class (a subclass of Captum's rules) raises NotImplementedError, and a
BatchNorm in training mode raises ValueError.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fastxai.compat._captum_attribution import GradientAttribution
from fastxai.compat._captum_inputs import PackedInputs
from fastxai.lrp import _graph, core
from fastxai.lrp._linear import BATCHNORM_TYPES, LINEAR_TYPES
from fastxai.lrp.composites import Composite
from fastxai.lrp.rules import Epsilon, Group, Modifier, Pass, Rule, Term

CAPTUM_EPSILON = 1e-9
_NONLINEAR = (nn.ReLU, nn.Dropout, nn.Tanh)  # Captum passes relevance through these, whatever their rule
_POOLS = (*_graph.AVGPOOL_MODULES, *_graph.ADAPTIVE_AVGPOOL_MODULES, *_graph.MAXPOOL_MODULES)
_DEFAULT_EPSILON = (*LINEAR_TYPES, *BATCHNORM_TYPES, *_POOLS)
_PLUMBING = (nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


class CaptumRule(Rule):
    """Captum's ``GammaRule`` / ``Alpha1_Beta0_Rule``: the layer with modified weights ``W'``
    (``weight``, a ``fastxai.lrp.rules.Modifier``) on the unsplit input ``a``, its bias as it is
    (``bias=False``: dropped, Captum's ``set_bias_to_zero``):
    ``R_in = a * L^T(R / (z + eps sign0(z)); W')`` with ``z = L(a; W', b)``."""

    def __init__(self, weight: Modifier, bias: bool, stabilizer: float = CAPTUM_EPSILON) -> None:
        self.weight = weight
        self.bias = bias
        self.stabilizer = float(stabilizer)

    def groups(self) -> tuple[Group, ...]:
        return (Group((Term("a", self.weight, ("id",) if self.bias else None),)),)


def _captum_rules() -> Any:
    try:
        from captum.attr._utils import lrp_rules
    except ImportError:  # Captum absent: no module.rule can be one of its rules
        return None
    return lrp_rules


def _check_rule(name: str, module: nn.Module) -> None:
    """Captum's constructor check: ``module.rule`` is None, a Captum rule (or a fastxai rule)."""
    rule = getattr(module, "rule", None)
    if rule is None or isinstance(rule, Rule):
        return
    rules = _captum_rules()
    if rules is None or not isinstance(rule, rules.PropagationRule):
        raise TypeError(
            f"module {name!r}: rule must be a Captum PropagationRule (or a fastxai.lrp.rules rule), "
            f"got {type(rule).__name__}"
        )


def _translate(name: str, module: nn.Module, rule: Any) -> Rule | None:
    """The fastxai rule for a Captum rule set on ``module`` (None: the default)."""
    if _is_torch_leaf(module) and not isinstance(module, (*_DEFAULT_EPSILON, *_graph.ACTIVATION_MODULES)):
        raise NotImplementedError(
            f"fastxai.compat LRP: a rule on {name!r} ({type(module).__name__}) is not honoured: "
            "rules apply to Linear, Conv, BatchNorm, pooling and element-wise activations"
        )
    if isinstance(rule, Rule):
        return rule
    if isinstance(module, _NONLINEAR):
        return None
    rules = _captum_rules()
    kind = type(rule)
    if kind is rules.IdentityRule:
        return Pass()
    if kind is rules.EpsilonRule:
        return Epsilon(float(rule.STABILITY_FACTOR))
    if kind is rules.GammaRule:
        gamma = ("gamma", float(rule.gamma), "pos")
        return CaptumRule(gamma, not rule.set_bias_to_zero, float(rule.STABILITY_FACTOR))
    if kind is rules.Alpha1_Beta0_Rule:
        return CaptumRule(("pos",), not rule.set_bias_to_zero, float(rule.STABILITY_FACTOR))
    raise NotImplementedError(
        f"fastxai.compat LRP: rule {kind.__name__} on {name!r} is not one of Captum's EpsilonRule, "
        "IdentityRule, GammaRule, Alpha1_Beta0_Rule; write it as a fastxai.lrp.rules rule"
    )


def _is_torch_leaf(module: nn.Module) -> bool:
    return next(module.children(), None) is None and type(module).__module__.startswith("torch.nn")


def _is_addition_module(module: nn.Module) -> bool:
    """Captum's ``Addition_Module`` has the epsilon rule by default."""
    kind = type(module)
    return kind.__name__ == "Addition_Module" and kind.__module__.startswith("captum.")


class _Bound(nn.Module):
    """``model(*inputs, *extra)`` as one module torch.fx traces from a single input, returning the
    target's outputs as [N, K]. With several inputs that input is their flat concatenation
    [B, n_1 + n_2 + ...], sliced and reshaped back in the graph; the extra arguments are
    constants of the trace (tensors among them become attributes of this wrapper, never of the
    model), and the optional arguments of ``forward`` keep their defaults; ``index`` (an int or
    tuple target) selects ``output[:, *index]`` in the graph; ``keep_shape`` returns the output
    [N, *O] as it is (a list of tuples indexes it per sample), else it is flattened to [N, K]."""

    def __init__(
        self,
        model: nn.Module,
        packed: PackedInputs | None,
        extra: tuple[Any, ...],
        index: tuple[int, ...] | None,
        keep_shape: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.extra = extra
        self.index = index
        self.keep_shape = keep_shape
        self.shapes = [] if packed is None else packed.shapes
        self.spans = [] if packed is None else packed.spans

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not self.shapes:
            output = self.model(inputs, *self.extra)
        else:
            parts = [
                inputs[:, start:stop].reshape(-1, *shape)
                for (start, stop), shape in zip(self.spans, self.shapes, strict=True)
            ]
            output = self.model(*parts, *self.extra)
        if self.index is not None:
            output = output[(slice(None), *self.index)]
        elif self.keep_shape:
            return output  # [N, *O], for a list of tuples (one index of O per sample)
        return output.reshape(output.shape[0], -1)


class LRP(GradientAttribution):
    """Layer-wise relevance propagation with Captum's constructor and ``attribute``.

    ``functional`` (fastxai's keyword): ``"gradient"`` (Captum's numbers) sends relevance through
    torch functions and tensor methods as a gradient, so a residual ``x + y`` gives both summands
    all of it and ``x * 2`` between layers counts the 2 twice; ``"lrp"`` gives them fastxai's
    rules (``x + y`` splits relevance in proportion to the summands, a product with a constant
    passes it on), which conserve relevance on residual networks."""

    def __init__(self, model: nn.Module, functional: str = "gradient") -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if functional not in core.FUNCTIONAL_MODES:
            raise ValueError(f"functional must be one of {core.FUNCTIONAL_MODES}, got {functional!r}")
        super().__init__(model)
        self.model = model
        self.functional = functional
        self.backend: str | None = None
        self._cached: tuple[Any, Composite] | None = None
        self._wrappers: dict[Any, _Bound] = {}
        for name, module in model.named_modules():
            _check_rule(name, module)

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    def has_convergence_delta(self) -> bool:
        return True

    def attribute_future(self, *args: Any, **kwargs: Any) -> Any:
        """Not implemented for LRP, as in Captum."""
        raise NotImplementedError("attribute_future is not implemented for LRP")

    def _rules(self, verbose: bool) -> dict[str, Rule]:
        """The rule of every module that has one set (checked as Captum checks: a torch.nn leaf
        module without a rule or a default raises TypeError)."""
        found: dict[str, Rule] = {}
        for name, module in self.model.named_modules():
            _check_rule(name, module)
            rule = getattr(module, "rule", None)
            translated = _translate(name, module, rule) if rule is not None else None
            if translated is None and _is_addition_module(module):
                translated = Epsilon(CAPTUM_EPSILON)
            if translated is not None:
                found[name] = translated
            elif _is_torch_leaf(module) and not isinstance(
                module, (*_DEFAULT_EPSILON, *_NONLINEAR, *_PLUMBING)
            ):
                raise TypeError(
                    f"Module {name!r} of type {type(module).__name__} has no rule defined and no default "
                    "rule exists for this module type; set module.rule (e.g. IdentityRule() to pass "
                    "relevance through it)"
                )
            if verbose and (translated is not None or isinstance(module, _DEFAULT_EPSILON)):
                print(f"Applied {translated or Epsilon(CAPTUM_EPSILON)} on layer {module}")
        return found

    def _composite(self, rules: dict[str, Rule], prefix: str) -> Composite:
        """Captum's defaults plus the rules set on modules; the same object while those rules stay
        the same (fastxai.lrp caches its plan per composite). ``prefix``: the model's name
        inside the wrapper, prepended to the module names."""
        signature = (prefix, tuple((name, repr(rule)) for name, rule in rules.items()))
        if self._cached is not None and self._cached[0] == signature:
            return self._cached[1]
        names = {".".join(filter(None, (prefix, name))): rule for name, rule in rules.items()}
        epsilon = Epsilon(CAPTUM_EPSILON)
        composite = Composite([(_DEFAULT_EPSILON, epsilon)], (), names, stabilizer=CAPTUM_EPSILON)
        self._cached = signature, composite
        return composite

    def _wrapper(
        self, packed: PackedInputs | None, extra: tuple[Any, ...], index: Any, keep_shape: bool
    ) -> _Bound:
        """A wrapper kept (with its trace) per target index and training flags when there is one
        input and no extra argument; a fresh one (traced again) otherwise."""
        if packed is not None or extra:
            return _Bound(self.model, packed, extra, index, keep_shape)
        key = (index, keep_shape, tuple(module.training for module in self.model.modules()))
        if key not in self._wrappers:
            if len(self._wrappers) >= 8:
                self._wrappers.clear()
            self._wrappers[key] = _Bound(self.model, None, (), index, keep_shape)
        return self._wrappers[key]

    def attribute(
        self,
        inputs: torch.Tensor | tuple[torch.Tensor, ...],
        target: Any = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        verbose: bool = False,
    ) -> Any:
        """Relevance of every input element for the target output, [B, *F] (a tuple of them for
        tuple inputs); with ``return_convergence_delta`` also ``f_target(x) - sum(R)`` per
        sample, [B] (Captum's completeness check, summed over all inputs)."""
        if not isinstance(return_convergence_delta, bool):
            raise TypeError("return_convergence_delta must be a bool")
        if not isinstance(verbose, bool):
            raise TypeError("verbose must be a bool")
        relevance, layers, packed, _ = self._relevances(
            inputs, target, additional_forward_args, return_convergence_delta, verbose
        )
        # a tuple comes back as a tuple (of one, or split from the flat input)
        result = relevance if packed is None else packed.format(relevance.reshape(relevance.shape[0], -1))
        if not return_convergence_delta:
            return result
        output = next(reversed(layers.values())).flatten(1).sum(1)  # the target outputs, [N]
        return result, self.compute_convergence_delta(result, output.to(relevance.dtype))

    def _relevances(
        self, inputs: Any, target: Any, additional_forward_args: Any, keep_layers: bool, verbose: bool
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], PackedInputs | None, _Bound]:
        """The input relevance, ``{node name: relevance of its output}`` (with ``keep_layers``;
        the model's modules named ``model.<name>``, the last entry the target outputs), the
        packing of tuple inputs and the traced wrapper (``LayerLRP`` finds its layers in it)."""
        index, per_sample = _split_target(target)
        rules = self._rules(verbose)
        extra = () if additional_forward_args is None else additional_forward_args
        extra = extra if isinstance(extra, tuple) else (extra,)
        packed = PackedInputs(inputs) if isinstance(inputs, tuple) else None
        several = packed is not None and len(packed.shapes) > 1
        x: Any = inputs if packed is None else (packed.flat if several else inputs[0])
        tuples = isinstance(per_sample, list) and any(isinstance(item, tuple) for item in per_sample)
        model = self._wrapper(packed if several else None, extra, index, tuples)
        _check_reuse(model, rules)
        whole = (several or extra) and isinstance(x, torch.Tensor) and x.dim()
        chunk_size = max(1, x.shape[0]) if whole else None  # the extra arguments hold every row
        eval_mode = not any(module.training for module in self.model.modules())
        both: Any = core.lrp(
            model, x, per_sample, composite=self._composite(rules, "model"), merge_batchnorm=False,
            chunk_size=chunk_size, return_layer_relevances=keep_layers, backend=self.backend,
            eval_mode=eval_mode, functional=self.functional,
        )  # fmt: skip
        relevance, layers = both if keep_layers else (both, {})
        return relevance, layers, packed, model

    def compute_convergence_delta(  # type: ignore[override]  # Captum's LRP takes (attributions, output)
        self, attributions: Any, output: torch.Tensor
    ) -> torch.Tensor:
        """``output - sum(attributions)`` per sample, over every input of a tuple (Captum's
        completeness check; zero where relevance is conserved)."""
        parts = attributions if isinstance(attributions, tuple) else (attributions,)
        total = torch.stack([part.flatten(1).sum(1) for part in parts]).sum(0)
        return output.flatten() - total.flatten()


def _split_target(target: Any) -> tuple[tuple[int, ...] | None, Any]:
    """Captum's target as (an index of every sample's output, selected in the graph) or (None, a
    per-sample target for ``fastxai.lrp``)."""
    if target is None or isinstance(target, bool):
        return None, target  # bool: fastxai.lrp raises the TypeError
    if isinstance(target, int):
        return (target,), None
    if isinstance(target, tuple):
        if not all(isinstance(part, int) and not isinstance(part, bool) for part in target):
            raise TypeError(f"target as a tuple must hold ints (an index of the output), got {target!r}")
        return target, None
    if isinstance(target, torch.Tensor) and target.numel() == 1 and not target.is_floating_point():
        return (int(target.item()),), None
    return None, target  # a list of tuples too: one element of [B, *O] per sample (fastxai.lrp)


def _check_reuse(model: nn.Module, rules: dict[str, Rule]) -> None:
    """Captum's LRP refuses a layer with a rule that forward calls more than once (its hooks
    keep one input per layer; fastxai.lrp itself handles reuse)."""
    calls: dict[str, int] = {}
    for node in _graph.trace(model).nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    for target, count in calls.items():
        name = target.removeprefix("model.")
        module = _graph.fetch_attr(model, target)
        if count > 1 and (name in rules or isinstance(module, _DEFAULT_EPSILON)):
            raise RuntimeError(
                f"Module {name!r} is being used more than once in the network, which is not "
                "supported by Captum's LRP; use fastxai.lrp, which supports it"
            )
