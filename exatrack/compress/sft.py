"""`sft`: LoRA fine-tuning (peft) on chat data, merged back into the weights, so that the result is a
plain EXAONE-4 checkpoint that `quantize` and vLLM take like any other.

Conversations are rendered with the model's chat template and packed into blocks; the loss covers
every token, as TRL's SFTTrainer does by default for conversational data.
"""

import functools

from exatrack.compress import checkpoint, train
from exatrack.core.basics import ExatrackError, torch_device

PARAMS = {
    "lora_rank": {"default": 16, "ge": 1, "help": "LoRA rank r"},
    "lora_alpha": {"default": 32, "gt": 0, "help": "LoRA scaling alpha (the update is scaled by alpha / r)"},
    "lora_dropout": {"default": 0.05, "ge": 0, "lt": 1, "help": "dropout on the LoRA input"},
    "target_modules": {"default": "all-linear", "help": "modules given adapters: all-linear, or comma-separated names"},
    "lr": {"default": 2e-4, "gt": 0, "help": "AdamW peak learning rate (cosine decay)"},
    **train.PARAMS,
}


def sft(ref: str, params: dict, calib: str | None = None, parent_run_id: str | None = None,
        tags: dict | None = None) -> str:
    import mlflow
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with checkpoint.step("sft", ref, PARAMS, params, calib, parent_run_id, tags) as (active, model, values, calib):
        tokenizer = AutoTokenizer.from_pretrained(model.folder)
        blocks = train.blocks(calib, tokenizer, values)
        base = AutoModelForCausalLM.from_pretrained(model.folder, dtype=torch.float32).to(torch_device())
        targets = values["target_modules"]
        config = LoraConfig(r=values["lora_rank"], lora_alpha=values["lora_alpha"], lora_dropout=values["lora_dropout"],
                            target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")],
                            task_type="CAUSAL_LM")
        try:
            lora = get_peft_model(base, config)
        except ValueError as err:
            raise ExatrackError(f"target_modules '{targets}' matches no module of {ref} ({str(err).splitlines()[0][:120]}); "
                                "use all-linear or names such as q_proj,v_proj,down_proj")
        trainable, total = lora.get_nb_trainable_parameters()
        mlflow.log_metrics({"train_blocks": len(blocks), "trainable_params": trainable, "trainable_share": trainable / total})

        def loss_of(net, batch):
            ids = blocks[batch].to(torch_device())
            return net(input_ids=ids, labels=ids).loss

        train.fit(lora, len(blocks), loss_of, values, values["lr"], f"LoRA SFT of {ref}")
        merged = lora.merge_and_unload()
        checkpoint.log_checkpoint(model, functools.partial(checkpoint.save_bf16, merged.cpu(), tokenizer))
        return active.info.run_id
