"""A .pt2 is inspected before torch.export.load: nothing in it can run code without --trust-checkpoint."""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from edgeprune import models
from edgeprune.checkpoint import load_model, save_model
from edgeprune.errors import CheckpointError


class _Payload:
    """Unpickling this creates a marker file - the code execution the loader must never reach."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def pt2(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pt2") / "lenet.pt2"
    return save_model(models.lenet5(input_size=8).eval(), torch.zeros(1, 1, 8, 8), path)


def rewrite(
    src: Path, dest: Path, edit: Callable[[str, bytes], bytes | None], add: dict[str, bytes] | None = None
) -> Path:
    """Copy the zip ``src`` to ``dest``, passing every member through ``edit`` (None drops it)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        root = zin.namelist()[0].split("/", 1)[0] + "/"
        for info in zin.infolist():
            data = edit(info.filename[len(root) :], zin.read(info))
            if data is not None:
                zout.writestr(info.filename, data)
        for name, data in (add or {}).items():
            zout.writestr(root + name, data)
    return dest


def pickled(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save(_Payload(marker), buffer)
    return buffer.getvalue()


def json_edit(name: str, change: Callable[[dict], None]) -> Callable[[str, bytes], bytes]:
    def edit(member: str, data: bytes) -> bytes:
        if member != name:
            return data
        doc = json.loads(data)
        change(doc)
        return json.dumps(doc).encode()

    return edit


def _use_pickle(doc: dict) -> None:
    first = next(iter(doc["config"].values()))
    first["use_pickle"] = True


def _opaque_constant(doc: dict) -> None:
    doc["config"]["evil"] = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": False, "tensor_meta": None}


def _guard(doc: dict) -> None:
    doc["guards_code"] = ["__import__('os').system('touch marker') or True"]


def _target(doc: dict) -> None:
    doc["graph_module"]["graph"]["nodes"][0]["target"] = "torch.os.system"


def _expr(doc: dict) -> None:
    doc["graph_module"]["graph"].setdefault("sym_int_values", {})["evil"] = {
        "as_expr": {"expr_str": "open('marker', 'w')", "hint": None}
    }


CASES = {
    "use_pickle weight": ("data/weights/model_weights_config.json", _use_pickle, "as a pickle"),
    "opaque constant": ("data/constants/model_constants_config.json", _opaque_constant, "unknown payload"),
    "guard code": ("models/model.json", _guard, "guard code"),
    "operator target": ("models/model.json", _target, "not an aten operator"),
    "shape expression": ("models/model.json", _expr, "shape expression"),
}


def _assert_refused(runner, cli, path: Path, message: str, tmp_path: Path) -> None:  # noqa: ANN001
    with pytest.raises(CheckpointError, match=message):
        load_model(path)
    out = tmp_path / "out"
    result = runner.invoke(cli, ["simplify", str(path), "-o", str(out / "s.pt2")])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error:") and "--trust-checkpoint" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("case", sorted(CASES))
def test_archive_json_that_would_run_code_is_refused(runner, cli, pt2, tmp_path, case):
    member, change, message = CASES[case]
    evil = rewrite(pt2, tmp_path / "evil.pt2", json_edit(member, change))
    _assert_refused(runner, cli, evil, message, tmp_path)


def test_pickled_weight_payload_never_runs(runner, cli, pt2, tmp_path):
    marker = tmp_path / "pwned"

    def edit(member: str, data: bytes) -> bytes:
        if member == "data/weights/weight_0":
            return pickled(marker)
        return json_edit("data/weights/model_weights_config.json", _use_pickle)(member, data)

    _assert_refused(runner, cli, rewrite(pt2, tmp_path / "evil.pt2", edit), "as a pickle", tmp_path)
    assert not marker.exists()


def test_pickled_sample_inputs_never_run(runner, cli, pt2, tmp_path):
    marker = tmp_path / "pwned"
    evil = rewrite(
        pt2, tmp_path / "evil.pt2", lambda m, d: pickled(marker) if m == "data/sample_inputs/model.pt" else d
    )
    _assert_refused(runner, cli, evil, "sample inputs", tmp_path)
    assert not marker.exists()


def test_legacy_pickle_payloads_and_unknown_files_are_refused(runner, cli, pt2, tmp_path):
    marker = tmp_path / "pwned"
    evil = rewrite(pt2, tmp_path / "evil.pt2", lambda m, d: d, add={"data/weights/model.pt": pickled(marker)})
    _assert_refused(runner, cli, evil, "unknown payload", tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "[1, 2]",
        '"1,1,8,8"',
        '{"input_shape": [1, -1, 8, 8]}',
        '{"input_shape": [1, 65536, 65536]}',
        '{"input_shape": [' + "1" * 5000 + "]}",  # past Python's int-digit limit: a ValueError, not a JSONDecodeError
    ],
)
def test_invalid_edgeprune_json_is_one_line(runner, cli, pt2, tmp_path, text):
    bad = rewrite(pt2, tmp_path / "bad.pt2", lambda m, d: text.encode() if m == "extra/edgeprune.json" else d)
    with pytest.raises(CheckpointError, match="edgeprune.json"):
        load_model(bad)


def test_plain_archives_still_load(pt2):
    assert load_model(pt2).example_input.shape == (1, 1, 8, 8)


def test_a_graph_that_only_takes_its_traced_batch_is_one_line(runner, cli, tmp_path):
    """A static batch is re-exported dynamic (tests/test_pt2_inputs.py); a graph that hard-codes it is refused."""

    class FixedBatch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.reshape(1, 64))

    program = torch.export.export(FixedBatch().eval(), (torch.zeros(1, 1, 8, 8),))
    path = tmp_path / "static.pt2"
    torch.export.save(program, path)
    with pytest.raises(CheckpointError, match="fixed batch"):
        load_model(path)
    for command, extra in (("prune", ["--data", "digits"]), ("simplify", [])):
        out = tmp_path / f"out-{command}"
        result = runner.invoke(cli, [command, str(path), *extra, "-o", str(out)])
        assert result.exit_code == 2 and "fixed batch" in result.output and not out.exists()
