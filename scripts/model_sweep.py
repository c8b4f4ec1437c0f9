"""Run the main gradient methods on every torchvision classification model (random weights,
nothing downloaded) and print one line per model: ``ok``, ``NONFINITE`` or the error.

    PYTHONPATH=. python scripts/model_sweep.py [--methods saliency lrp ...] [--models resnet18 ...]
    PYTHONPATH=. python scripts/model_sweep.py --timm [--models convnext_atto ...]
    PYTHONPATH=. python scripts/model_sweep.py --hf [--models bert llama ...]
    PYTHONPATH=. python scripts/model_sweep.py --hf-vision [tiny|default] [--models resnet swinv2 ...]

64x64 inputs (224 for the ViTs, Swins and Inceptions, whose patching or pooling needs it); the
largest models (``SKIPPED``) are left out to keep a run to a few minutes on a CPU. ``--timm``:
``TIMM_MODELS``, one or two small members of each family timm has (its CNNs, ViTs and hybrids,
MLP mixers, MetaFormers, NAS nets), at 96x96 where the model takes it, else at its own input
size. ``--hf``: ``HF_TYPES``, transformers' sequence classifiers built from tiny configs (2
layers, width 32, 4 heads, vocabulary 128) on token ids [2, 12], with integrated gradients in
place of guided backpropagation (no ReLU in most of them). ``--hf-vision``: every transformers
image classifier (``AutoModelForImageClassification``'s types, but ``HF_VISION_SKIPPED``) with
random weights on one [1, C, S, S] input, ``--methods`` as for torchvision; ``tiny`` (default)
sets the width-32, 2-layer, 4-head, patch-8 fields a config has, at S = max(its image_size, 32)
(a config whose other fields do not fit those fails to build or run: printed); ``default``
keeps the config's sizes with one block per stage (``depths``) or 2 layers, at its image_size
(224 where it has none). A refusal is printed, not raised: the sweep shows which architectures
each method takes.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import real_models  # makes the torchvision import work on a CPU machine

import fastxai as fx

METHODS: dict[str, Callable[[torch.nn.Module, torch.Tensor, int], torch.Tensor]] = {
    "saliency": lambda model, x, target: fx.saliency(model, x, target),
    "lrp": lambda model, x, target: fx.lrp(model, x, target),
    "deeplift": lambda model, x, target: fx.deeplift(model, x, target),
    "guided": lambda model, x, target: fx.guided_backprop(model, x, target),
    "ig": lambda model, x, target: fx.integrated_gradients(model, x, target, n_steps=8),
    "smoothgrad": lambda model, x, target: fx.smoothgrad(model, x, target, n_samples=2, seed=0),
    "gradshap": lambda model, x, target: fx.gradient_shap(
        model, x, target, baselines=torch.zeros_like(x).expand(2, *x.shape[1:]), n_samples=2, seed=0
    ),
    "gradcam": lambda model, x, target: fx.grad_cam(model, x, target, upsample=True),
    "gradcam++": lambda model, x, target: fx.grad_cam_plus_plus(model, x, target, upsample=True),
    "occlusion": lambda model, x, target: fx.occlusion(
        model, x, target, sliding_window_shapes=(3, x.shape[-2] // 4, x.shape[-1] // 4),
        strides=(3, x.shape[-2] // 4, x.shape[-1] // 4),
    ),
    "pgd": lambda model, x, target: fx.pgd(model, x, torch.tensor([target]), steps=2, seed=0),
    "deepfool": lambda model, x, target: fx.deepfool(model, x, torch.tensor([target]), steps=2, candidates=9),
}
DEFAULT_METHODS = ["saliency", "lrp", "deeplift", "guided"]
SKIPPED = {
    "vit_h_14", "vit_l_16", "vit_l_32", "vit_b_32", "regnet_y_128gf", "regnet_y_32gf",
    "regnet_y_16gf", "efficientnet_b6", "efficientnet_b7", "swin_b", "swin_v2_b", "maxvit_t",
    "convnext_base", "convnext_large",
}  # fmt: skip
LARGE_INPUT = ("vit", "swin", "inception", "googlenet")
# wrappers of other libraries' models, classifiers that need text or a second input, and types
# whose image classifier is not a plain image -> logits model
HF_VISION_SKIPPED = {
    "timm_wrapper", "shieldgemma2", "dinat", "perceiver", "imagegpt", "donut-swin", "clip", "siglip",
    "siglip2", "metaclip_2",
}  # fmt: skip
HF_TYPES = """
bert roberta distilbert albert electra xlm-roberta mobilebert funnel mpnet ernie camembert layoutlm
megatron-bert nystromformer rembert roformer xlnet gpt2 gpt_neo gpt_neox llama mistral mixtral qwen2 qwen3
phi phi3 gemma gemma2 gemma3_text olmo olmo2 stablelm starcoder2 falcon bloom opt mpt biogpt glm persimmon
modernbert longformer big_bird
""".split()
TIMM_MODELS = """
resnet18 resnet50 resnext26ts seresnext26d_32x4d efficientnet_b0 mobilenetv3_large_100 mobilenetv2_100
mobilenetv4_conv_small convnext_atto convnextv2_atto deit_tiny_patch16_224 vit_tiny_patch16_224
swin_tiny_patch4_window7_224 swinv2_cr_tiny_ns_224 regnety_002 densenet121 levit_128s efficientformer_l1
efficientformerv2_s0 mobilevit_xxs mobilevitv2_050 poolformer_s12 poolformerv2_s12 ghostnet_100
ghostnetv2_100 rexnet_100 hrnet_w18_small dla34 tiny_vit_5m_224 fastvit_t8 edgenext_xx_small caformer_s18
convformer_s18 inception_next_tiny repvit_m1 efficientvit_b0 efficientvit_m0 maxvit_nano_rw_256
coatnet_nano_rw_224 pit_ti_224 cait_xxs24_224 xcit_nano_12_p16_224 crossvit_tiny_240
eva02_tiny_patch14_224 focalnet_tiny_srf gcvit_xxtiny hgnetv2_b0 mambaout_femto mixer_s16_224
resmlp_12_224 gmlp_ti16_224 nfnet_l0 dm_nfnet_f0 regnetz_b16 cspresnet50 darknet53 vgg11_bn inception_v3
xception41 tresnet_m lcnet_050 tinynet_a mnasnet_100 fbnetc_100 hardcorenas_a semnasnet_075 rdnet_tiny
starnet_s1 fasternet_t0 sequencer2d_s twins_svt_small visformer_tiny botnet26t_256 halonet26t
lambda_resnet26t volo_d1_224 coat_tiny nest_tiny_jx pvt_v2_b0 mvitv2_tiny davit_tiny vitamin_small_224
hiera_tiny_224 shvit_s1 flexivit_small deit3_small_patch16_224
""".split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS))
    parser.add_argument("--models", nargs="+", default=None, help="torchvision (or timm) model names")
    parser.add_argument("--timm", action="store_true", help="timm's models (TIMM_MODELS) instead")
    parser.add_argument("--hf", action="store_true", help="transformers' classifiers (HF_TYPES) instead")
    parser.add_argument("--hf-methods", nargs="+", default=None, help="with --hf: these of its methods only")
    parser.add_argument(
        "--hf-vision", nargs="?", const="tiny", choices=("tiny", "default"), default=None,
        help="transformers' image classifiers instead, from tiny (default) or default-size configs",
    )  # fmt: skip
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    if args.hf:
        _sweep_transformers(args.models or HF_TYPES, args.hf_methods)
        return
    if args.hf_vision is not None:
        _sweep_transformers_vision(args.models, args.methods, args.hf_vision)
        return
    torchvision = real_models._import_torchvision()
    models = torchvision.models
    if args.timm:
        import timm

        names = args.models or TIMM_MODELS
    else:
        names = args.models or [name for name in models.list_models(module=models) if name not in SKIPPED]
    for name in names:
        if args.timm:
            model = timm.create_model(name, pretrained=False).eval()
            size = _timm_size(model)
        else:
            size = 224 if any(key in name for key in LARGE_INPUT) else 64
            inception = name in ("inception_v3", "googlenet")
            options = {"aux_logits": False, "init_weights": False} if inception else {}
            model = models.get_model(name, weights=None, **options).eval()
        _redraw_zero_heads(model)
        x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        runs = {method: functools.partial(METHODS[method], model, x, 0) for method in args.methods}
        print(f"{name} {size} {_run_methods(runs)}", flush=True)


def _redraw_zero_heads(model: torch.nn.Module) -> None:
    """Draw the weights of zero-initialised linear layers (timm's MLP-Mixer, ResMLP, gMLP, Hiera
    and Sequencer heads, torchvision's ViT head) from N(0, 0.02): with a zero head the score does
    not depend on the inputs, every gradient is zero and Grad-CAM finds no layer that reaches it."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and not bool(module.weight.any()):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.02)


def _sweep_transformers(types: list[str], selected: list[str] | None = None) -> None:
    transformers = real_models.transformers()
    transformers.logging.set_verbosity_error()
    ids = torch.randint(3, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    methods: dict[str, Callable[[torch.nn.Module], torch.Tensor]] = {
        "saliency": lambda model: fx.saliency(model, ids, target=1),
        "ig": lambda model: fx.integrated_gradients(model, ids, target=1, n_steps=8),
        "lrp": lambda model: fx.lrp(model, ids, target=1),
        "deeplift": lambda model: fx.deeplift(model, ids, target=1),
        "smoothgrad": lambda model: fx.smoothgrad(model, ids, target=1, n_samples=2, seed=0),
        "gradshap": lambda model: fx.gradient_shap(model, ids, target=1, baselines=0, n_samples=2, seed=0),
        "deepliftshap": lambda model: fx.deeplift_shap(model, ids, target=1, baselines=0),
        "occlusion": lambda model: fx.occlusion(model, ids, 1, sliding_window_shapes=(2,), baselines=0),
        "shapley": lambda model: fx.shapley_value_sampling(model, ids, 1, baselines=0, n_samples=2, seed=0),
        "lime": lambda model: fx.lime(model, ids, target=1, baselines=0, n_samples=8, seed=0),
        "kernelshap": lambda model: fx.kernel_shap(model, ids, target=1, baselines=0, n_samples=8, seed=0),
        "rollout": lambda model: fx.attention_rollout(model, ids),
    }
    if selected is not None:
        methods = {name: run for name, run in methods.items() if name in selected}
    tiny = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
            "vocab_size": 128, "num_labels": 3, "max_position_embeddings": 64, "num_key_value_heads": 2,
            "head_dim": 8, "pad_token_id": 0}  # fmt: skip
    for model_type in types:
        config = transformers.AutoConfig.for_model(model_type)
        for key, value in tiny.items():
            if key in ("num_key_value_heads", "head_dim") and not hasattr(config, key):
                continue
            try:
                setattr(config, key, value)
            except (AttributeError, TypeError, NotImplementedError):
                pass  # a derived property in this config (Falcon's head_dim, Funnel's layers)
        if not hasattr(config, "bos_token_id"):
            config.bos_token_id = None  # transformers' padding check reads it; Funnel's config has none
        model = transformers.AutoModelForSequenceClassification.from_config(config).eval()
        runs = {method: functools.partial(run, model) for method, run in methods.items()}
        print(f"{model_type} {_run_methods(runs)}", flush=True)


def _sweep_transformers_vision(types: list[str] | None, methods: list[str], sizes: str) -> None:
    transformers = real_models.transformers()
    transformers.logging.set_verbosity_error()
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    tiny = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
            "image_size": 32, "patch_size": 8}  # fmt: skip
    names = types or [
        name for name in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES if name not in HF_VISION_SKIPPED
    ]
    for name in names:
        config = transformers.AutoConfig.for_model(name)
        config.num_labels = 5
        if sizes == "tiny":
            for key, value in tiny.items():
                if hasattr(config, key):
                    try:
                        setattr(config, key, value)
                    except Exception:  # a derived property, or a validated field of another type
                        pass
        elif hasattr(config, "depths"):
            config.depths = [1] * len(config.depths)
        elif hasattr(config, "num_hidden_layers"):
            config.num_hidden_layers = 2
        try:
            model = transformers.AutoModelForImageClassification.from_config(config).eval()
        except Exception as error:  # a config the tiny sizes do not fit: reported, as a refusal is
            print(f"{name} BUILD {type(error).__name__}: {str(error)[:100]}", flush=True)
            continue
        _redraw_zero_heads(model)
        size = getattr(config, "image_size", None)
        if sizes == "tiny":
            size = max(size, 32) if isinstance(size, int) else 32
        elif not isinstance(size, int):
            size = 224
        channels = getattr(config, "num_channels", 3)
        x = torch.rand(1, channels, size, size, generator=torch.Generator().manual_seed(0))
        runs = {method: functools.partial(METHODS[method], model, x, 0) for method in methods}
        print(f"{name} {size} {_run_methods(runs)}", flush=True)


def _run_methods(runs: dict[str, Callable[[], torch.Tensor]]) -> str:
    """Each method's verdict on one model, ``ok``, ``NONFINITE`` or the error, and their time."""
    start, results = time.perf_counter(), []
    for method, run in runs.items():
        try:
            attribution = run()
            results.append(f"{method}:{'ok' if bool(torch.isfinite(attribution).all()) else 'NONFINITE'}")
        except Exception as error:  # the sweep reports refusals, it does not stop at them
            results.append(f"{method}:FAIL[{type(error).__name__}: {str(error)[:120]}]")
    return f"{time.perf_counter() - start:.1f}s {' '.join(results)}"


def _timm_size(model: torch.nn.Module) -> int:
    """96 where the model runs on it (most CNNs), else the model's own input size."""
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, 96, 96))
        return 96
    except Exception:
        return int(model.pretrained_cfg["input_size"][-1])


if __name__ == "__main__":
    main()
