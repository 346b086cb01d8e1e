"""Data reach the model as it was trained: no silent re-normalisation on the way to pruning."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgeprune.data import load_data, parse_normalize
from edgeprune.errors import DataError
from edgeprune.metrics import evaluate
from edgeprune.models import lenet5
from edgeprune.prune.train import TrainConfig, fit


@pytest.fixture(scope="module")
def raw_npz(tmp_path_factory):
    """Digits as an .npz with pixel values 0..16 (neither [0, 1] nor standardised)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    path = tmp_path_factory.mktemp("npz") / "raw.npz"
    np.savez(path, x=d.images.astype(np.float32)[:, None], y=d.target)
    return path


@pytest.fixture(scope="module")
def raw_model(raw_npz):
    """A LeNet-5 trained on the raw 0..16 values, saved as a state_dict."""
    data = load_data(raw_npz, seed=0)
    torch.manual_seed(0)
    model = lenet5(in_channels=1, num_classes=10, input_size=8)
    fit(model, data, TrainConfig(epochs=6, lr=0.01, batch_size=64))
    return model, evaluate(model, data.loader("test", 512))["accuracy"]


def test_npz_reaches_the_model_as_given(raw_npz):
    data = load_data(raw_npz, seed=0)
    assert float(data.train.tensors[0].max()) == 16.0 and data.preprocessing == "as given (.npz)"


def test_normalize_applies_per_channel_statistics_and_is_recorded(raw_npz):
    data = load_data(raw_npz, seed=0, normalize=([8.0], [4.0]))
    plain = load_data(raw_npz, seed=0)
    torch.testing.assert_close(data.val.tensors[0], (plain.val.tensors[0] - 8.0) / 4.0)
    assert "mean=[8.0], std=[4.0]" in data.preprocessing


@pytest.mark.parametrize("text", ["0.5", "a,b", "0.5,0", "0.1/0.2,0.3"])
def test_bad_normalize_is_refused(text):
    with pytest.raises(DataError, match="--normalize"):
        parse_normalize(text)


def test_normalize_with_the_wrong_channel_count_is_refused(raw_npz):
    with pytest.raises(DataError, match="3 values per statistic but the data has 1 channels"):
        load_data(raw_npz, normalize=([0.1, 0.2, 0.3], [1.0, 1.0, 1.0]))


@pytest.mark.slow
def test_model_trained_on_raw_data_keeps_its_accuracy_through_prune(runner, cli, raw_npz, raw_model, tmp_path):
    model, test_accuracy = raw_model
    assert test_accuracy > 0.9
    state = tmp_path / "raw.pt"
    torch.save(model.state_dict(), state)
    args = [
        "prune", str(state), "--arch", "edgeprune.models:lenet5", "--arch-kwargs", '{"input_size": 8}',
        "--input-shape", "1,1,8,8", "--data", str(raw_npz), "--epochs", "3", "--finetune-epochs", "1",
        "-o", str(tmp_path / "p.pt2"), "--json",
    ]  # fmt: skip
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["preprocessing"] == "as given (.npz)"
    assert report["accuracy_before"] == pytest.approx(test_accuracy)  # no re-normalisation at load
    assert report["val_accuracy_after"] >= report["accuracy_floor"]
    assert "near chance" not in result.stderr


def test_model_fed_the_wrong_normalisation_gets_a_warning(runner, cli, raw_npz, raw_model, tmp_path):
    model, _ = raw_model
    state = tmp_path / "raw.pt"
    torch.save(model.state_dict(), state)
    args = [
        "prune", str(state), "--arch", "edgeprune.models:lenet5", "--arch-kwargs", '{"input_size": 8}',
        "--input-shape", "1,1,8,8", "--data", str(raw_npz), "--normalize", "1000,1", "--epochs", "1",
        "--finetune-epochs", "0", "-o", str(tmp_path / "p.pt2"),
    ]  # fmt: skip
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "near chance" in result.stderr and "--normalize" in result.stderr
