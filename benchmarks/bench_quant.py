"""Rate-allocated INT8 levels: model.nnr size vs raw INT8, accuracy, and the data-free rule vs a uniform step.

For each model (trained here on scikit-learn's digits): the BN-folded deploy graph is quantised

* ``maxabs``: classic INT8 (``max|w_c|/127`` per channel);
* ``allocated``: edgeprune's default, per-tensor steps from Fisher sensitivity, coarsest grid within
  0.5 point (``--target-accuracy-drop 0.5``), ``|level| <= 127``;
* ``spread std/8``: per-tensor step std/8 (the qp-mode default rule, edgeprune's former data-free choice);
* ``uniform qp (NNCodec-style)``: one step for every tensor, the qp whose coded size is closest to the
  spread rule's, so both are compared at equal size;
* ``data-free (edgeprune)``: what the quantize stage does without data (one step, :func:`uniform_qp`).

Columns: coded weight bytes (CABAC INT payload, what model.nnr spends on them) vs raw INT8 bytes (one
byte per weight), test accuracy with those INT8 weights (float activations), and the relative L2
deviation of the logits from the float model on the test split.

    python benchmarks/bench_quant.py [--models lenet5,resnet20,resnet20-pruned]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import date

import torch

from edgeprune import quant
from edgeprune.examples import build_example
from edgeprune.metrics import evaluate
from edgeprune.nnr import coded_bytes
from edgeprune.nnr.qp import default_qp
from edgeprune.quant.allocate import allocate_int8


def _trained_resnet20():  # noqa: ANN202 - Artifact
    from edgeprune.artifact import Artifact
    from edgeprune.data import load_data
    from edgeprune.models import resnet20
    from edgeprune.progress import QUIET
    from edgeprune.prune.train import TrainConfig, fit

    data = load_data("digits", seed=0)
    torch.manual_seed(0)
    model = resnet20(in_channels=1)
    fit(model, data, TrainConfig(epochs=3, lr=0.05, batch_size=64), QUIET)
    return Artifact(model=model.eval(), example_input=data.test.tensors[0][:1].clone(), data=data)


def _pruned_resnet20():  # noqa: ANN202 - Artifact
    """The issue's second model: that ResNet-20 pruned by SeReNe to half its MACs (8 epochs) and simplified,
    as ``compress`` hands it to the quantize stage."""
    import dataclasses

    from edgeprune.prune.pruner import PruneOptions, prune_model
    from edgeprune.simplify import simplify

    art = _trained_resnet20()
    assert art.data is not None  # trained here, on its data
    prune_model(art.model, art.example_input, art.data, PruneOptions(epochs=8, target_macs=0.5, max_accuracy_drop=None))
    return dataclasses.replace(art, model=simplify(art.model, art.example_input).model.eval())


def measure(deploy, qw, data, reference: torch.Tensor) -> dict:  # noqa: ANN001
    snapped = quant.with_quantized_weights(deploy, qw)
    with torch.no_grad():
        out = snapped(data.test.tensors[0])
    return {
        "bytes": coded_bytes({k: t.levels for k, t in qw.tensors.items()}),
        "raw": qw.num_values,
        "accuracy": float((out.argmax(1) == data.test.tensors[1]).float().mean()),
        "deviation": float((out - reference).norm() / reference.norm()),
    }


def bench(name: str, art) -> list[dict]:  # noqa: ANN001 - Artifact
    deploy, _ = quant.to_deploy_graph(art.model, art.example_input)
    names = quant.quantized_weight_names(deploy)
    with torch.no_grad():
        reference = deploy(art.data.test.tensors[0])
    fp32 = evaluate(deploy, art.data.loader("test", 256))["accuracy"]
    rows = [
        {
            "model": name,
            "scheme": "float32",
            "bytes": 4 * sum(deploy.state_dict()[n].numel() for n in names),
            "raw": None,
            "accuracy": fp32,
            "deviation": 0.0,
        }
    ]
    rows.append(
        {"model": name, "scheme": "maxabs INT8", **measure(deploy, quant.quantize_weights(deploy), art.data, reference)}
    )
    t0 = time.perf_counter()
    allocation = allocate_int8(deploy, names, art.data, 0.5, None, quant.quantize_weights)
    seconds = time.perf_counter() - t0
    rows.append(
        {
            "model": name,
            "scheme": f"allocated, 0.5 point ({seconds:.0f} s)",
            **measure(deploy, quant.quantize_weights(deploy, allocation.qps), art.data, reference),
        }
    )
    state = deploy.state_dict()
    spread_qps = {k: default_qp(state[k].numpy()) for k in names}
    spread = measure(deploy, quant.quantize_weights(deploy, spread_qps), art.data, reference)
    rows.append({"model": name, "scheme": "spread std/8 per tensor", **spread})
    best = None
    for qp in range(-60, 0):
        row = measure(deploy, quant.quantize_weights(deploy, dict.fromkeys(names, qp)), art.data, reference)
        if best is None or abs(row["bytes"] - spread["bytes"]) < abs(best[1]["bytes"] - spread["bytes"]):
            best = (qp, row)
    assert best is not None  # the qp range is not empty, so its first step set best
    rows.append({"model": name, "scheme": f"uniform qp {best[0]} (NNCodec-style, equal size)", **best[1]})
    free = allocate_int8(deploy, names, None, 0.5, None, quant.quantize_weights)
    rows.append(
        {
            "model": name,
            "scheme": f"data-free (edgeprune: uniform qp {free.qps[names[0]]})",
            **measure(deploy, quant.quantize_weights(deploy, free.qps), art.data, reference),
        }
    )
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        f"Machine: {platform.machine()}, {platform.python_version()}, torch {torch.__version__}; {date.today()}; "
        "`python benchmarks/bench_quant.py`",
        "",
        "| model | weights | coded bytes | vs raw INT8 | test accuracy | logit deviation |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = "" if r["raw"] is None else f"{r['bytes'] / r['raw']:.3f}x"
        lines.append(
            f"| {r['model']} | {r['scheme']} | {r['bytes']} | {ratio} | {100 * r['accuracy']:.2f} % | "
            f"{r['deviation']:.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet5,resnet20,resnet20-pruned")
    args = parser.parse_args()
    torch.set_num_threads(1)
    builders = {
        "lenet5": lambda: build_example("lenet5", seed=0),
        "resnet20": _trained_resnet20,
        "resnet20-pruned": _pruned_resnet20,
    }
    rows: list[dict] = []
    for name in args.models.split(","):
        rows += bench(name, builders[name]())
        print(f"{name} done", file=sys.stderr)
    print(markdown(rows))


if __name__ == "__main__":
    main()
