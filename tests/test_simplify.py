"""Simplify: dead channels leave the model, the function stays (float64-exact), on real architectures."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from edgeprune import models
from edgeprune.checkpoint import load_model, save_model
from edgeprune.errors import GraphError, VerificationError
from edgeprune.metrics import count_macs, count_params
from edgeprune.simplify import SimplifyOptions, simplify

LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)


def kill_channels(model: nn.Module, fraction: float = 0.5, seed: int = 0) -> nn.Module:
    """Zero the weight rows of a random ``fraction`` of every layer's outputs (SeReNe-style
    structured sparsity) and give biases and BN statistics values far from their defaults, so
    every dead channel still carries a non-zero constant that simplify must fold."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LAYERS):
                rows = module.weight.shape[0]
                module.weight[torch.randperm(rows, generator=gen)[: int(rows * fraction)]] = 0
                if module.bias is not None:
                    module.bias.uniform_(-0.5, 0.5, generator=gen)
            elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                module.running_mean.uniform_(-1, 1, generator=gen)
                module.running_var.uniform_(0.5, 2, generator=gen)
                module.weight.data.uniform_(0.5, 1.5, generator=gen)
                module.bias.data.uniform_(-0.5, 0.5, generator=gen)
    return model.eval()


def assert_simplified(model: nn.Module, shape: tuple[int, ...], **kwargs) -> tuple[nn.Module, dict]:
    """Simplify and check the proof, an independent float32 comparison, and that it got smaller."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    result = simplify(model, x[:1], **kwargs)
    report = result.report
    assert report["max_abs_diff_float64"] <= 1e-9
    fresh = torch.randn(2, *shape[1:], generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, got = model(fresh), result.model(fresh)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    if report["channels_removed"]:
        assert count_params(result.model) < count_params(model)
        macs_before = count_macs(model, x[:1])  # 0 for aten graphs loaded from .pt2: nothing to compare
        assert count_macs(result.model, x[:1]) < macs_before or macs_before == 0
    return result.model, report


ARCHITECTURES = {
    "lenet300": (lambda: models.lenet300(), (1, 1, 28, 28)),
    "lenet5": (lambda: models.lenet5(input_size=28), (1, 1, 28, 28)),
    "resnet20-A": (lambda: models.resnet20(shortcut="A"), (1, 3, 32, 32)),
    "resnet32-B": (lambda: models.resnet32(shortcut="B"), (1, 3, 32, 32)),
    "resnet18-like": (lambda: models.resnet18_like(), (1, 3, 32, 32)),
    "mobilenetv2-like": (lambda: models.mobilenetv2_like(), (1, 3, 32, 32)),
    "densenet-like": (lambda: models.densenet_like(), (1, 3, 32, 32)),
    "se-net": (lambda: models.se_net(), (1, 3, 32, 32)),
    "conv1d": (lambda: models.conv1d_net(), (1, 1, 64)),
}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_half_dead_architectures_shrink_and_compute_the_same_function(arch):
    build, shape = ARCHITECTURES[arch]
    model = kill_channels(build())
    _, report = assert_simplified(model, shape)
    assert report["channels_removed"] > 0
    assert report["refused_channels"] == 0
    if arch not in ("lenet300", "lenet5", "conv1d"):  # the others end in global pooling
        assert report["resolutions"] == "32x32, 40x40"  # proven at a second resolution: no resolution lock


@pytest.mark.slow
def test_vgg16_with_batchnorm():
    model = kill_channels(models.vgg16_cifar())
    simplified, report = assert_simplified(model, (1, 3, 32, 32))
    assert report["batchnorm_folded"] == 13
    assert count_params(simplified) < 0.35 * count_params(model)


def test_residual_stream_narrows_for_real_with_zero_padding_shortcuts():
    """Dead channels of the whole residual stream (all writers zero) leave every block, and the
    padding amounts of the option-A shortcuts shrink with them."""
    model = kill_channels(models.resnet20(shortcut="A"), fraction=0.25)
    with torch.no_grad():
        for name, module in model.named_modules():
            if name == "conv1" or name.endswith("conv2"):
                out = module.weight.shape[0]
                module.weight[out // 2 : out // 2 + 4] = 0  # the same 4 channels of each stage's stream
    simplified, report = assert_simplified(model, (1, 3, 32, 32))
    stream = [row for row in report["groups"] if row["first_producer"] == "conv1"][0]
    assert stream["removed"] >= 4
    widths = {m.weight.shape[0] for n, m in simplified.named_modules() if n.endswith("conv2")}
    assert max(widths) <= 64 - 4
    pads = [n for n in simplified.graph.nodes if "pad" in str(n.target)]
    assert pads and all(sum(n.args[1][4:6]) < 64 for n in pads)


class _ActivationNet(nn.Module):
    """conv -> BN -> activation -> (zero-padded conv, and Flatten -> Linear)."""

    def __init__(self, activation: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.act = activation
        self.next = nn.Conv2d(6, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8 + 6 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.bn(self.conv(x)))
        side = torch.flatten(F.max_pool2d(h, 2), 1)
        return self.fc(torch.cat([torch.flatten(self.next(h), 1), side], 1))


@pytest.mark.parametrize(
    "activation",
    [
        nn.ReLU(),
        nn.LeakyReLU(0.1),
        nn.Sigmoid(),
        nn.GELU(),
        nn.SiLU(),
        nn.Hardswish(),
        nn.ReLU6(),
        nn.Tanh(),
        nn.PReLU(6, init=0.2),
    ],
    ids=lambda a: type(a).__name__,
)
def test_constant_of_a_dead_channel_goes_through_the_real_activation(activation):
    model = _ActivationNet(activation).eval()
    with torch.no_grad():
        model.conv.weight[[1, 4]] = 0
        model.conv.bias[[1, 4]] = torch.tensor([0.7, -0.7])
        model.bn.running_mean.uniform_(-0.3, 0.3)
        model.bn.bias.data.uniform_(-0.5, 0.5)
    simplified, report = assert_simplified(model, (1, 3, 8, 8))
    assert report["channels_removed"] == 2
    assert simplified.get_submodule("next").in_channels == 4
    assert report["border_corrections"] >= (1 if not isinstance(activation, nn.ReLU) else 0)


def test_dropping_the_constant_instead_of_folding_it_would_be_detected():
    """The proof is not vacuous: removing the dead channel without folding its constant changes
    the output by far more than the tolerance (this is what Torch-Pruning does)."""
    model = _ActivationNet(nn.Sigmoid()).eval()
    with torch.no_grad():
        model.conv.weight[2] = 0
    x = torch.randn(3, 3, 8, 8)
    sliced = _ActivationNet(nn.Sigmoid()).eval()
    sliced.load_state_dict(model.state_dict())
    with torch.no_grad():
        sliced.next.weight[:, 2] = 0  # what plain slicing amounts to
        sliced.fc.weight[:, 256 + 2 * 16 : 256 + 3 * 16] = 0
    with torch.no_grad():
        assert float((model(x) - sliced(x)).abs().max()) > 1e-2
    assert simplify(model, x[:1]).report["max_abs_diff_float64"] <= 1e-9


def test_weights_that_sum_to_zero_are_alive_and_kept():
    model = models.lenet5(input_size=8).eval()
    with torch.no_grad():
        model.conv1.weight[5] = 0
        model.conv1.weight[5, 0, 0, 0], model.conv1.weight[5, 0, 1, 1] = 1.0, -1.0
        model.conv1.weight[6] = 0
    simplified, report = assert_simplified(model, (1, 1, 8, 8))
    assert report["channels_removed"] == 1
    assert simplified.get_submodule("conv1").out_channels == 19


def test_final_classifier_keeps_its_width_even_with_dead_rows():
    model = models.lenet300(in_features=64).eval()
    with torch.no_grad():
        model.fc3.weight[[0, 3]] = 0
        model.fc2.weight[:10] = 0
    simplified, report = assert_simplified(model, (1, 1, 8, 8))
    assert simplified.get_submodule("fc3").out_features == 10
    assert report["channels_removed"] == 10


def test_reused_module_is_shrunk_once_and_stays_shared():
    class Reused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 1)
            self.shared = nn.Conv2d(8, 8, 1)
            self.head = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.leaky_relu(self.shared(F.relu(self.shared(F.relu(self.stem(x))))), 0.1)
            return self.head(x.mean((2, 3)))

    model = Reused().eval()
    with torch.no_grad():
        for layer in (model.stem, model.shared):
            layer.weight[[2, 5]] = 0
            layer.bias[[2, 5]] = torch.tensor([0.4, -0.3])
    simplified, report = assert_simplified(model, (1, 3, 6, 6))
    assert report["channels_removed"] == 2
    assert count_params(simplified) < count_params(model)
    assert sum(1 for n in simplified.graph.nodes if n.op == "call_module" and n.target == "shared") == 2


def test_padded_conv_constants_can_be_refused_instead_of_corrected():
    model = _ActivationNet(nn.Sigmoid()).eval()
    with torch.no_grad():
        model.conv.weight[3] = 0
    _, report = assert_simplified(model, (1, 3, 8, 8), options=SimplifyOptions(padded_constants="refuse"))
    assert report["channels_removed"] == 0 and report["refused_channels"] == 1
    assert "zero-padded" in report["refusals"][0]["reason"]


def test_channel_whose_value_is_not_constant_is_refused():
    """count_include_pad average pooling makes a dead channel's borders differ from its inside."""

    class BorderPool(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.head = nn.Conv2d(4, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.avg_pool2d(self.conv(x), 3, 1, 1, count_include_pad=True)).mean((2, 3))

    model = BorderPool().eval()
    with torch.no_grad():
        model.conv.weight[1] = 0
        model.conv.bias[1] = 0.9
    _, report = assert_simplified(model, (1, 3, 10, 10))
    assert report["channels_removed"] == 0
    assert "not constant" in report["refusals"][0]["reason"]


def test_simplifying_a_loaded_pt2_graph_module(tmp_path):
    model = kill_channels(models.resnet20(shortcut="A"), fraction=0.5, seed=3)
    x = torch.randn(1, 3, 32, 32)
    save_model(model, x, tmp_path / "pruned.pt2")
    loaded = load_model(tmp_path / "pruned.pt2").model
    simplified, report = assert_simplified(loaded, (1, 3, 32, 32))
    assert report["channels_removed"] > 0
    save_model(simplified, x, tmp_path / "simplified.pt2")
    reloaded = torch.export.load(tmp_path / "simplified.pt2").module()
    torch.testing.assert_close(reloaded(x), model(x), rtol=1e-4, atol=1e-4)


def test_untraceable_model_is_refused_with_a_clear_error():
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) if float(x.sum()) > 0 else self.fc(-x)

    with pytest.raises(GraphError, match="cannot trace"):
        simplify(DataDependent(), torch.randn(1, 4))


def test_a_wrong_rewrite_fails_the_proof_and_names_the_layer(monkeypatch):
    import edgeprune.simplify as simplify_module

    real_build = simplify_module.build_model

    def corrupted(plan):
        gm = real_build(plan)
        with torch.no_grad():
            gm.get_submodule("conv2").bias[0] += 1e-3
        return gm

    monkeypatch.setattr(simplify_module, "build_model", corrupted)
    model = kill_channels(models.lenet5(input_size=8))
    with pytest.raises(VerificationError, match=r"first diverging layer: .*\(conv2\)"):
        simplify(model, torch.randn(1, 1, 8, 8))


def test_simplified_model_exports_to_onnx_without_edgeprune_modules(tmp_path):
    import onnxruntime as ort

    model = kill_channels(models.mobilenetv2_like())
    x = torch.randn(1, 3, 32, 32)
    simplified = simplify(model, x).model
    assert all(type(m).__module__.startswith("torch.") for m in simplified.modules())
    torch.onnx.export(simplified, (x,), tmp_path / "m.onnx", dynamo=True, verbose=False)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), model(x).detach(), rtol=1e-4, atol=1e-4)


class _SplitSliceNet(nn.Module):
    """Channel chunk, concat, a channel slice and a strided channel slice (ShuffleNet-style plumbing)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.branch = nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(12, 6, 3)
        self.side = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        a, b = x.chunk(2, dim=1)
        y = torch.cat([a, F.gelu(self.branch(b))], 1)
        h = self.head(y[:, 2:14]).mean((2, 3))
        s = self.side(y[:, ::2]).mean((2, 3))
        return self.fc(torch.cat([h, s], 1))


def test_chunk_concat_and_channel_slices_are_rewritten_to_the_kept_channels(tmp_path):
    import onnxruntime as ort

    model = _SplitSliceNet().eval()
    with torch.no_grad():
        model.stem.weight[[1, 3, 9, 12]] = 0
        model.branch.weight[[4, 5]] = 0
        model.head.weight[2] = 0
    simplified, report = assert_simplified(model, (1, 3, 10, 10))
    assert report["channels_removed"] == 7
    # stem keeps 12 of 16 channels; the slices now pick the kept ones (one needs an index_select)
    assert simplified.get_submodule("stem").out_channels == 12
    assert simplified.get_submodule("head").in_channels < 12
    x = torch.randn(1, 3, 10, 10)
    torch.onnx.export(simplified, (x,), tmp_path / "m.onnx", dynamo=True, verbose=False)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), model(x).detach(), rtol=1e-4, atol=1e-4)


def test_unsupported_ops_freeze_only_their_own_channels():
    """A transposed conv is outside the channel rules: its input channels stay, the rest shrinks."""

    class WithTransposed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.up = nn.ConvTranspose2d(8, 6, 2, stride=2)
            self.post = nn.Conv2d(6, 4, 1)
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(F.relu(self.post(F.relu(self.up(F.relu(self.conv(x)))))).mean((2, 3)))

    model = WithTransposed().eval()
    with torch.no_grad():
        model.conv.weight[[0, 1]] = 0
        model.post.weight[[2]] = 0
    simplified, report = assert_simplified(model, (1, 3, 8, 8))
    assert simplified.get_submodule("conv").out_channels == 8
    assert simplified.get_submodule("post").out_channels == 3
    frozen = [row for row in report["groups"] if row["first_producer"] == "conv"][0]
    assert "conv_transpose" in frozen["note"]


@pytest.mark.parametrize("flatten", ["view", "reshape"])
def test_flattening_by_view_or_reshape_before_a_linear(flatten):
    class ViewNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3)
            self.fc = nn.Linear(8 * 6 * 6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.relu(self.conv(x))
            h = h.view(h.size(0), -1) if flatten == "view" else h.reshape(-1, 8 * 6 * 6)
            return self.fc(h)

    model = ViewNet().eval()
    with torch.no_grad():
        model.conv.weight[[0, 5]] = 0
        model.conv.bias[[0, 5]] = torch.tensor([0.3, -0.2])
    simplified, report = assert_simplified(model, (1, 1, 8, 8))
    assert report["channels_removed"] == 2
    assert simplified.get_submodule("fc").in_features == 6 * 36


class _PaddedChain(nn.Module):
    """conv -> sigmoid -> ``next`` (zero-padded) -> SiLU -> mean -> Linear: a dead conv channel sends
    sigmoid(0) = 0.5 into the padded ``next``, the case the padded-constant modes are about."""

    def __init__(self, next_conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.next = next_conv
        self.fc = nn.Linear(next_conv.out_channels, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.silu(self.next(torch.sigmoid(self.conv(x)))).mean((2, 3)))


def padded_chain(next_conv: nn.Conv2d) -> nn.Module:
    """A _PaddedChain with conv channels 1, 2 and 6 dead."""
    model = _PaddedChain(next_conv).eval()
    with torch.no_grad():
        model.conv.weight[[1, 2, 6]] = 0
    return model


def test_carrier_mode_folds_padded_constants_into_one_kept_dead_channel():
    """No border op at all: the kept carrier's column absorbs the others, exactly, at any resolution."""
    model = padded_chain(nn.Conv2d(8, 6, 3, padding=1, stride=2))
    simplified, report = assert_simplified(model, (1, 3, 9, 9), options=SimplifyOptions(padded_constants="carrier"))
    assert report["carrier_channels"] == 1 and report["border_corrections"] == 0
    assert report["channels_removed"] == 2 and simplified.get_submodule("next").in_channels == 6
    assert report["resolutions"] == "9x9, 16x16"
    _, border = assert_simplified(model, (1, 3, 9, 9))
    assert border["border_corrections"] == 1 and border["channels_removed"] == 3


def test_map_mode_adds_the_padded_constants_as_one_precomputed_map_at_a_fixed_resolution():
    """No conv for the correction: one constant map, exact at the example's resolution only - and the
    model says so (fixed_resolution) instead of silently computing something else at another size."""
    model = padded_chain(nn.Conv2d(8, 6, 3, padding=(1, 2), stride=2, dilation=(1, 2)))
    simplified, report = assert_simplified(model, (1, 3, 9, 11), options=SimplifyOptions(padded_constants="map"))
    assert report["border_corrections"] == 0 and report["channels_removed"] == 3
    assert report["fixed_resolution"] and report["resolutions"] == "9x11"
    assert not any(isinstance(m, nn.Conv2d) and m.in_channels == 1 for m in simplified.modules())
    with pytest.raises(RuntimeError):
        simplified(torch.randn(1, 3, 16, 16))
    _, border = assert_simplified(model, (1, 3, 9, 11))
    assert border["border_corrections"] == 1 and not border["fixed_resolution"]


def test_models_with_several_outputs_are_compared_output_by_output():
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.cls = nn.Linear(8, 4)
            self.box = nn.Conv2d(8, 2, 1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            h = F.relu(self.conv(x))
            return self.cls(h.mean((2, 3))), {"boxes": self.box(h)}

    model = TwoHeads().eval()
    with torch.no_grad():
        model.conv.weight[[1, 4]] = 0
    x = torch.randn(2, 3, 9, 9)
    result = simplify(model, x[:1])
    assert result.report["channels_removed"] == 2 and result.report["max_abs_diff_float64"] <= 1e-9
    (logits, extra), (ref_logits, ref_extra) = result.model(x), model(x)
    torch.testing.assert_close(logits, ref_logits)
    torch.testing.assert_close(extra["boxes"], ref_extra["boxes"])


@settings(max_examples=6, deadline=None, derandomize=True)
@given(fraction=st.floats(0.05, 1.0), seed=st.integers(0, 10_000), mode=st.sampled_from(["border", "carrier", "map"]))
def test_random_structured_zeroing_of_a_zero_padding_resnet_stays_exact(fraction, seed, mode):
    """Any amount of dead channels, including all of them: still exact, never an empty tensor."""
    model = kill_channels(models.resnet20(shortcut="A"), fraction, seed)
    assert_simplified(model, (1, 3, 16, 16), options=SimplifyOptions(padded_constants=mode))


def test_a_user_registered_operator_family_unfreezes_its_channels(monkeypatch):
    """``register_op``: one class teaches both the analysis and the rewrite about a new op."""
    from edgeprune.graph import ops

    class Flipped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.post = nn.Conv2d(8, 4, 1)
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(F.relu(self.post(torch.flip(F.relu(self.conv(x)), dims=[3]))).mean((2, 3)))

    def make() -> nn.Module:
        model = Flipped().eval()
        with torch.no_grad():
            model.conv.weight[[0, 1, 5]] = 0
        return model

    simplified, report = assert_simplified(make(), (1, 3, 8, 8))
    assert simplified.get_submodule("conv").out_channels == 8  # flip is unknown: its channels are frozen
    assert any("flip" in (row["note"] or "") for row in report["groups"])

    class Flip(ops.OpFamily):
        names = frozenset({"flip"})

        def couple(self, ctx, node):
            if 1 in [d % ctx.value(node).dim() for d in node.args[1]]:
                ctx.unknown(node, "flip of the channel axis")
            else:
                ctx.vec[node.name] = ctx.vector_of(node.args[0])

    monkeypatch.setattr(ops, "_REGISTRY", dict(ops._REGISTRY))
    ops.register_op(Flip())
    simplified, _ = assert_simplified(make(), (1, 3, 8, 8))
    assert simplified.get_submodule("conv").out_channels == 5
