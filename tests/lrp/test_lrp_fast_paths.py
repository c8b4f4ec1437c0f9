"""The engine's shortcuts give what the plain formulas give: the flat rule summed over output
channels (against the layer written as a dense matrix), the cached plan (also after a submodule
or a parameter changes), the registered-composite cache, dropping forward values no relevance
step reads and in-place ReLUs (against a pass that keeps every value), the early backend check."""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch
from torch import nn

import fastxai.lrp as lrp
from fastxai.lrp import Composite, _graph, _plans, composites, rules


@pytest.fixture(autouse=True)
def _float64() -> object:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _as_matrix(layer: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    """The layer (without bias) as a dense matrix W [J, I] on flattened inputs of one sample."""
    size = int(torch.tensor(shape).prod())
    eye = torch.eye(size).view(size, *shape)
    with torch.no_grad():
        return (layer(eye) - layer(torch.zeros(1, *shape))).flatten(1).T


FLAT_LAYERS = {
    "conv2d": (lambda: nn.Conv2d(2, 3, 3, padding=1), (2, 5, 6)),
    "conv2d-stride2": (lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1), (2, 7, 5)),
    "conv2d-dilation2": (lambda: nn.Conv2d(2, 3, 3, dilation=2, padding=2), (2, 6, 6)),
    "conv2d-groups2": (lambda: nn.Conv2d(4, 6, 3, padding=1, groups=2), (4, 5, 5)),
    "conv2d-same": (lambda: nn.Conv2d(2, 3, (3, 5), padding="same"), (2, 5, 7)),
    "conv2d-empty-fields": (lambda: nn.Conv2d(1, 2, 1, padding=1), (1, 3, 3)),  # border sees only padding
    "conv1d": (lambda: nn.Conv1d(2, 3, 4, stride=2, padding=1), (2, 9)),
    "conv3d": (lambda: nn.Conv3d(2, 2, 2, padding=1), (2, 3, 3, 2)),
    "linear-tokens": (lambda: nn.Linear(4, 3), (5, 4)),
}


@pytest.mark.parametrize("name", list(FLAT_LAYERS))
def test_flat_matches_dense_oracle(name: str) -> None:
    """R_i = sum_j [i in field(j)] / |field(j)| R_j with the layer as a matrix (|field| = 0: R_j lost)."""
    make, shape = FLAT_LAYERS[name]
    torch.manual_seed(5)
    layer = make().double()
    net = nn.Sequential(layer, nn.Flatten(), nn.LazyLinear(2, bias=False)).double()
    x = torch.rand(3, *shape)
    net(x)
    net.eval()
    R = lrp(net, x, target=1, composite={"0": rules.Flat(0.0), "2": rules.Epsilon(0.0)})
    connected = (_as_matrix(layer, shape) != 0).double()
    with torch.no_grad():
        R_out = net[1](layer(x)) * net[2].weight[1]  # LRP-0 on the bias-free head
    sizes = connected.sum(1)
    expected = torch.where(sizes > 0, R_out / sizes.clamp(min=1), 0.0) @ connected
    assert R.is_contiguous()
    torch.testing.assert_close(R.flatten(1), expected, rtol=1e-10, atol=1e-14)


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 3 * 3, 3),
    ).eval()  # fmt: skip


def test_plan_cache_follows_replaced_submodule_and_parameters() -> None:
    net = _net()
    x = torch.rand(2, 2, 6, 6)
    lrp(net, x, target=0)
    net[4] = nn.Conv2d(4, 4, 3, padding=1).double()  # new object: the cached plan is stale
    torch.testing.assert_close(lrp(net, x, target=0), lrp(copy.deepcopy(net), x, target=0))
    with torch.no_grad():
        net[7].weight.mul_(-2.0)  # in place: parameters are read at every call
        net[1].running_var.mul_(3.0)
    torch.testing.assert_close(lrp(net, x, target=0), lrp(copy.deepcopy(net), x, target=0))


def test_plan_cache_follows_composite_changes() -> None:
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(3, 2)).eval()
    x = torch.rand(2, 2, 4, 4)
    composite = Composite([(nn.Conv2d, rules.ZPlus())], stabilizer=1e-6)
    first = lrp(net, x, target=0, composite=composite)
    composite.stabilizer = 0.5  # the average pooling's epsilon
    second = lrp(net, x, target=0, composite=composite)
    torch.testing.assert_close(
        second, lrp(net, x, target=0, composite=Composite([(nn.Conv2d, rules.ZPlus())], stabilizer=0.5))
    )
    assert not torch.allclose(first, second)
    composite.layer_map[0] = ((nn.Conv2d,), rules.Epsilon(0.0))
    torch.testing.assert_close(
        lrp(net, x, target=0, composite=composite),
        lrp(net, x, target=0, composite=Composite([(nn.Conv2d, rules.Epsilon(0.0))], stabilizer=0.5)),
    )


def test_cached_plan_does_not_keep_the_model_alive() -> None:
    net = _net()
    alive = weakref.ref(net)
    lrp(net, torch.rand(1, 2, 6, 6), target=0)
    del net
    gc.collect()
    assert alive() is None


def test_registered_composite_cache_follows_reregistration() -> None:
    net = _net()
    x = torch.rand(2, 2, 6, 6)
    name = "_test_fast_paths_composite"
    try:
        composites.register_composite(name)(lambda: composites.Composite([(nn.Conv2d, rules.ZPlus())]))
        first = lrp(net, x, target=1, composite=name)
        composites.register_composite(name)(lambda: composites.Composite([(nn.Conv2d, rules.Flat())]))
        second = lrp(net, x, target=1, composite=name)
    finally:
        composites.COMPOSITES.pop(name, None)
    torch.testing.assert_close(first, lrp(net, x, target=1, composite={nn.Conv2d: rules.ZPlus()}))
    torch.testing.assert_close(second, lrp(net, x, target=1, composite={nn.Conv2d: rules.Flat()}))


@pytest.mark.parametrize("composite", sorted(composites.COMPOSITES))
def test_dropped_values_and_inplace_relus_change_nothing(composite: str) -> None:
    net = _net(3)
    keep_all = copy.deepcopy(net)
    x = torch.rand(2, 2, 6, 6) * 2 - 1 if composite != "epsilon_gamma_box" else torch.rand(2, 2, 6, 6)
    lrp(keep_all, x, target=2, composite=composite)
    for plan in _plans._PLANS[keep_all].values():
        plan.release = {}  # keep every value, and no ReLU in place
        for step in plan.steps.values():
            step.extra.pop("inplace", None)
    R, layers = lrp(net, x, target=2, composite=composite, return_layer_relevances=True)
    R_kept, layers_kept = lrp(keep_all, x, target=2, composite=composite, return_layer_relevances=True)
    assert any(_plans._PLANS[net][key].release for key in _plans._PLANS[net])
    torch.testing.assert_close(R, R_kept, rtol=0, atol=0)
    for name in layers:
        torch.testing.assert_close(layers[name], layers_kept[name], rtol=0, atol=0)


def test_unread_values_are_dropped_read_ones_kept() -> None:
    """z+ layers do not read their output (it is recomputed with W+), winner-take-all max
    pooling reads only its input's shape; a conv's input and the model output are kept."""
    net = _net()
    plan = _plans.annotate(_graph.build_plan(net, composites.resolve_composite("epsilon_plus")))
    released = {value.name for values in plan.release.values() for value in values}
    assert released == {"_0", "_1", "_2", "_4"}  # conv (merged), its BatchNorm, ReLU, conv (z+)


def test_named_backend_is_checked_before_the_model_runs() -> None:
    net = _net()
    calls: list[int] = []
    net[0].register_forward_pre_hook(lambda module, args: calls.append(1))
    with pytest.raises(TypeError, match="backend 'native'"):
        lrp(net, torch.rand(1, 2, 6, 6), target=0, backend="native")  # float64: no native kernel
    assert calls == []
    R = lrp(net.float(), torch.rand(1, 2, 6, 6, dtype=torch.float32), target=0, backend="reference")
    assert R.dtype == torch.float32 and calls == [1, 1]  # the pass, and the model's own row (_same_output)


class _Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.skip, self.conv = nn.Identity(), nn.Conv2d(2, 2, 3, padding=1)
        self.relu1, self.relu2, self.relu3 = nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.head = nn.Linear(2 * 6 * 6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu1(self.skip(x))  # the user's input: never overwritten
        z = self.conv(y)
        z = self.relu3(self.relu2(z) + z)  # z is read twice: not overwritten either
        return self.head(torch.flatten(z, 1))


def test_inplace_relu_only_on_fresh_values_nothing_else_reads() -> None:
    torch.manual_seed(0)
    net = _Shared().eval()
    plan = _plans.annotate(_graph.build_plan(net, composites.resolve_composite("epsilon_plus")))
    assert not any("inplace" in step.extra for step in plan.steps.values())
    x = torch.rand(2, 2, 6, 6) * 2 - 1
    x_before = x.clone()
    lrp(net, x, target=1, composite="epsilon_plus")
    torch.testing.assert_close(x, x_before, rtol=0, atol=0)
    vgg = _net()
    plan = _plans.annotate(_graph.build_plan(vgg, composites.resolve_composite("epsilon_plus")))
    assert [node.name for node, step in plan.steps.items() if "inplace" in step.extra] == ["_2", "_5"]
