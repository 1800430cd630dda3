"""`prune`: drop the least important decoder layers (Block Influence) and optionally narrow the FFNs,
into a normal checkpoint of the same family that vLLM loads (config and layer indices updated).

Block Influence of a layer = 1 - mean cosine similarity of its input and output hidden states on
calibration text: a layer that barely turns the residual stream matters least. FFN width pruning
keeps, in every layer, the intermediate channels with the largest mean |activation| at down_proj's
input.
"""

import functools
import json
import time

from exatrack.compress import calibration, checkpoint
from exatrack.core import tracking
from exatrack.core.basics import ExatrackError, torch_device


def layer_statistics(model, batches) -> tuple[list[float], list]:
    """Per layer: Block Influence, and the mean |activation| of each intermediate channel."""
    import torch

    layers = model.model.layers
    cos_sum, tokens = [0.0] * len(layers), 0
    act_sum = [torch.zeros(layer.mlp.down_proj.in_features, device=model.device) for layer in layers]
    hooks = []
    for i, layer in enumerate(layers):
        def influence(module, args, output, i=i):
            h_in, h_out = args[0].float(), (output[0] if isinstance(output, tuple) else output).float()
            cos_sum[i] += torch.nn.functional.cosine_similarity(h_in, h_out, dim=-1).sum().item()

        def activation(module, args, i=i):
            act_sum[i] += args[0].float().abs().reshape(-1, args[0].shape[-1]).sum(0)

        hooks += [layer.register_forward_hook(influence), layer.mlp.down_proj.register_forward_pre_hook(activation)]
    with torch.inference_mode():
        for ids in batches:
            model(ids.to(model.device))
            tokens += ids.numel()
    for hook in hooks:
        hook.remove()
    return [1 - c / tokens for c in cos_sum], [a / tokens for a in act_sum]


def drop_layers(model, drop: list[int]) -> None:
    import torch

    kept = [layer for i, layer in enumerate(model.model.layers) if i not in drop]
    for index, layer in enumerate(kept):
        layer.self_attn.layer_idx = index
    model.model.layers = torch.nn.ModuleList(kept)
    config = model.config
    if getattr(config, "layer_types", None):  # EXAONE-4 names each layer's attention; Llama has no such list
        config.layer_types = [t for i, t in enumerate(config.layer_types) if i not in drop]
    config.num_hidden_layers = len(kept)


def narrow_ffn(model, activations: list, width: int) -> None:
    import torch

    for layer, act in zip(model.model.layers, activations):
        keep = torch.topk(act, width).indices.sort().values
        mlp = layer.mlp
        for name in ("gate_proj", "up_proj"):
            linear = getattr(mlp, name)
            slim = torch.nn.Linear(linear.in_features, width, bias=False, dtype=linear.weight.dtype, device=linear.weight.device)
            slim.weight.data = linear.weight.data[keep].clone()
            setattr(mlp, name, slim)
        slim = torch.nn.Linear(width, mlp.down_proj.out_features, bias=False, dtype=mlp.down_proj.weight.dtype,
                               device=mlp.down_proj.weight.device)
        slim.weight.data = mlp.down_proj.weight.data[:, keep].clone()
        mlp.down_proj = slim
    model.config.intermediate_size = width


def plot(importance: list[float], dropped: list[int]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(range(len(importance)), importance, color=["tab:red" if i in dropped else "tab:blue" for i in range(len(importance))])
    ax.set_xlabel("layer")
    ax.set_ylabel("Block Influence (1 - cos)")
    ax.set_title("layer importance on calibration text (red: dropped)")
    fig.tight_layout()
    return fig


PARAMS = {
    "drop": {"default": 0, "ge": 0, "help": "decoder layers to drop (the least important)"},
    "keep": {"default": 0, "ge": 0, "help": "or: decoder layers to keep"},
    "ffn": {"default": 0, "ge": 0, "help": "narrow every FFN to this intermediate size; 0 = keep"},
    "num_samples": {"default": 64, "ge": 1, "help": "calibration samples"},
    "max_seq_len": {"default": 512, "ge": 16, "help": "tokens per calibration sample"},
    "seed": {"default": 0, "help": "seed for choosing calibration samples"},
}


def prune(ref: str, params: dict, calib: str | None = None, parent_run_id: str | None = None,
          tags: dict | None = None) -> str:
    import mlflow
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with checkpoint.step("prune", ref, PARAMS, params, calib, parent_run_id, tags) as (active, model, values, calib):
        config = model.config()  # checked against the config and the text loaded before the model loads
        layers, drop, keep, ffn = config["num_hidden_layers"], values["drop"], values["keep"], values["ffn"]
        count = layers - keep if keep else drop
        if not 0 <= count < layers or (drop and keep):
            raise ExatrackError(f"drop={drop} keep={keep}: give one of them, leaving between 1 and {layers} of the "
                                f"model's {layers} layers")
        if ffn and not ffn < config["intermediate_size"]:
            raise ExatrackError(f"ffn={ffn} must be below the model's intermediate size {config['intermediate_size']}")
        tokenizer = AutoTokenizer.from_pretrained(model.folder)
        data = calibration.tokenized_dataset(calib, tokenizer, values["num_samples"], values["max_seq_len"], values["seed"])
        net = AutoModelForCausalLM.from_pretrained(model.folder, dtype=torch.float32).to(torch_device()).eval()
        started = time.perf_counter()
        importance, activations = layer_statistics(net, [torch.tensor([ids]) for ids in data["input_ids"]])
        dropped = sorted(sorted(range(layers), key=lambda i: importance[i])[:count])
        drop_layers(net, dropped)
        if ffn:
            narrow_ffn(net, [a for i, a in enumerate(activations) if i not in dropped], ffn)
        mlflow.log_metrics({f"importance.layer_{i:02d}": v for i, v in enumerate(importance)})
        mlflow.log_metric("prune_time_s", time.perf_counter() - started)
        mlflow.log_dict({"importance": importance, "dropped": dropped, "ffn": ffn}, "prune.json")
        tracking.log_figure(plot(importance, dropped), "layer_importance.png")
        mlflow.set_tag("exatrack.pruned_layers", json.dumps(dropped))
        checkpoint.log_checkpoint(model, functools.partial(checkpoint.save_bf16, net, tokenizer))
        return active.info.run_id
