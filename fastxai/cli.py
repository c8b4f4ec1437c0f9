"""The ``fastxai`` command: attribute, attack, evaluate, visualize-layer, bench, backends, demo.

A model is ``package.module:factory`` (a callable returning an ``nn.Module``) plus an
optional ``--weights`` state dict (loaded with ``weights_only=True``). Data is a ``.npy`` or
``.pt`` file of inputs (a ``.pt`` may hold ``(inputs, labels)`` or ``{"inputs", "labels"}``),
a folder of images of one size, or ``digits`` (scikit-learn's digits, test split). With no
model and no data the bundled digits CNN is used. Errors end in one line and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch

from fastxai._cli_data import CliError, load_data, one_line
from fastxai._output import output_tensor
from fastxai._run_store import FolderInUseError

DEFAULT_CACHE = Path.home() / ".cache" / "fastxai"


class _Parser(argparse.ArgumentParser):
    """argparse with the command's error contract: a usage error is one line on stderr and exit
    code 2 (argparse's own prints the usage block first)."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {one_line(message)} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def load_model(spec: str | None, weights: str | None) -> torch.nn.Module:
    if spec is None:
        if weights is not None:
            raise CliError("--weights needs --model")
        return digits_model()
    if ":" not in spec:
        raise CliError(f"--model must be package.module:factory, got {spec!r}")
    module_name, factory_name = spec.split(":", 1)
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
    except (ImportError, AttributeError) as error:
        raise CliError(f"cannot load model factory {spec!r}: {error}") from None
    try:
        model = factory()
    except Exception as error:
        raise CliError(f"model factory {spec!r} failed: {type(error).__name__}: {error}") from None
    if not isinstance(model, torch.nn.Module):
        raise CliError(f"model factory {spec!r} returned {type(model).__name__}, not an nn.Module")
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise CliError(f"weights file not found: {weights}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as error:
            raise CliError(f"cannot load weights {weights}: {type(error).__name__}: {error}") from None
    return model.eval()


def digits_model(cache: Path = DEFAULT_CACHE) -> torch.nn.Module:
    """The bundled digits CNN, trained on first use (seconds) and cached as a state dict."""
    from fastxai.digits import digits_cnn, load_digits, train_digits_cnn

    path = cache / "digits_cnn.pt"
    model = digits_cnn()
    if path.is_file():
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return model.eval()
        except Exception:
            pass  # a stale or damaged cache: train again
    (x_train, y_train), _ = load_digits()
    model = train_digits_cnn(x_train, y_train)
    cache.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    torch.save(model.state_dict(), temporary)
    temporary.replace(path)
    return model


def _model_and_data(
    args: argparse.Namespace, labels_needed_by: str | None = None
) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor | None]:
    """The model, the inputs and labels (cut to ``--limit``), checked to fit each other; with
    ``labels_needed_by``, data without labels is refused before the model is run."""
    if args.limit is not None and args.limit < 1:  # a negative slice bound means "all but the last N"
        raise CliError(f"--limit must be >= 1, got {args.limit}")
    model = load_model(args.model, args.weights)
    inputs, labels = load_data(args.data)
    if labels is not None and labels.shape[0] != inputs.shape[0]:
        raise CliError(f"data holds {inputs.shape[0]} inputs but {labels.shape[0]} labels")
    if labels_needed_by is not None and labels is None:
        raise CliError(f"{labels_needed_by} needs data with labels (.pt with (inputs, labels), or 'digits')")
    if args.limit is not None:
        inputs, labels = inputs[: args.limit], None if labels is None else labels[: args.limit]
    classes = _check_fit(model, inputs)
    if labels is not None and labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise CliError(
            f"labels must be class indices in [0, {classes}) for this model, "
            f"got values in [{int(labels.min())}, {int(labels.max())}]"
        )
    return model, inputs, labels


def _predictions(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The model's predicted class for every input, 256 at a time."""
    with torch.no_grad():
        return torch.cat(
            [output_tensor(model(inputs[i : i + 256])).argmax(1) for i in range(0, len(inputs), 256)]
        )


def _check_fit(model: torch.nn.Module, inputs: torch.Tensor) -> int:
    try:
        with torch.no_grad():
            output = output_tensor(model(inputs[:1]))  # a tuple or dict is read as every method reads it
    except Exception as error:
        raise CliError(
            f"the model does not accept inputs of shape {tuple(inputs.shape[1:])}: "
            f"{type(error).__name__}: {error}"
        ) from None
    if output.dim() != 2:
        raise CliError(f"the model must return [batch, classes], got shape {tuple(output.shape)}")
    return int(output.shape[1])


METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "saliency": {},
    "input_x_gradient": {},
    "smoothgrad": {"n_samples": 32, "stdevs": 0.15, "seed": 0},
    "integrated_gradients": {"n_steps": 32},
    "guided_backprop": {},
    "deconvnet": {},
    "lrp": {"composite": "epsilon_plus_flat"},
    "occlusion": {},
    "feature_ablation": {},
    "grad_cam": {"upsample": True},
    "grad_cam_plus_plus": {"upsample": True},
    "xgrad_cam": {"upsample": True},
    "hires_cam": {"upsample": True},
    "layer_cam": {"upsample": True},
    "score_cam": {"upsample": True},
    "guided_grad_cam": {},
}
"""Every method the runner has, with the settings the command uses (completed per model and
input shape by ``method_kwargs``)."""

MAIN_METHODS = (
    "saliency",
    "input_x_gradient",
    "smoothgrad",
    "integrated_gradients",
    "guided_backprop",
    "lrp",
    "grad_cam",
    "occlusion",
)
"""What ``--method all`` runs: one or two of each family."""


def method_kwargs(method: str, model: torch.nn.Module, inputs: torch.Tensor) -> dict[str, Any]:
    """METHOD_DEFAULTS[method] plus what depends on the model or the inputs: the CAM layer (what
    ``fastxai.cam_layer`` finds, as the CAM methods' ``layer=None`` does; named here so the run
    records it, unless it needs a reshape, which each call then infers again) and the occlusion
    window (an eighth of each spatial side, half-overlapping)."""
    from fastxai._registry import CAM_METHODS
    from fastxai.attribution.cam_layer import cam_layer

    kwargs = dict(METHOD_DEFAULTS[method])
    if method in CAM_METHODS:
        if inputs.dim() < 3:
            raise CliError(f"{method} needs inputs [N, C, *spatial], got shape {tuple(inputs.shape)}")
        try:
            found = cam_layer(model, inputs[:1])
        except ValueError as error:
            raise CliError(f"{method}: {error}") from None
        if found.reshape is None:
            kwargs["layer"] = found.name
    if method == "occlusion":
        spatial = [max(1, size // 8) for size in inputs.shape[2:]]
        kwargs["sliding_window_shapes"] = (inputs.shape[1], *spatial) if inputs.dim() > 2 else (1,)
        kwargs["strides"] = (
            (inputs.shape[1], *[max(1, side // 2) for side in spatial]) if inputs.dim() > 2 else (1,)
        )
    return kwargs


def command_attribute(args: argparse.Namespace) -> int:
    import fastxai as fx

    model, inputs, labels = _model_and_data(args)
    methods = list(MAIN_METHODS) if args.method == "all" else [args.method]
    data = (inputs, labels) if labels is not None else inputs
    out = Path(args.out)
    _check_out(out)
    print(f"{len(inputs)} inputs of shape {tuple(inputs.shape[1:])}; writing to {out}/")
    rows = []
    for method in methods:
        started = time.perf_counter()
        summary = fx.attribute_dataset(
            model,
            data,
            method,
            out / method,
            method_kwargs=method_kwargs(method, model, inputs),
            batch_size=args.batch_size,
            resume=not args.no_resume,
            target=args.target,
        )
        seconds = time.perf_counter() - started
        print(
            f"  {method:22} {summary['items']:.0f} items in {seconds:.2f} s "
            f"({summary['items'] / seconds:.0f}/s), {summary['shards_written']:.0f} shards written, "
            f"{summary['shards_skipped']:.0f} already complete"
        )
        rows.append(
            {
                "method": method,
                "items": int(summary["items"]),
                "seconds": seconds,
                "items per second": summary["items"] / seconds,
            }
        )
    tables: dict[str, list[dict[str, Any]]] = {"runner timings": rows}
    if args.model is None or args.compare:
        tables.update(_compare(model, inputs, methods, args.n_steps, out))
    if not args.no_report:
        report = _report(out, inputs, methods, tables)
        print(f"report: {report}")
    return 0


def _check_out(out: Path) -> None:
    """``--out`` must be a folder that can be written, checked before any work."""
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CliError(f"cannot create --out {out}: {error.strerror or error}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise CliError(f"--out {out} is not writable")


def _compare(
    model: torch.nn.Module, inputs: torch.Tensor, methods: list[str], n_steps: int, out: Path
) -> dict[str, list[dict[str, Any]]]:
    """Timings against the reference backend, and the faithfulness table of the attributions
    the runner wrote to ``out`` (for the targets it used), printed and returned."""
    import fastxai as fx
    from fastxai import _jobs
    from fastxai._registry import DATASET_METHODS
    from fastxai.evaluation import report

    functions = DATASET_METHODS
    stored = {method: fx.load_attributions(out / method) for method in methods}
    targets = torch.from_numpy(np.asarray(stored[methods[0]]["targets"])).long()
    timings = _jobs.reference_timings(
        model,
        inputs,
        targets,
        {name: (functions[name], method_kwargs(name, model, inputs)) for name in methods},
    )
    print("\nfused backend against the plain PyTorch reference (best of 3, same inputs):")
    for row in timings:
        print(
            f"  {row['method']:22} {row['backend']} {row['seconds']:.3f} s, reference "
            f"{row['reference seconds']:.3f} s (reference / fused = {row['speed-up']:.2f}), results "
            f"differ by {row['max difference / max |attribution|']} of the largest attribution"
        )
    attributions: dict[str, torch.Tensor] = {
        # a one-channel map (CAM) is repeated over the input's channels
        name: torch.from_numpy(np.asarray(stored[name]["attributions"])).to(inputs.dtype).expand_as(inputs)
        for name in methods
    }
    rows = report.faithfulness_table(model, inputs, targets, attributions, n_steps=n_steps)
    print(f"\nfaithfulness: deletion/insertion ({n_steps} steps, removed features set to 0) against random")
    print(report.markdown(rows))
    return {"fused vs reference backend": timings, "faithfulness (deletion / insertion)": rows}


def _explainer(function: Any, kwargs: dict[str, Any]) -> Any:
    """``(model, inputs, target) -> attributions`` of the inputs' shape (a one-channel CAM map is
    repeated over the input's channels)."""

    def explain(model: Any, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        result = function(model, inputs, target=target, **kwargs)
        return result.expand_as(inputs) if result.shape != inputs.shape else result

    return explain


def _report(
    out: Path, inputs: torch.Tensor, methods: list[str], tables: dict[str, list[dict[str, Any]]]
) -> Path:
    """A methods x samples grid (PNG) and an HTML page with it and the timings."""
    import fastxai as fx
    from fastxai import visualize

    if inputs.dim() != 4:
        print("(no pictures: inputs are not images [N, C, H, W])")
        return out
    count = min(8, len(inputs))
    attributions = {
        method: torch.from_numpy(np.asarray(fx.load_attributions(out / method)["attributions"][:count]))
        for method in methods
    }
    grid = visualize.save_grid(out / "grid.png", inputs[:count], attributions)
    return visualize.html_report(
        out / "report.html", "fastxai attribution report", {"methods x samples": grid}, tables
    )


def command_attack(args: argparse.Namespace) -> int:
    import fastxai as fx

    model, inputs, labels = _model_and_data(args, labels_needed_by="attack")
    assert labels is not None
    started = time.perf_counter()
    result = fx.robust_accuracy(
        model,
        (inputs, labels),
        eps=args.eps,
        alpha=args.alpha,
        steps=args.steps,
        norm=args.norm,
        restarts=args.restarts,
        seed=0,
        bounds=(args.lower, args.upper),
    )
    seconds = time.perf_counter() - started
    print(
        f"{result['samples']:.0f} samples: clean accuracy {result['clean_accuracy']:.4f}, accuracy under "
        f"{args.norm} PGD (eps {args.eps}, {args.steps} steps, {args.restarts} restart(s)) "
        f"{result['robust_accuracy']:.4f}, in {seconds:.2f} s"
    )
    return 0


def command_evaluate(args: argparse.Namespace) -> int:
    from fastxai._registry import DATASET_METHODS
    from fastxai.evaluation import report

    if args.n_steps < 1:
        raise CliError(f"--n-steps must be >= 1, got {args.n_steps}")
    model, inputs, labels = _model_and_data(args)
    predictions = _predictions(model, inputs)
    names = list(MAIN_METHODS) if args.method == "all" else [args.method]
    functions = DATASET_METHODS

    def explainer(name: str) -> report.Explainer:
        return _explainer(functions[name], method_kwargs(name, model, inputs))

    print(
        f"{len(inputs)} inputs; deletion/insertion with {args.n_steps} steps, replacement "
        f"{args.replacement!r}, target = the predicted class"
    )
    rows = report.faithfulness_table(
        model,
        inputs,
        predictions,
        {name: explainer(name) for name in names},
        n_steps=args.n_steps,
        replacement=args.replacement,
    )
    print(report.markdown(rows))
    if labels is not None:
        print(f"accuracy of the model on these inputs: {float((predictions == labels).float().mean()):.4f}")
    return 0


def _check_png(out: Path) -> None:
    """``--out`` of ``visualize-layer``: a .png file whose folder exists and can be written."""
    if out.suffix.lower() != ".png":
        raise CliError(f"--out must be a .png file, got {str(out)!r}")
    if out.is_dir():
        raise CliError(f"--out {out} is a folder, not a .png file")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise CliError(f"--out {out}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CliError(f"--out {out}: folder {folder} is not writable")


def _parse_units(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        units = [int(part) for part in text.split(",")]
    except ValueError:
        raise CliError(f"--units must be comma-separated unit indices, e.g. 0,3,7; got {text!r}") from None
    if not units or min(units) < 0:
        raise CliError(f"--units must be unit indices >= 0, got {text!r}")
    return units


def command_visualize_layer(args: argparse.Namespace) -> int:
    from fastxai import visualize
    from fastxai.global_views._layers import resolve_layer

    for name in ("max_units", "max_samples"):
        if getattr(args, name) < 1:
            raise CliError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    units = _parse_units(args.units)
    out = Path(args.out)
    _check_png(out)
    visualize._pyplot()  # matplotlib missing: say so before the model is loaded
    model, inputs, _ = _model_and_data(args)
    _, name = resolve_layer(model, args.layer)
    path = visualize.save_layer_grid(
        out, model, args.layer, inputs, units=units, max_units=args.max_units, max_samples=args.max_samples
    )
    print(f"{path}: activation maps of layer {name!r} for {min(len(inputs), args.max_samples)} inputs")
    return 0


def command_bench(args: argparse.Namespace) -> int:
    root = Path(__file__).resolve().parent.parent
    if not (root / "benchmarks").is_dir():
        raise CliError("bench runs the benchmark suite of a source checkout; benchmarks/ was not found")
    import subprocess

    json_path = root / "benchmarks" / "latest.json"
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(root / "benchmarks"),
        "--benchmark-enable",
        "--benchmark-only",
        f"--benchmark-json={json_path}",
        "-p",
        "no:cacheprovider",
        "-q",
    ]
    if args.select:
        command += ["-k", args.select]
    status = subprocess.call(command)
    if status == 0:
        status = subprocess.call([sys.executable, str(root / "benchmarks" / "report.py"), str(json_path)])
    return status


def command_backends(args: argparse.Namespace) -> int:
    import fastxai as fx

    for info in fx.backends().values():
        print(info)
    return 0


def command_demo(args: argparse.Namespace) -> int:
    from fastxai._demo import run_demo

    for name in ("samples", "points", "repeats"):
        if getattr(args, name) < 1:
            raise CliError(f"--{name} must be >= 1, got {getattr(args, name)}")
    run_demo(samples=args.samples, points=args.points, repeats=args.repeats)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fastxai", description="Fast, verified explainability and robustness.")
    commands = parser.add_subparsers(dest="command")

    def model_and_data(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--model", help="package.module:factory (default: the bundled digits CNN)")
        sub.add_argument("--weights", help="state dict for the model (loaded with weights_only=True)")
        sub.add_argument("--data", help=".npy/.pt file, folder of images, or 'digits' (default)")
        sub.add_argument("--limit", type=int, help="use only the first N inputs")

    attribute = commands.add_parser("attribute", help="attribute a data set and write the results to --out")
    model_and_data(attribute)
    attribute.add_argument("--method", default="all", choices=["all", *METHOD_DEFAULTS])
    attribute.add_argument("--out", default="fastxai-out", help="output folder (default fastxai-out)")
    attribute.add_argument("--batch-size", type=int, default=64)
    attribute.add_argument("--target", default="predicted", choices=["predicted", "label"])
    attribute.add_argument("--no-resume", action="store_true", help="redo shards already complete")
    attribute.add_argument("--no-report", action="store_true", help="skip the PNG grid and the HTML report")
    attribute.add_argument(
        "--compare",
        action="store_true",
        help="also time the reference backend and compute deletion/insertion AUC (on by default "
        "for the bundled model)",
    )
    attribute.add_argument("--n-steps", type=int, default=16, help="deletion/insertion steps (default 16)")
    attribute.set_defaults(handler=command_attribute)

    attack = commands.add_parser("attack", help="clean and robust accuracy under PGD")
    model_and_data(attack)
    attack.add_argument("--eps", type=float, default=0.1)
    attack.add_argument("--alpha", type=float, default=0.025)
    attack.add_argument("--steps", type=int, default=10)
    attack.add_argument("--norm", default="linf", choices=["linf", "l2"])
    attack.add_argument("--restarts", type=int, default=1)
    attack.add_argument("--lower", type=float, default=0.0, help="lowest valid input value (default 0)")
    attack.add_argument("--upper", type=float, default=1.0, help="highest valid input value (default 1)")
    attack.set_defaults(handler=command_attack)

    evaluate = commands.add_parser("evaluate", help="deletion/insertion AUC of each method against random")
    model_and_data(evaluate)
    evaluate.add_argument("--method", default="all", choices=["all", *METHOD_DEFAULTS])
    evaluate.add_argument("--n-steps", type=int, default=16, help="deletion/insertion steps (default 16)")
    evaluate.add_argument("--replacement", default="zero", choices=["zero", "mean", "blur"])
    evaluate.set_defaults(handler=command_evaluate)

    visualize_layer = commands.add_parser(
        "visualize-layer", help="a PNG grid of a layer's activation maps (inputs x units)"
    )
    model_and_data(visualize_layer)
    visualize_layer.add_argument("--layer", required=True, help="dotted module name, e.g. 2 or features.3")
    visualize_layer.add_argument("--out", default="layer.png", help="PNG file to write (default layer.png)")
    visualize_layer.add_argument("--units", help="comma-separated units to show (default: the strongest)")
    visualize_layer.add_argument("--max-units", type=int, default=16, help="units shown (default 16)")
    visualize_layer.add_argument("--max-samples", type=int, default=8, help="inputs shown (default 8)")
    visualize_layer.set_defaults(handler=command_visualize_layer)

    bench = commands.add_parser("bench", help="run the benchmark suite (source checkout) and print ratios")
    bench.add_argument("-k", dest="select", help="pytest -k expression to select benchmarks")
    bench.set_defaults(handler=command_bench)

    backends = commands.add_parser("backends", help="which backends this machine has, and why not the others")
    backends.set_defaults(handler=command_backends)

    demo = commands.add_parser("demo", help="attribute a digits CNN on every backend and print timings")
    demo.add_argument("--samples", type=int, default=256, help="test images to explain (default 256)")
    demo.add_argument("--points", type=int, default=32, help="SmoothGrad samples and IG steps (default 32)")
    demo.add_argument("--repeats", type=int, default=5, help="timing repeats, best kept (default 5)")
    demo.set_defaults(handler=command_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            args = parser.parse_args(["demo", *(argv or [])])
    except SystemExit as done:  # --help (0), or a usage error already reported in one line (2)
        return done.code if isinstance(done.code, int) else 2
    try:
        return int(args.handler(args))
    except (CliError, ValueError, TypeError, ImportError, FolderInUseError) as error:
        print(f"fastxai: {one_line(error)}", file=sys.stderr)
        return 2
    except OSError as error:  # the output folder turned read-only, a full disk, a file vanished
        where = f": {error.filename}" if error.filename else ""
        print(f"fastxai: {one_line(error.strerror or error)}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastxai: interrupted", file=sys.stderr)
        return 130
