"""TCAV: how much a class's prediction is sensitive to a human concept (Kim et al. 2018)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from fastxai import _compile, _model, _precision, _scheduling
from fastxai._model import Model
from fastxai.global_views import _layers, _stats
from fastxai.global_views.cav import CAV, CLASSIFIERS, check_regularization, train_cav

SCORES = ("sign_count", "magnitude")
MIN_RANDOM_CONCEPTS = 3
"""Random sets needed for the significance test: with fewer, the random-vs-random CAVs are the
same pair of sets in both orders and the null distribution has no spread to speak of."""


@dataclass(frozen=True)
class TCAVResult:
    """One concept's TCAV scores against each of the R random sets, and their significance.

    scores: [R] the tested score (``score``) of the concept's CAV against random set ``i``;
    random_scores: [R] the same score of the CAV of random set ``i`` against random set
    ``i + 1 (mod R)``, the null distribution; sign_count, magnitude: [R] both kinds of the
    concept's scores; cav_accuracy: [R] each concept CAV's accuracy on held-out examples;
    cavs: the R concept CAVs (``cavs[i]`` against random set ``i``).
    mean, std: of ``scores`` (std with Bessel's correction); p_value: two-sided Student t-test
    of ``scores`` against ``random_scores``; significant: ``p_value < alpha``.
    """

    concept: str
    score: str
    scores: torch.Tensor
    random_scores: torch.Tensor
    sign_count: torch.Tensor
    magnitude: torch.Tensor
    cav_accuracy: torch.Tensor
    cavs: tuple[CAV, ...]
    mean: float
    std: float
    t_statistic: float
    p_value: float
    alpha: float

    @property
    def significant(self) -> bool:
        return not math.isnan(self.p_value) and self.p_value < self.alpha


def _check_examples(name: str, examples: object, inputs: torch.Tensor) -> torch.Tensor:
    if not isinstance(examples, torch.Tensor):
        raise TypeError(f"{name} must be a tensor of examples, got {type(examples).__name__}")
    if examples.dtype != inputs.dtype:
        raise TypeError(f"{name} must have the inputs' dtype {inputs.dtype}, got {examples.dtype}")
    if examples.dim() != inputs.dim() or examples.shape[1:] != inputs.shape[1:] or examples.shape[0] < 1:
        raise ValueError(
            f"{name} must be [n >= 1, {', '.join(map(str, inputs.shape[1:]))}] like the inputs, "
            f"got shape {tuple(examples.shape)}"
        )
    if not _model.all_finite(examples):
        raise ValueError(f"{name} contains NaN or infinity")
    return examples.to(inputs.device)


def _random_sets(
    random_concepts: object,
    random_pool: object,
    random_set_size: object,
    concept_sizes: list[int],
    inputs: torch.Tensor,
    generator: torch.Generator,
) -> list[torch.Tensor]:
    if isinstance(random_concepts, int) and not isinstance(random_concepts, bool):
        if random_concepts < MIN_RANDOM_CONCEPTS:
            raise ValueError(
                f"random_concepts must be >= {MIN_RANDOM_CONCEPTS} for the significance test, "
                f"got {random_concepts}"
            )
        if random_pool is None:
            raise ValueError(
                "random_concepts as an int needs random_pool=, "
                "a tensor of examples to draw the random sets from"
            )
        pool = _check_examples("random_pool", random_pool, inputs)
        size = max(concept_sizes) if random_set_size is None else random_set_size
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= pool.shape[0]:
            raise ValueError(
                f"random_set_size must be an int in [1, {pool.shape[0]}] (the random_pool size), got {size!r}"
                + (" (the largest concept's size by default)" if random_set_size is None else "")
            )
        return [
            pool[torch.randperm(pool.shape[0], generator=generator)[:size].to(pool.device)]
            for _ in range(random_concepts)
        ]
    if random_pool is not None or random_set_size is not None:
        raise ValueError("random_pool and random_set_size are only for random_concepts given as an int")
    if not isinstance(random_concepts, Sequence) or isinstance(random_concepts, (str, torch.Tensor)):
        raise TypeError(
            "random_concepts must be a list of example tensors or an int, "
            f"got {type(random_concepts).__name__}"
        )
    if len(random_concepts) < MIN_RANDOM_CONCEPTS:
        raise ValueError(
            f"random_concepts must hold at least {MIN_RANDOM_CONCEPTS} random sets "
            "for the significance test, "
            f"got {len(random_concepts)}"
        )
    return [_check_examples(f"random_concepts[{i}]", r, inputs) for i, r in enumerate(random_concepts)]


def _held_out(
    count: int, test_fraction: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train rows, test rows) of a set of ``count`` examples; the test rows are all rows when
    nothing is held out (the accuracy is then the training accuracy)."""
    order = torch.randperm(count, generator=generator)
    n_test = int(count * test_fraction)
    return (order[n_test:], order[:n_test]) if n_test else (order, order)


def _scores(derivatives: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sign-count and magnitude TCAV scores of directional derivatives [N, K]: ([K], [K]).

    sign_count = mean_n [S_n > 0]; magnitude = sum_n max(S_n, 0) / sum_n |S_n| (0 when all S_n = 0).
    """
    sign_count = (derivatives > 0).float().mean(0)
    total = derivatives.abs().sum(0)
    magnitude = torch.where(total > 0, derivatives.clamp_min(0).sum(0) / total.clamp_min(1e-30), 0.0)
    return sign_count, magnitude


def tcav(
    model: Model,
    inputs: torch.Tensor,
    target: object = None,
    *,
    layer: object,
    concepts: Mapping[str, torch.Tensor],
    random_concepts: Sequence[torch.Tensor] | int,
    random_pool: torch.Tensor | None = None,
    random_set_size: int | None = None,
    classifier: str = "logistic",
    regularization: float = 1e-2,
    test_fraction: float = 0.2,
    score: str = "sign_count",
    alpha: float = 0.05,
    seed: int = 0,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, TCAVResult]:
    """Testing with Concept Activation Vectors (Kim et al. 2018, ICML).

    For each concept ``C`` and random set ``R_i`` a linear classifier (``train_cav``) separates
    the layer activations ``f_l`` of C's examples from R_i's; its unit normal ``v_{C,i}`` is the
    CAV. The directional derivative of the target logit ``h_k`` along it is
    ``S(x) = grad_{f_l} h_k(f_l(x)) . v_{C,i}``; the TCAV score is ``mean_x [S(x) > 0]``
    (``score="sign_count"``) or ``sum_x max(S, 0) / sum_x |S|`` (``"magnitude"``). The same score of
    CAVs of ``R_i`` against ``R_{i+1 mod R}`` is the null distribution; a two-sided Student t-test
    of the concept's R scores against it gives the p-value.

    All gradients for all CAVs come from one forward+backward per chunk of inputs: a hook makes
    the layer's output a leaf, so the backward pass stops there, and one matrix product projects
    the [N, D] gradients onto every CAV. Activation passes stop at the layer.

    inputs: [N, *F], the examples of the class to explain; target: int, [N] indices or None (the
    predicted class); concepts: name -> [n_c, *F] examples; random_concepts: a list of
    [n_r, *F] example sets (at least 3), or their number, drawn (seeded) from ``random_pool``
    [M, *F] with ``random_set_size`` examples each (default: the largest concept's size).
    ``test_fraction`` of every set is held out of training to measure the CAVs' accuracy.
    Returns concept name -> ``TCAVResult``. ``dtype=torch.bfloat16`` (or ``torch.float16``): every
    model pass runs under autocast in that dtype (``fastxai._precision``); the CAVs are fitted
    to the activations in float32 and the derivatives projected in float32.

    >>> results = fastxai.global_views.tcav(model, x_zebras, target=zebra, layer="layer3",
    ...                                     concepts={"stripes": stripes}, random_concepts=randoms)
    >>> results["stripes"].mean, results["stripes"].p_value
    """
    model = _compile.original(_model.check_model(model))
    inputs = _model.check_inputs(inputs)
    layer_module, layer_name = _layers.resolve_layer(model, layer)
    if classifier not in CLASSIFIERS:
        raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {classifier!r}")
    check_regularization(regularization)
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    for name, value, low, high in (("alpha", alpha, 0.0, 1.0), ("test_fraction", test_fraction, 0.0, 1.0)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < high:
            raise ValueError(f"{name} must be a number in [{low}, {high}), got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if not isinstance(concepts, Mapping) or len(concepts) == 0:
        raise ValueError(f"concepts must be a non-empty dict of name -> example tensor, got {concepts!r:.60}")
    concept_sets = {}
    for name, examples in concepts.items():
        if not isinstance(name, str):
            raise TypeError(f"concepts keys must be names (str), got {name!r}")
        concept_sets[name] = _check_examples(f"concepts[{name!r}]", examples, inputs)
    chunk = _scheduling.auto_chunk_size(_scheduling.check_chunk_size(chunk_size), inputs)
    target_t = _model.check_target(target, inputs.shape[0], inputs.device)
    model_dtype = _precision.check_dtype(dtype, inputs.device)
    scored = _precision.autocast_model(model, model_dtype, inputs.device.type)  # model itself for None
    generator = torch.Generator().manual_seed(seed)
    random_sets = _random_sets(
        random_concepts,
        random_pool,
        random_set_size,
        [c.shape[0] for c in concept_sets.values()],
        inputs,
        generator,
    )

    def activations(examples: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            acts = torch.cat(
                [
                    _layers.layer_output(scored, layer_module, layer_name, examples[s : s + chunk]).flatten(1)
                    for s in range(0, examples.shape[0], chunk)
                ]
            )
        # half-precision activations (``dtype=``): the CAVs fitted in float32
        return acts if model_dtype is None else acts.to(_precision.accumulator_dtype(acts.dtype))

    def split(examples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        train_rows, test_rows = _held_out(examples.shape[0], float(test_fraction), generator)
        acts = activations(examples)
        return acts[train_rows.to(acts.device)], acts[test_rows.to(acts.device)]

    def fit(positive: tuple[torch.Tensor, torch.Tensor], negative: tuple[torch.Tensor, torch.Tensor]) -> CAV:
        return train_cav(positive[0], negative[0], classifier=classifier, regularization=regularization)

    n_random = len(random_sets)
    with _model.preserved_state(model):
        target_t = _model.resolve_target(scored, inputs, target_t, chunk)
        random_acts = [split(examples) for examples in random_sets]
        cavs: list[CAV] = []
        accuracies: list[float] = []
        for examples in concept_sets.values():
            concept_acts = split(examples)
            for negative in random_acts:
                cav = fit(concept_acts, negative)
                cavs.append(cav)
                accuracies.append(cav.accuracy(concept_acts[1], negative[1]))
        cavs.extend(fit(random_acts[i], random_acts[(i + 1) % n_random]) for i in range(n_random))
        vectors = torch.stack([cav.vector for cav in cavs]).to(inputs.device)  # [K, D]
        derivatives = torch.empty(inputs.shape[0], vectors.shape[0], device=inputs.device)

        def body(_s0: int, _s1: int, row: int, row_stop: int) -> None:
            rows = target_t[row:row_stop].view(-1, 1)

            def target_logit(outputs: torch.Tensor) -> torch.Tensor:
                outputs = outputs.unsqueeze(1) if outputs.dim() == 1 else outputs
                return outputs.gather(1, rows).squeeze(1)

            _, _, gradient = _layers.output_and_layer_gradient(
                scored, layer_module, layer_name, inputs[row:row_stop], target_logit
            )
            if gradient[0].numel() != vectors.shape[1]:
                raise ValueError(f"layer {layer_name!r} gives activations of another size for the inputs")
            derivatives[row:row_stop] = gradient.flatten(1).float() @ vectors.T

        _scheduling.for_each_block(1, inputs.shape[0], chunk, body, halve_on_oom=inputs.is_cuda)

    sign_count, magnitude = _scores(derivatives)
    tested = sign_count if score == "sign_count" else magnitude
    null = tested[len(concept_sets) * n_random :]
    results = {}
    for index, name in enumerate(concept_sets):
        block = slice(index * n_random, (index + 1) * n_random)
        t_statistic, p_value = _stats.student_t_test(tested[block].tolist(), null.tolist())
        results[name] = TCAVResult(
            concept=name,
            score=score,
            scores=tested[block].cpu(),
            random_scores=null.cpu(),
            sign_count=sign_count[block].cpu(),
            magnitude=magnitude[block].cpu(),
            cav_accuracy=torch.tensor(accuracies[block]),
            cavs=tuple(cavs[block]),
            mean=float(tested[block].mean()),
            std=float(tested[block].std()),
            t_statistic=t_statistic,
            p_value=p_value,
            alpha=float(alpha),
        )
    return results
