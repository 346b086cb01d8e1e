"""The .nnr topology is data: decoding a hostile file never runs code, and every bad graph is one line."""

from __future__ import annotations

import json
import sys
import tracemalloc
from pathlib import Path

import pytest
import torch
from support.nnr_streams import with_topology

from edgeprune import models
from edgeprune.errors import BitstreamError
from edgeprune.nnr.model import ModelEncodeOptions, decode_model, encode_model
from edgeprune.nnr.tensors import decode_stream
from edgeprune.nnr.topology import OPS

sys.path.insert(0, str(Path(__file__).parent))
from test_simplify import ARCHITECTURES, kill_channels  # noqa: E402


def _encode(model: torch.nn.Module, shape: tuple[int, ...]) -> bytes:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    return encode_model(model.eval(), x[:1], ModelEncodeOptions(qp=-40, threads=1)).data


@pytest.fixture(scope="module")
def lenet_nnr() -> bytes:
    torch.manual_seed(0)
    return _encode(models.lenet5(input_size=8), (1, 1, 8, 8))


def test_same_model_same_seed_gives_identical_bytes_without_temp_names(lenet_nnr):
    torch.manual_seed(0)
    again = _encode(models.lenet5(input_size=8), (1, 1, 8, 8))
    assert again == lenet_nnr
    assert b"/tmp" not in lenet_nnr and b"exported_program" not in lenet_nnr


def test_graph_is_small_next_to_the_weights(lenet_nnr):
    graph = json.dumps(decode_stream(lenet_nnr).topology["architecture"], separators=(",", ":"))
    assert len(graph) < 0.05 * len(lenet_nnr)


@pytest.mark.parametrize(
    "arch,simplified",
    [
        ("lenet5", False),
        ("densenet-like", True),
        ("resnet20-A", True),
        pytest.param("mobilenetv2-like", False, marks=pytest.mark.slow),
        pytest.param("resnet32-B", True, marks=pytest.mark.slow),
        ("conv1d", True),
    ],
)
def test_decoded_graph_computes_what_the_model_computes(arch, simplified):
    from edgeprune.simplify import simplify

    make, shape = ARCHITECTURES[arch]
    torch.manual_seed(0)  # the weights, so the coding error does not depend on which tests ran before
    model = kill_channels(make())
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    if simplified:
        model = simplify(model, x[:1]).model.float()
    # qp -60: a step far below every weight, so the only difference is a tiny quantisation error
    stream = encode_model(model, x[:1], ModelEncodeOptions(qp=-60, threads=1))
    decoded, example, _ = decode_model(stream.data)
    assert isinstance(decoded, torch.fx.GraphModule) and example.shape[1:] == x.shape[1:]
    assert sorted(decoded.state_dict()) == sorted(model.state_dict())
    batch = torch.randn(3, *shape[1:], generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, got = model(batch), decoded(batch)
    scale = expected.abs().max().item() + 1e-6
    # Weights at qp -60 are near-exact, but strictly positive 1-D tensors (BN variances, all-positive
    # biases) are coded at a step <= min/256, i.e. up to 2^-9 relative rounding each; a few layers of
    # those stay well inside 2^-7 of the output range, while a wrong operator is off by O(1).
    assert (got - expected).abs().max().item() <= 2.0**-7 * scale


def _run_decode(runner, cli, tmp_path: Path, data: bytes) -> tuple[int, str]:  # noqa: ANN001
    src = tmp_path / "evil.nnr"
    src.write_bytes(data)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    result = runner.invoke(cli, ["decode", str(src), "-o", str(out / "m.pt2")])
    assert list(out.iterdir()) == []  # nothing written
    return result.exit_code, result.output


def test_factory_named_in_the_file_is_never_called(runner, cli, lenet_nnr, tmp_path):
    marker = tmp_path / "pwned"
    evil = {"factory": "os:system", "kwargs": {"command": f"touch {marker}"}}
    data = with_topology(lenet_nnr, lambda t: {**t, "architecture": evil})
    code, output = _run_decode(runner, cli, tmp_path, data)
    assert not marker.exists()
    assert code == 2 and "never runs" in output and "Traceback" not in output


@pytest.mark.parametrize("op", ["os.system", "os:system", "builtins.eval", "__import__", "py.getattr"])
def test_operator_names_outside_the_table_are_refused(runner, cli, lenet_nnr, tmp_path, op):
    marker = tmp_path / "pwned"

    def edit(t):  # noqa: ANN001, ANN202
        t["architecture"]["graph"]["nodes"][0] = [op, [f"=touch {marker}"]]
        return t

    code, output = _run_decode(runner, cli, tmp_path, with_topology(lenet_nnr, edit))
    assert not marker.exists()
    assert code == 2 and "unknown operator" in output
    assert op not in OPS


HOSTILE_GRAPHS = {
    "forward reference": (lambda g: g["nodes"].__setitem__(0, ["relu", ["#5"]]), "points at no earlier node"),
    "dunder tensor": (lambda g: g["nodes"].__setitem__(0, ["relu", ["@__class__"]]), "does not contain"),
    "overflowing allocation": (lambda g: g["nodes"].__setitem__(1, ["new_ones", ["#1", [65536] * 4]]), "overflow"),
    "huge allocation": (
        lambda g: g["nodes"].__setitem__(1, ["new_ones", ["#1", [1, 4, 16384, 16384]]]),
        "would produce 1073741824 elements",
    ),
    "deep nesting": (lambda g: g["nodes"].__setitem__(1, ["relu", [[[[[[[1]]]]]]]]), "nested too deeply"),
    "bad kwargs": (lambda g: g["nodes"].__setitem__(1, ["relu", ["#1"], ["x"]]), "keyword arguments"),
    "unknown field": (lambda g: g.__setitem__("code", "print(1)"), "unknown field"),
    "wrong arity": (lambda g: g["nodes"].__setitem__(1, ["linear", ["#1"]]), "does not run"),
    "string out": (lambda g: g.__setitem__("out", {"eval": "x"}), "unsupported argument"),
    "not an object": (lambda g: g.clear() or g.update(v=[1]), "unknown record version"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_GRAPHS))
def test_hostile_graphs_are_one_line_without_allocating(runner, cli, lenet_nnr, tmp_path, case):
    mutate, message = HOSTILE_GRAPHS[case]

    def edit(t):  # noqa: ANN001, ANN202
        mutate(t["architecture"]["graph"])
        return t

    data = with_topology(lenet_nnr, edit)
    tracemalloc.start()
    try:
        with pytest.raises(BitstreamError, match=message):
            decode_model(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20
    code, output = _run_decode(runner, cli, tmp_path, data)
    assert code == 2 and output.startswith("error:") and len(output.strip().splitlines()) == 1


@pytest.mark.parametrize("architecture", [[1, 2], "os:system", 7])
def test_architecture_that_is_not_an_object(runner, cli, lenet_nnr, tmp_path, architecture):
    code, output = _run_decode(
        runner, cli, tmp_path, with_topology(lenet_nnr, lambda t: {**t, "architecture": architecture})
    )
    assert code == 2 and "not an object" in output
