"""Poisoning, backdoor detection and model inversion on the bundled digits CNN: the README figures.

    PYTHONPATH=. .venv/bin/python benchmarks/backdoor.py [--targets 0 3 5 7] [--threads 1]

Per scenario (trigger, poisoning rate) and target class, a digits CNN is trained on the
poisoned training set (15 epochs, seed 0) and the script prints its clean test accuracy, the
attack success rate on triggered test images of the other classes, the precision / recall of
the poisoned training items each detector finds, Neural Cleanse's anomaly index of the target
(and the classes it flags), and the SentiNet-like localisation. Then MI-Face inversion of a
clean model, judged by a second model trained with another seed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import fastxai as fx
from fastxai import backdoor as bd
from fastxai.digits import accuracy, load_digits, train_digits_cnn
from fastxai.evaluation import auroc
from fastxai.privacy import inversion_scores, model_inversion

SCENARIOS = {
    "patch 3x3, 5%": (lambda: bd.patch_trigger((1, 8, 8), size=3), 0.05),
    "blend 0.2, 5%": (lambda: bd.blend_trigger((1, 8, 8), alpha=0.2, seed=1), 0.05),
    "patch 2x2, 10%": (lambda: bd.patch_trigger((1, 8, 8), size=2), 0.10),
}
CONV_LAYER = "6"  # the ReLU after the second convolution, [32, 4, 4], before global pooling


def _input_x_gradient(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return fx.input_x_gradient(model, x, target)


def _grad_cam(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return fx.grad_cam(model, x, target, layer=CONV_LAYER, upsample=True).expand_as(x)


ATTRIBUTIONS = {"saliency": None, "input x gradient": _input_x_gradient, "grad-cam": _grad_cam}


def scenario_rows(name: str, targets: list[int], data: tuple) -> list[dict[str, float]]:
    (x_train, y_train), (x_test, y_test) = data
    make_trigger, rate = SCENARIOS[name]
    trigger = make_trigger()
    rows = []
    for target in targets:
        poisoned = bd.poison_dataset(x_train, y_train, trigger, rate=rate, target=target, seed=0)
        model = train_digits_cnn(poisoned.inputs, poisoned.labels)
        row: dict[str, float] = {
            "target": target,
            "poisoned": len(poisoned.indices),
            "clean accuracy": accuracy(model, x_test, y_test),
            "ASR": bd.attack_success_rate(model, x_test, y_test, trigger, target=target),
        }
        share = len(poisoned.indices) / int((poisoned.labels == target).sum())
        for layer, label in ((None, "penultimate"), (CONV_LAYER, "conv")):
            for classes, scope in ((None, "all"), ([target], "target")):
                found = bd.spectral_signatures(
                    model,
                    poisoned.inputs,
                    poisoned.labels,
                    poison_fraction=share,
                    layer=layer,
                    classes=classes,
                )
                p, r = bd.precision_recall(found.flagged, poisoned.indices)
                row[f"spectral {label} {scope} P"], row[f"spectral {label} {scope} R"] = p, r
            in_class = poisoned.labels == target
            is_poisoned = torch.zeros_like(in_class)
            is_poisoned[poisoned.indices] = True
            scores = found.scores  # of the target class, from the last run
            row[f"spectral {label} AUROC"] = auroc(
                scores[in_class & ~is_poisoned], scores[in_class & is_poisoned]
            )
            for reduction in ("pca", "ica"):
                clusters = bd.activation_clustering(
                    model, poisoned.inputs, poisoned.labels, layer=layer, reduction=reduction
                )
                p, r = bd.precision_recall(clusters.flagged, poisoned.indices)
                row[f"AC {label} {reduction} P"], row[f"AC {label} {reduction} R"] = p, r
                row[f"AC {label} {reduction} classes"] = int(clusters.suspicious.sum())
        start = time.perf_counter()
        cleanse = bd.neural_cleanse(model, x_test[:128], seed=0)
        row["NC seconds"] = time.perf_counter() - start
        row["NC index"] = float(cleanse.anomaly_index[target])
        row["NC flagged target"] = float(target in cleanse.flagged)
        row["NC false flags"] = len([c for c in cleanse.flagged if c != target])
        if trigger.alpha < 1:  # a blend covers the whole image: nothing to localise
            rows.append(row)
            continue
        others = x_test[y_test != target]
        suspects = bd.apply_trigger(others[:64], trigger)
        area = int(trigger.region[0].sum())
        for method, attribution in ATTRIBUTIONS.items():
            found_t = bd.trigger_localisation(model, suspects, x_test[-64:], k=area, attribution=attribution)
            found_c = bd.trigger_localisation(
                model, others[64:128], x_test[-64:], k=area, attribution=attribution
            )
            inside = (found_t.regions & trigger.region).flatten(1).sum(1).double() / (
                area * found_t.regions.shape[1]
            )
            row[f"{method} inside"] = float(inside.mean())
            row[f"{method} flip triggered"] = float(found_t.flip_rate.mean())
            row[f"{method} flip clean"] = float(found_c.flip_rate.mean())
        rows.append(row)
    return rows


def _mean(rows: list[dict[str, float]], key: str) -> float:
    return statistics.fmean(row[key] for row in rows)


def print_scenario(name: str, rows: list[dict[str, float]]) -> None:
    print(f"\n## {name} (targets {[int(r['target']) for r in rows]}, mean over targets)")
    print(
        f"poisoned items {rows[0]['poisoned']:.0f}; clean accuracy {_mean(rows, 'clean accuracy'):.3f} "
        f"(per target {[round(r['clean accuracy'], 3) for r in rows]}); "
        f"ASR {_mean(rows, 'ASR'):.3f} (per target {[round(r['ASR'], 3) for r in rows]})"
    )
    print("| detector | layer | precision | recall | classes flagged |")
    print("|---|---|---:|---:|---:|")
    for label in ("penultimate", "conv"):
        for scope in ("all", "target"):
            key = f"spectral {label} {scope}"
            p, r = _mean(rows, f"{key} P"), _mean(rows, f"{key} R")
            print(f"| spectral signatures ({scope} classes) | {label} | {p:.2f} | {r:.2f} | |")
        area = _mean(rows, f"spectral {label} AUROC")
        print(
            f"| spectral score AUROC, poisoned vs clean items of the target class | {label} "
            f"| {area:.3f} | | |"
        )
        for reduction in ("pca", "ica"):
            key = f"AC {label} {reduction}"
            p, r, flagged = _mean(rows, f"{key} P"), _mean(rows, f"{key} R"), _mean(rows, f"{key} classes")
            print(f"| activation clustering ({reduction}) | {label} | {p:.2f} | {r:.2f} | {flagged:.1f} |")
    print(
        f"Neural Cleanse: target anomaly index {[round(r['NC index'], 2) for r in rows]}, "
        f"target flagged {sum(r['NC flagged target'] for r in rows):.0f}/{len(rows)}, "
        f"other classes flagged {sum(r['NC false flags'] for r in rows):.0f} in all; "
        f"{_mean(rows, 'NC seconds'):.1f} s per model"
    )
    for method in ATTRIBUTIONS:
        if f"{method} inside" not in rows[0]:
            continue
        inside, triggered = _mean(rows, f"{method} inside"), _mean(rows, f"{method} flip triggered")
        clean = _mean(rows, f"{method} flip clean")
        print(
            f"localisation ({method}): share of the region inside the trigger {inside:.2f}, "
            f"flip rate triggered {triggered:.2f} / clean {clean:.2f}"
        )


def inversion_report(data: tuple) -> None:
    (x_train, y_train), _ = data
    model = train_digits_cnn(x_train, y_train, seed=0)
    judge = train_digits_cnn(x_train, y_train, seed=1)
    classes = list(range(10))
    print("\n## model inversion (MI-Face), 10 classes x 4 restarts, judged by a model trained with seed 1")
    print(
        "| variant | queries per image | p_target (attacked model) | judge recognises | nearest class mean | "
        "L2 to class mean | L2 to other means | seconds |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    variants = {
        "gradients, -log p (default)": {},
        "gradients, 1 - p (paper's cost)": {"loss": "probability"},
        "outputs only (gradient estimate, 10 pairs, sigma 0.1)": {
            "gradient": "estimate",
            "steps": 300,
            "n_queries": 10,
            "sigma": 0.1,
        },
    }
    for name, options in variants.items():
        start = time.perf_counter()
        result = model_inversion(model, classes, input_shape=(1, 8, 8), restarts=4, seed=0, **options)
        seconds = time.perf_counter() - start
        scores = inversion_scores(result.inputs, classes, judge=judge, reference=(x_train, y_train))
        probability = float(result.probability.mean())
        print(
            f"| {name} | {result.queries} | {probability:.2f} | {scores.recognition:.2f} "
            f"| {scores.nearest_mean:.2f} | {scores.distance:.2f} | {scores.other_distance:.2f} "
            f"| {seconds:.1f} |"
        )
    means = torch.stack([x_train[y_train == c].mean(0) for c in classes])
    blank = torch.zeros(10, 1, 1, 8, 8)
    chance = inversion_scores(blank, classes, judge=judge, reference=(x_train, y_train))
    print(
        f"| all-zero image (control) | 0 | | {chance.recognition:.2f} | {chance.nearest_mean:.2f} | "
        f"{chance.distance:.2f} | {chance.other_distance:.2f} | |"
    )
    _, (x_test, y_test) = data
    per_class = min(int((y_test == c).sum()) for c in classes)
    real = torch.stack([x_test[y_test == c][:per_class] for c in classes])
    real_scores = inversion_scores(real, classes, judge=judge, reference=(x_train, y_train))
    print(
        f"| test digits ({per_class} per class, reference) | | | {real_scores.recognition:.2f} "
        f"| {real_scores.nearest_mean:.2f} | {real_scores.distance:.2f} "
        f"| {real_scores.other_distance:.2f} | |"
    )
    mean_scores = inversion_scores(means.unsqueeze(1), classes, judge=judge, reference=(x_train, y_train))
    print(f"| the class means themselves (upper reference) | | | {mean_scores.recognition:.2f} | | | | |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--targets", type=int, nargs="+", default=[0, 3, 5, 7])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("$ " + " ".join(["python", *sys.argv]))
    data = load_digits()
    start = time.perf_counter()
    for name in args.scenarios:
        print_scenario(name, scenario_rows(name, args.targets, data))
    inversion_report(data)
    print(f"\ntotal {time.perf_counter() - start:.0f} s on {args.threads} thread(s)")


if __name__ == "__main__":
    main()
