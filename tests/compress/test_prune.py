"""Pruning: Block Influence importances, a renumbered config and narrowed FFNs (vLLM serving a pruned
checkpoint is test_pipeline's real-engine chain)."""

import json

import mlflow
import pytest

from exatrack.compress import prune
from exatrack.core.basics import ExatrackError
from exatrack.models import models


@pytest.fixture(scope="module")
def pruned(tiny_model):
    return prune.prune("tiny", {"drop": 1, "ffn": 256, "num_samples": 16, "max_seq_len": 64})


def test_the_least_influential_layer_is_dropped_and_the_config_follows(pruned):
    run = mlflow.get_run(pruned)
    importance = [run.data.metrics[f"importance.layer_{i:02d}"] for i in range(4)]
    dropped = json.loads(run.data.tags["exatrack.pruned_layers"])
    assert dropped == [min(range(4), key=importance.__getitem__)]
    config = json.loads(mlflow.artifacts.load_text(f"runs:/{pruned}/checkpoint/config.json"))
    assert config["num_hidden_layers"] == 3 and len(config["layer_types"]) == 3
    assert config["intermediate_size"] == 256
    assert {"layer_importance.png", "prune.json"} <= {a.path for a in mlflow.MlflowClient().list_artifacts(pruned)}


def test_the_pruned_checkpoint_reloads_with_narrow_ffns_and_renumbered_layers(pruned):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(models.resolve(f"runs:/{pruned}/checkpoint").folder, dtype=torch.float32)
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2]
    assert model.model.layers[0].mlp.down_proj.weight.shape == (256, 256)
    logits = model(torch.tensor([[5, 6, 7]])).logits
    assert torch.isfinite(logits).all()
    assert 0 < mlflow.get_run(pruned).data.metrics["proxy_top1_agreement"] <= 1


def test_impossible_pruning_requests_are_refused(tiny_model):
    with pytest.raises(ExatrackError, match="leaving between 1 and 4"):
        prune.prune("tiny", {"drop": 4})
    with pytest.raises(ExatrackError, match="must be below the model's intermediate size 512"):
        prune.prune("tiny", {"ffn": 600})
