"""A faithfulness table: for each attribution method, deletion and insertion AUC against a random
ordering of the same features, with the time each method took.

>>> rows = faithfulness_table(model, x, y, {"saliency": lambda m, x, t: fx.saliency(m, x, t)})
>>> print(markdown(rows))
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from fastxai._checks import check_count
from fastxai._model import Model
from fastxai.evaluation.faithfulness import deletion, insertion, random_attributions

Explainer = Callable[[Model, torch.Tensor, torch.Tensor], torch.Tensor]


def faithfulness_table(
    model: Model,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    methods: Mapping[str, Explainer | torch.Tensor],
    *,
    n_steps: int = 16,
    replacement: str = "zero",
    random_seeds: int = 5,
    chunk_size: int | None = None,
) -> list[dict[str, Any]]:
    """One row per method plus a ``random`` row (the mean over ``random_seeds`` random
    orderings): deletion AUC (lower is better), insertion AUC (higher is better, from the same
    ``replacement``), and the fraction of samples on which the method's deletion AUC is below
    the random ordering's (``beats_random``).

    ``methods`` maps a name to an explainer ``(model, inputs, targets) -> attributions`` (timed:
    ``seconds``) or to attributions already computed for these inputs and targets (shape of the
    inputs; ``seconds`` is NaN), e.g. read back from ``fastxai.attribute_dataset``'s output."""
    check_count("random_seeds", random_seeds)
    for name, explain in methods.items():
        if isinstance(explain, torch.Tensor) and explain.shape != inputs.shape:
            raise ValueError(
                f"attributions of {name!r} must have the inputs' shape {tuple(inputs.shape)}, "
                f"got {tuple(explain.shape)}"
            )
    curve_kwargs: dict[str, Any] = {
        "n_steps": n_steps,
        "replacement": replacement,
        "chunk_size": chunk_size,
        "score": "probability",
    }
    random_deletion = torch.stack(
        [
            deletion(model, inputs, random_attributions(inputs, seed), targets, **curve_kwargs).auc
            for seed in range(random_seeds)
        ]
    ).mean(dim=0)
    random_insertion = torch.stack(
        [
            insertion(model, inputs, random_attributions(inputs, seed), targets, **curve_kwargs).auc
            for seed in range(random_seeds)
        ]
    ).mean(dim=0)
    rows = []
    for name, explain in methods.items():
        started = time.perf_counter()
        if isinstance(explain, torch.Tensor):
            attributions, seconds = explain, float("nan")
        else:
            attributions = explain(model, inputs, targets).detach()
            seconds = time.perf_counter() - started
        deleted = deletion(model, inputs, attributions, targets, **curve_kwargs).auc
        inserted = insertion(model, inputs, attributions, targets, **curve_kwargs).auc
        rows.append(
            {
                "method": name,
                "deletion_auc": float(deleted.mean()),
                "insertion_auc": float(inserted.mean()),
                "beats_random": float((deleted < random_deletion).float().mean()),
                "seconds": seconds,
            }
        )
    rows.append(
        {
            "method": f"random ordering (mean of {random_seeds})",
            "deletion_auc": float(random_deletion.mean()),
            "insertion_auc": float(random_insertion.mean()),
            "beats_random": float("nan"),
            "seconds": float("nan"),
        }
    )
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows of :func:`faithfulness_table` as a Markdown table."""
    lines = [
        "| method | deletion AUC (lower is better) | insertion AUC (higher is better) "
        "| samples where deletion beats random | time (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        beats = "" if row["beats_random"] != row["beats_random"] else f"{100 * row['beats_random']:.0f}%"
        seconds = "" if row["seconds"] != row["seconds"] else f"{row['seconds']:.2f}"
        lines.append(
            f"| {row['method']} | {row['deletion_auc']:.3f} | {row['insertion_auc']:.3f} "
            f"| {beats} | {seconds} |"
        )
    return "\n".join(lines)
