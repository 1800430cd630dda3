"""The training loop `distill` and `sft` share: AdamW over shuffled batches of packed token blocks,
the loss logged per step (MLflow draws the curve; a PNG of it is logged too).

It is written out, not taken from transformers' Trainer: both steps need their own loss and none of
the rest Trainer brings, and twenty lines are easier to read than its callbacks.
"""

import math
import time

from exatrack.compress import calibration
from exatrack.core import console, tracking
from exatrack.core.basics import ExatrackError, torch_device

# What both training steps take, beside their own parameters.
PARAMS = {
    "epochs": {"default": 1, "ge": 1, "help": "passes over the training blocks"},
    "num_samples": {"default": 256, "ge": 1, "help": "records of training text"},
    "max_seq_len": {"default": 1024, "ge": 16, "help": "tokens per training block (records are packed end to end)"},
    "batch_size": {"default": 4, "ge": 1, "help": "blocks per optimizer step"},
    "seed": {"default": 0, "help": "seed for choosing records and shuffling blocks"},
}


def blocks(source: str, tokenizer, values: dict):
    """Records rendered like calibration text, packed end to end and cut into equal blocks: no
    padding, so every position trains."""
    import torch

    texts = calibration.texts(source, tokenizer, values["num_samples"], values["seed"])
    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream = [t for ids in tokenizer(texts, add_special_tokens=False)["input_ids"] for t in ids + separator]
    length = values["max_seq_len"]
    if len(stream) < length:
        raise ExatrackError(f"'{source}' gives {len(stream)} tokens, less than one block of max_seq_len={length}; "
                            "lower max_seq_len or raise num_samples")
    count = len(stream) // length
    return torch.tensor(stream[:count * length]).view(count, length)


def fit(model, count: int, loss_of, values: dict, lr: float, what: str) -> list[float]:
    """Train `model` on `loss_of(model, block_indices)`; returns the loss per optimizer step."""
    import mlflow
    import torch
    from transformers import get_cosine_schedule_with_warmup

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    per_epoch = math.ceil(count / values["batch_size"])
    total = per_epoch * values["epochs"]
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, total // 20), total)
    order = torch.Generator().manual_seed(values["seed"])
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=torch_device() == "cuda")
    model.train()
    curve, started = [], time.perf_counter()
    with console.bar(total=total, desc=what, unit="step") as bar:
        for _ in range(values["epochs"]):
            for batch in torch.randperm(count, generator=order).split(values["batch_size"]):
                with autocast:
                    loss = loss_of(model, batch)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                curve.append(loss.item())
                mlflow.log_metric("train_loss", curve[-1], step=len(curve))
                bar.set_postfix(loss=f"{curve[-1]:.4f}")
                bar.update()
    model.eval()
    mlflow.log_metric("train_time_s", time.perf_counter() - started)
    tracking.log_figure(plot(curve, per_epoch, what), "loss_curve.png")
    return curve


def plot(curve: list[float], per_epoch: int, what: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(range(1, len(curve) + 1), curve)
    for boundary in range(per_epoch, len(curve), per_epoch):
        ax.axvline(boundary + 0.5, color="grey", linestyle=":")
    ax.set_xlabel("optimizer step (dotted: epoch boundary)")
    ax.set_ylabel("training loss")
    ax.set_title(what)
    fig.tight_layout()
    return fig
