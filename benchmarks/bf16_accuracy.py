"""What ``dtype=torch.bfloat16`` costs in accuracy: each method's attributions in bf16 against
the same method in float32, on a trained digits CNN and a ResNet-18; and each attack's success.

Per method and model: the relative difference ``||a_bf16 - a_fp32|| / ||a_fp32||`` per sample
(median and largest over the samples), and for Integrated Gradients and DeepLIFT the
completeness error ``|sum(a) - (f(x) - f(x'))| / |f(x) - f(x')|`` (largest over the samples)
with ``f`` the float32 model and ``x' = 0``, for the float32 run, the bf16 run, and (IG) the
bf16 run with its gradients summed in bfloat16 instead of float32 (what the fused ops' float32
accumulation saves). Per attack and model (``--attack-samples`` inputs, labels the float32
model's predictions): the share of inputs whose adversarial example fools the float32 model,
made in float32 and in bf16. CPU; bf16 on a CPU without native bf16 units is emulated and slow,
so the figures are about accuracy, not speed.

    PYTHONPATH=. .venv/bin/python benchmarks/bf16_accuracy.py --threads 1   # a few minutes
    PYTHONPATH=. .venv/bin/python benchmarks/bf16_accuracy.py --models digits --ig-steps 1024
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

sys.path.append(os.path.join(os.path.dirname(__file__), "..", "tests"))

import fastxai as fx
from fastxai import ops

Method = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, torch.dtype | None], torch.Tensor]


def digits_case(samples: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """The bundled digits CNN, trained (15 epochs, seed 0), and test images [samples, 1, 8, 8]."""
    from fastxai.digits import load_digits, train_digits_cnn

    (x_train, y_train), (x_test, _) = load_digits()
    return train_digits_cnn(x_train, y_train), x_test[:samples]


def resnet_case(samples: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """torchvision's ResNet-18 (10 classes, random weights seeded 0, eval) on 3x32x32 inputs."""
    import real_models

    torch.manual_seed(0)
    model = real_models.torchvision().models.resnet18(num_classes=10).eval()
    return model, torch.rand(samples, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def superpixels(x: torch.Tensor, per_side: int) -> torch.Tensor:
    """``per_side**2`` square patches of the images [B, C, H, W] as group ids [1, 1, H, W]."""
    rows = torch.arange(x.shape[2]) * per_side // x.shape[2]
    cols = torch.arange(x.shape[3]) * per_side // x.shape[3]
    return (rows.view(-1, 1) * per_side + cols.view(1, -1)).view(1, 1, x.shape[2], x.shape[3])


def methods(ig_steps: int, samples: int) -> dict[str, Method]:
    """Each method as ``f(model, x, target, dtype)``; the same seeds for both dtypes. The
    perturbation methods score 16 superpixels (exact Shapley values 4), with ``4 * samples``
    coalitions (KernelSHAP, LIME) or ``samples // 4`` orders (Shapley sampling); the CAM
    family, layer conductance (``ig_steps`` steps) and the layer's activations at the layer
    ``fastxai.cam_layer`` finds."""

    def background(x: torch.Tensor) -> torch.Tensor:
        return torch.rand(8, *x.shape[1:], generator=torch.Generator().manual_seed(2)) * float(x.max())

    def window(x: torch.Tensor) -> tuple[int, ...]:
        return (x.shape[1], *(max(1, size // 4) for size in x.shape[2:]))

    def cam(name: str) -> Method:
        return lambda m, x, t, d: getattr(fx, name)(m, x, target=t, dtype=d)

    return {
        "integrated_gradients": lambda m, x, t, d: fx.integrated_gradients(
            m, x, target=t, n_steps=ig_steps, dtype=d
        ),
        "smoothgrad": lambda m, x, t, d: fx.smoothgrad(m, x, target=t, n_samples=samples, seed=0, dtype=d),
        "gradient_shap": lambda m, x, t, d: fx.gradient_shap(
            m, x, target=t, baselines=background(x), n_samples=samples, seed=0, dtype=d
        ),
        "saliency": lambda m, x, t, d: fx.saliency(m, x, target=t, abs=False, dtype=d),
        "occlusion": lambda m, x, t, d: fx.occlusion(
            m, x, target=t, sliding_window_shapes=window(x), dtype=d
        ),
        "lrp": lambda m, x, t, d: fx.lrp.lrp(m, x, target=t, dtype=d),
        "feature_ablation": lambda m, x, t, d: fx.feature_ablation(
            m, x, target=t, feature_mask=superpixels(x, 4), dtype=d
        ),
        "feature_permutation": lambda m, x, t, d: fx.feature_permutation(
            m, x, target=t, feature_mask=superpixels(x, 4), seed=0, dtype=d
        ),
        "kernel_shap": lambda m, x, t, d: fx.kernel_shap(
            m, x, target=t, feature_mask=superpixels(x, 4), n_samples=4 * samples, seed=0, dtype=d
        ),
        "lime": lambda m, x, t, d: fx.lime(
            m,
            x,
            target=t,
            feature_mask=superpixels(x, 4),
            n_samples=4 * samples,
            interpretable_model="linear",
            seed=0,
            dtype=d,
        ),
        "shapley_value_sampling": lambda m, x, t, d: fx.shapley_value_sampling(
            m, x, target=t, feature_mask=superpixels(x, 4), n_samples=max(2, samples // 4), seed=0, dtype=d
        ),
        "shapley_values": lambda m, x, t, d: fx.shapley_values(
            m, x, target=t, feature_mask=superpixels(x, 2), dtype=d
        ),
        "deeplift": lambda m, x, t, d: fx.deeplift(m, x, target=t, dtype=d),
        "deeplift_shap": lambda m, x, t, d: fx.deeplift_shap(
            m, x, target=t, baselines=background(x), dtype=d
        ),
        "guided_backprop": lambda m, x, t, d: fx.guided_backprop(m, x, target=t, dtype=d),
        "deconvnet": lambda m, x, t, d: fx.deconvnet(m, x, target=t, dtype=d),
        **{name: cam(name) for name in CAMS},
        "layer_conductance": lambda m, x, t, d: fx.layer_conductance(
            m, x, target=t, layer=fx.cam_layer(m, x).name, n_steps=ig_steps, dtype=d
        ),
        "layer_activations": lambda m, x, t, d: fx.layer_activations(
            m, x, layer=fx.cam_layer(m, x).name, dtype=d
        ),
    }


CAMS = ("grad_cam", "grad_cam_plus_plus", "xgrad_cam", "hires_cam", "layer_cam", "score_cam")
COMPLETE = ("integrated_gradients", "deeplift", "layer_conductance")
"""The methods whose attributions sum to ``f(x) - f(0)``: their completeness error is reported."""

Attack = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, torch.dtype | None], torch.Tensor]


def attacks(eps: float) -> dict[str, Attack]:
    """Each attack as ``f(model, x, labels, dtype)`` in an L-inf ball of radius ``eps`` (DeepFool
    unbounded: the smallest step over the boundary it finds); the same seeds for both dtypes."""
    return {
        "fgsm": lambda m, x, y, d: fx.fgsm(m, x, y, eps=eps, dtype=d),
        "pgd": lambda m, x, y, d: fx.pgd(m, x, y, eps=eps, alpha=eps / 4, steps=10, seed=0, dtype=d),
        "mifgsm": lambda m, x, y, d: fx.mifgsm(m, x, y, eps=eps, alpha=eps / 4, steps=10, dtype=d),
        "apgd": lambda m, x, y, d: fx.apgd(m, x, y, eps=eps, steps=20, seed=0, dtype=d),
        "square_attack": lambda m, x, y, d: fx.square_attack(m, x, y, eps=eps, n_queries=100, dtype=d),
        "deepfool": lambda m, x, y, d: fx.deepfool(m, x, y, steps=20, dtype=d),
    }


def relative_difference(got: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``||got - reference|| / ||reference||`` per sample: [B]."""
    difference = (got.double() - reference.double()).flatten(1).norm(dim=1)
    return difference / reference.double().flatten(1).norm(dim=1).clamp_min(1e-30)


def score_gap(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``f(x) - f(0)`` per sample, ``f`` the float32 model's target score: [B] float64."""
    with torch.no_grad():
        scores = model(torch.cat([x, torch.zeros_like(x)])).double()
    rows = torch.arange(x.shape[0])
    return scores[rows, target] - scores[rows + x.shape[0], target]


def completeness(
    model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, a: torch.Tensor
) -> torch.Tensor:
    """``|sum(a) - (f(x) - f(0))| / |f(x) - f(0)|`` per sample, ``f`` the float32 model's target score."""
    gap = score_gap(model, x, target)
    return (a.double().flatten(1).sum(1) - gap).abs() / gap.abs().clamp_min(1e-30)


def metric_figures(
    model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, ig_steps: int = 32
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each model-calling faithfulness metric of the float32 Integrated Gradients attributions
    (``ig_steps`` steps), per sample, judged by the model in float32 and in bf16: {name: (fp32
    [B], bf16 [B])}. Deletion and insertion AUC (probabilities, 16 steps, per pixel), infidelity
    (16 perturbations of the default ``noise_std`` 0.003, and of 0.03), the completeness error
    ``sum(a) - (f(x) - f(0))``."""
    a = fx.integrated_gradients(model, x, target=target, n_steps=ig_steps)
    from fastxai import evaluation as ev

    metrics: dict[str, Callable[[torch.dtype | None], torch.Tensor]] = {
        "deletion": lambda d: ev.deletion(model, x, a, target, n_steps=16, dtype=d).auc,
        "insertion": lambda d: ev.insertion(model, x, a, target, n_steps=16, dtype=d).auc,
        "infidelity": lambda d: ev.infidelity(model, x, a, target, n_perturb_samples=16, seed=0, dtype=d),
        "infidelity (noise_std 0.03)": lambda d: ev.infidelity(
            model, x, a, target, noise_std=0.03, n_perturb_samples=16, seed=0, dtype=d
        ),
        "completeness_error": lambda d: ev.completeness_error(model, x, a, target, dtype=d),
    }
    return {name: (run(None), run(torch.bfloat16)) for name, run in metrics.items()}


def metric_report(name: str, model: torch.nn.Module, x: torch.Tensor) -> list[str]:
    """Per metric: its median over the samples in float32 and bf16, and the largest change of
    one sample's value: absolute for the AUCs (probabilities), relative to the float32 value for
    infidelity, relative to the gap ``|f(x) - f(0)|`` for the completeness error."""
    with torch.no_grad():
        target = model(x).argmax(1)
    gap = score_gap(model, x, target).abs()
    lines = []
    for metric, (reference, bf16) in metric_figures(model, x, target).items():
        scale = torch.ones_like(gap)  # the AUCs
        if metric == "completeness_error":
            scale = gap
        elif metric.startswith("infidelity"):
            scale = reference.double().abs().clamp_min(1e-30)
        moved = float(((bf16.double() - reference.double()).abs() / scale).max())
        line = (
            f"| {name} | {metric} | {float(reference.median()):.3g} | {float(bf16.median()):.3g} "
            f"| {moved:.1e} |"
        )
        lines.append(line)
        print(line, flush=True)
    return lines


def smoothing_report(name: str, model: torch.nn.Module, x: torch.Tensor, sigma: float) -> list[str]:
    """Randomized smoothing's CERTIFY (n0 100, n 1000, seed 0) with the base classifier in
    float32 and in bf16: the share of inputs given the same class (or both abstaining), the
    largest radius difference and the mean radii."""
    runs = [
        fx.smoothing_certify(model, x, sigma=sigma, n0=100, n=1000, seed=0, dtype=dtype)
        for dtype in (None, torch.bfloat16)
    ]
    same = float((runs[0][0] == runs[1][0]).float().mean())
    apart = float((runs[0][1] - runs[1][1]).abs().max())
    line = (
        f"| {name} | smoothing_certify (sigma {sigma:g}) | same class {same:.3f} | radius apart, largest "
        f"{apart:.3f} | mean radius {float(runs[0][1].mean()):.3f} / {float(runs[1][1].mean()):.3f} |"
    )
    print(line, flush=True)
    return [line]


def global_view_figures(model: torch.nn.Module) -> dict[str, tuple[float, float]]:
    """The digits CNN's global views, float32 against bf16 (seeded): network dissection of its
    two ReLU layers on 64 synthetic concept images at 8 x 8 (quantile 0.02): the share of units
    with the same label and the largest change of a unit's best IoU; TCAV of the digits 3 among
    the first 64 test digits, the concept 20 training 3s against 5 random sets of 20: the largest
    change of a score (sign count) and of the p-value. {name: (agreement or change, change)}."""
    from fastxai.digits import load_digits

    figures = {}
    concepts = fx.concept_dataset(64, size=8, seed=3)
    for layer in ("2", "6"):
        runs = [
            fx.network_dissection(model, concepts, layer=layer, quantile=0.02, dtype=d)
            for d in (None, torch.bfloat16)
        ]
        same = sum(a == b for a, b in zip(runs[0].labels, runs[1].labels, strict=True)) / len(runs[0].labels)
        figures[f"network_dissection (layer {layer})"] = (
            same,
            float((runs[0].best_iou - runs[1].best_iou).abs().max()),
        )
    (x_train, y_train), (x_test, _) = load_digits()
    generator = torch.Generator().manual_seed(0)
    randoms = [x_train[torch.randperm(x_train.shape[0], generator=generator)[:20]] for _ in range(5)]
    x = x_test[:64]
    with torch.no_grad():
        threes = x[model(x).argmax(1) == 3]
    for layer in ("2", "6"):
        results = [
            fx.tcav(
                model, threes, 3, layer=layer, concepts={"three": x_train[y_train == 3][:20]},
                random_concepts=randoms, seed=0, dtype=d,
            )["three"]
            for d in (None, torch.bfloat16)
        ]  # fmt: skip
        figures[f"tcav (layer {layer})"] = (
            float((results[0].scores - results[1].scores).abs().max()),
            abs(results[0].p_value - results[1].p_value),
        )
    return figures


def backdoor_figures() -> dict[str, tuple[str, str]]:
    """The poisoning detectors on the digits CNN trained on a set with a 3x3 patch on 5% of it
    (``tests/poisoned_digits.py``'s "patch3": 67 items, a third of class 0), float32 against
    bf16: precision / recall of spectral signatures (at the second ReLU, class 0) and of
    activation clustering (PCA, seed 0), the trigger's attack success rate on the test set, and
    trigger localisation (input x gradient in the same dtype, k 4; the model poisoned with a 2x2
    patch, "patch2") of 48 triggered test digits pasted into the last 64: the share of each
    region on the patch and the flip rate (means). {name: (fp32, bf16)}."""
    from poisoned_digits import planted

    from fastxai import backdoor as bd

    case = planted("patch3")
    x, y, truth = case.poisoned.inputs, case.poisoned.labels, case.poisoned.indices
    share = truth.numel() / int((y == case.target).sum())
    def spectral(d: torch.dtype | None) -> str:
        found = fx.spectral_signatures(
            case.model, x, y, poison_fraction=share, layer="6", classes=[case.target], dtype=d
        )
        return "{:.3f} / {:.3f}".format(*bd.precision_recall(found.flagged, truth))

    def clustering(d: torch.dtype | None) -> str:
        found = fx.activation_clustering(case.model, x, y, reduction="pca", seed=0, dtype=d)
        return "{:.3f} / {:.3f}".format(*bd.precision_recall(found.flagged, truth))

    def success(d: torch.dtype | None) -> str:
        rate = fx.attack_success_rate(
            case.model, case.x_test, case.y_test, case.trigger, target=case.target, dtype=d
        )
        return f"{rate:.3f}"

    patch2 = planted("patch2")  # tests/backdoor/test_bd_triggers_found.py's localisation case
    others = patch2.x_test[patch2.y_test != patch2.target]
    suspects, pool = fx.apply_trigger(others[:48], patch2.trigger), patch2.x_test[-64:]

    def localisation(d: torch.dtype | None) -> str:
        found = fx.trigger_localisation(
            patch2.model, suspects, pool, k=4, dtype=d,
            attribution=lambda m, x, t: fx.input_x_gradient(m, x, t, dtype=d),
        )  # fmt: skip
        inside = float((found.regions & patch2.trigger.region).flatten(1).sum(1).double().mean() / 4)
        return f"{inside:.3f} / {float(found.flip_rate.mean()):.3f}"

    runs = {
        "spectral_signatures (precision / recall)": spectral,
        "activation_clustering (precision / recall)": clustering,
        "attack_success_rate": success,
        "trigger_localisation, 2x2 patch (share of the region on the patch / flip rate)": localisation,
    }
    return {name: (run(None), run(torch.bfloat16)) for name, run in runs.items()}


def squeezing_figures(model: torch.nn.Module) -> dict[str, tuple[str, str]]:
    """The feature-squeezing detector (1-bit depth, 2x2 median; fpr 0.05) fitted on the first 128
    test digits in float32 and in bf16: its threshold, and how many of the next 128 digits each
    flags (and how many flags differ). {name: (fp32, bf16)}."""
    from fastxai.digits import load_digits

    x = load_digits()[1][0]
    detectors = [fx.fit_squeezing_detector(model, x[:128], dtype=d) for d in (None, torch.bfloat16)]
    flags = [detector.detect(x[128:256])[0] for detector in detectors]
    apart = int((flags[0] != flags[1]).sum())
    return {
        "fit_squeezing_detector: threshold": (
            f"{detectors[0].threshold:.4f}",
            f"{detectors[1].threshold:.4f}",
        ),
        "detect: flagged of 128 other digits": (
            str(int(flags[0].sum())),
            f"{int(flags[1].sum())} ({apart} apart)",
        ),
    }


def transformer_report(samples: int) -> list[str]:
    """Attention rollout and flow on torchvision's ViT (random weights seeded 0: image 32, patch
    8, 4 layers, 4 heads, width 64) and ``explain_generation`` (IG, 32 steps) on a GPT-2 with
    random weights (2 layers, 4 heads, width 64, 100 tokens): the relative difference bf16 vs
    float32 per example (median, largest), as the methods table."""
    import real_models

    torch.manual_seed(0)
    vit = real_models.torchvision().models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=4, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=10
    ).eval()
    images = torch.randn(samples, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    tr = real_models.transformers()
    torch.manual_seed(0)
    config = tr.GPT2Config(n_layer=2, n_head=4, n_embd=64, vocab_size=100, n_positions=64)
    gpt2 = tr.GPT2LMHeadModel(config).eval()
    generator = torch.Generator().manual_seed(2)
    prompts = torch.randint(0, 100, (samples, 8), generator=generator)
    continuations = torch.randint(0, 100, (samples, 4), generator=generator)
    runs: dict[str, tuple[str, Callable[[torch.dtype | None], torch.Tensor]]] = {
        "attention_rollout": ("ViT (random)", lambda d: fx.attention_rollout(vit, images, dtype=d)),
        "attention_flow": ("ViT (random)", lambda d: fx.attention_flow(vit, images[:2], dtype=d)),
        "explain_generation": (
            "GPT-2 (random)",
            lambda d: fx.explain_generation(gpt2, prompts, continuations, n_steps=32, dtype=d).flatten(1),
        ),
    }
    lines = []
    for method, (model_name, run) in runs.items():
        diff = relative_difference(run(torch.bfloat16), run(None))
        line = f"| {model_name} | {method} | {float(diff.median()):.2e} | {float(diff.max()):.2e} | | | |"
        lines.append(line)
        print(line, flush=True)
    return lines


@contextmanager
def bf16_accumulation() -> Iterator[None]:
    """``ops.weighted_path_accumulate`` summing in bfloat16 (the accumulator rounded to bfloat16
    after every step): what IG would give if the fused op did not accumulate in float32."""
    original = ops.weighted_path_accumulate

    def broken(grads: torch.Tensor, weights: torch.Tensor, acc: torch.Tensor, **_: object) -> None:
        weights = weights.to(acc.dtype).reshape(grads.shape[0], -1, *([1] * (grads.dim() - 2)))
        weights = weights.expand(grads.shape[0], grads.shape[1], *([1] * (grads.dim() - 2)))
        for step in range(grads.shape[0]):
            acc.copy_((acc + weights[step] * grads[step].to(acc.dtype)).bfloat16())

    ops.weighted_path_accumulate = broken  # type: ignore[assignment]
    try:
        yield
    finally:
        ops.weighted_path_accumulate = original  # type: ignore[assignment]


def report(
    name: str,
    model: torch.nn.Module,
    x: torch.Tensor,
    ig_steps: int,
    samples: int,
    only: list[str] | None = None,
) -> list[str]:
    with torch.no_grad():
        target = model(x).argmax(1)
    lines = []
    for method, run in methods(ig_steps, samples).items():
        if only is not None and method not in only:
            continue
        reference = run(model, x, target, None)
        bf16 = run(model, x, target, torch.bfloat16)
        diff = relative_difference(bf16, reference)
        line = f"| {name} | {method} | {float(diff.median()):.2e} | {float(diff.max()):.2e} |"
        if method in COMPLETE:
            runs = [reference, bf16]
            if method == "integrated_gradients":
                with bf16_accumulation():
                    runs.append(run(model, x, target, torch.bfloat16))
            errors = [f"{float(completeness(model, x, target, a).max()):.2e}" for a in runs]
            line += " " + " | ".join(errors) + " |" + (" |" if len(errors) == 2 else "")
        else:
            line += " | | |"
        lines.append(line)
        print(line, flush=True)
    return lines


def attack_report(name: str, model: torch.nn.Module, x: torch.Tensor, eps: float) -> list[str]:
    """Per attack: the share of ``x`` whose example fools the float32 model, made in float32
    and in bf16, and the largest L-inf distance between the two examples."""
    with torch.no_grad():
        labels = model(x).argmax(1)
    lines = []
    for attack, run in attacks(eps).items():
        examples = [run(model, x, labels, dtype) for dtype in (None, torch.bfloat16)]
        with torch.no_grad():
            rates = [float((model(a).argmax(1) != labels).float().mean()) for a in examples]
        apart = float((examples[0] - examples[1]).abs().max())
        line = f"| {name} | {attack} | {eps:.3g} | {rates[0]:.3f} | {rates[1]:.3f} | {apart:.2e} |"
        lines.append(line)
        print(line, flush=True)
    # robust accuracy: its default PGD (early stopping off for bf16), and with early stopping,
    # which stops a sample at its first iterate that fools the model it attacks (the bf16 one)
    for early_stop in (None, True):
        options = {} if early_stop is None else {"early_stop": early_stop}
        robust = [
            fx.robust_accuracy(
                model, (x, labels), eps=eps, alpha=eps / 4, steps=10, seed=0, dtype=dtype, **options
            )["robust_accuracy"]
            for dtype in (None, torch.bfloat16)
        ]
        what = "robust_accuracy (PGD" + (", early_stop=True)" if early_stop else ")")
        line = f"| {name} | {what} | {eps:.3g} | robust accuracy {robust[0]:.3f} | {robust[1]:.3f} | |"
        lines.append(line)
        print(line, flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["digits", "resnet18"], choices=["digits", "resnet18"])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--ig-steps", type=int, default=256, help="Integrated Gradients steps")
    parser.add_argument("--noise-samples", type=int, default=32, help="SmoothGrad / GradientSHAP samples")
    parser.add_argument("--attack-samples", type=int, default=64, help="inputs attacked per model")
    parser.add_argument("--methods", nargs="+", default=None, help="only these methods (default: all)")
    parser.add_argument("--no-attacks", action="store_true")
    parser.add_argument(
        "--no-extras", action="store_true", help="skip the transformers, the metrics and smoothing"
    )
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        "| model | method | rel. diff. bf16 vs fp32, median | largest | completeness error (largest): "
        "fp32 | bf16 | bf16 summed in bf16 |"
    )
    print("|---|---|---|---|---|---|---|")
    cases = {"digits": digits_case, "resnet18": resnet_case}
    for name in args.models:
        model, x = cases[name](args.samples)
        report(name, model, x, args.ig_steps, args.noise_samples, args.methods)
    if not args.no_extras:
        transformer_report(args.samples)
        print(
            "\n| model | metric (of fp32 IG) | fp32, median | bf16, median | largest change (AUC: "
            "absolute; infidelity: relative; completeness: / |f(x) - f(0)|) |"
        )
        print("|---|---|---|---|---|")
        for name in args.models:
            model, x = cases[name](args.samples)
            metric_report(name, model, x)
        if "digits" in args.models:
            print(
                "\n| model | global view | same label (dissection) / score change (TCAV) "
                "| IoU / p-value change |"
            )
            print("|---|---|---|---|")
            model, _ = cases["digits"](args.samples)
            for view, (first, second) in global_view_figures(model).items():
                print(f"| digits | {view} | {first:.3g} | {second:.2e} |", flush=True)
            print("\n| model | backdoor / squeezing method | fp32 | bf16 |")
            print("|---|---|---|---|")
            for method, (first_run, second_run) in backdoor_figures().items():
                print(f"| digits (poisoned) | {method} | {first_run} | {second_run} |", flush=True)
            for method, (first_run, second_run) in squeezing_figures(model).items():
                print(f"| digits | {method} | {first_run} | {second_run} |", flush=True)
        print("\n| model | method | agreement | radius | mean radius fp32 / bf16 |")
        print("|---|---|---|---|---|")
        for name in args.models:
            model, x = cases[name](args.samples)
            smoothing_report(name, model, x, 0.25)
    if args.no_attacks:
        return
    print(
        "\n| model | attack | eps | fools the fp32 model: made in fp32 | made in bf16 | largest L-inf apart |"
    )
    print("|---|---|---|---|---|---|")
    for name in args.models:
        model, x = cases[name](args.attack_samples)
        attack_report(name, model, x, 0.1 if name == "digits" else 2 / 255)


if __name__ == "__main__":
    main()
