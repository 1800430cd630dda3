"""`distill`: a student (say, a pruned model) learns its teacher's next-token distributions.

Online (top_k=0): the teacher runs beside the student and the loss is the full
KL(teacher || student) at temperature T, times T^2. Precomputed (top_k>0): the teacher runs once over
the training blocks first, keeping its k largest logits per position with their token ids as int32
(EXAONE's vocabulary of 102,400 overflows int16, which wrapped ids in the team's store); the loss is
the KL over those k tokens with the teacher's top-k renormalized, and teacher and student are never
in memory together. The store is logged as `teacher_topk.safetensors`; passing it back as
`teacher_logits` lets later students skip the teacher.
"""

import functools
import tempfile

from exatrack.compress import checkpoint, train
from exatrack.compress.proxy import quality_proxy
from exatrack.core.basics import ExatrackError, torch_device
from exatrack.models import models

STORE = "teacher_topk.safetensors"
PARAMS = {
    "teacher": {"default": "", "help": "the model to learn from; empty: the model the student derives from"},
    "teacher_logits": {"default": "", "help": "a top-k store from an earlier distill run (runs:/<id>/teacher_topk.safetensors or a file)"},
    "temperature": {"default": 1.0, "gt": 0, "help": "softmax temperature of both distributions"},
    "top_k": {"default": 0, "ge": 0, "help": "0: online, full distribution; k: precomputed top-k teacher logits"},
    "lr": {"default": 1e-5, "gt": 0, "help": "AdamW peak learning rate (cosine decay)"},
    **train.PARAMS,
}


def top_k_store(logits, k: int) -> dict:
    """The k largest logits per position (float16) and their token ids (int32: ids pass 32,767)."""
    import torch

    values, ids = logits.float().topk(k, dim=-1)
    return {"values": values.to(torch.float16), "ids": ids.to(torch.int32)}


def kl_full(student_logits, teacher_logits, temperature: float):
    teacher = (teacher_logits.float() / temperature).log_softmax(-1)
    student = (student_logits.float() / temperature).log_softmax(-1)
    return (teacher.exp() * (teacher - student)).sum(-1).mean() * temperature**2


def kl_top_k(student_logits, ids, values, temperature: float):
    teacher = (values.float() / temperature).log_softmax(-1)
    student = (student_logits.float() / temperature).log_softmax(-1).gather(-1, ids.long())
    return (teacher.exp() * (teacher - student)).sum(-1).mean() * temperature**2


def precompute(teacher, blocks, k: int, batch_size: int) -> dict:
    """Run the teacher once over every block; keep only its top-k."""
    import torch
    from exatrack.core import console

    parts = []
    with torch.inference_mode():
        for batch in console.bar(blocks.split(batch_size), desc="teacher top-k", unit="batch"):
            top = top_k_store(teacher(batch.to(torch_device())).logits, k)
            parts.append({key: value.cpu() for key, value in top.items()})
    return {"input_ids": blocks.to(torch.int32), **{key: torch.cat([p[key] for p in parts]) for key in ("values", "ids")}}


def load_store(ref: str) -> dict:
    import torch
    from safetensors.torch import load_file

    try:
        path = models.run_artifact(ref) if ref.startswith("runs:/") else ref
        store = load_file(path)
    except Exception as err:
        raise ExatrackError(f"cannot read the teacher top-k store {ref} ({type(err).__name__}); "
                            f"pass runs:/<distill run id>/{STORE} or a file written by `exatrack distill --top_k k`")
    if store.get("ids") is None or store["ids"].dtype != torch.int32:
        raise ExatrackError(f"{ref} is not a top-k store with int32 token ids; rebuild it with `exatrack distill --top_k k`")
    return store


def check_vocabulary(student, teacher) -> None:
    from transformers import AutoConfig

    sizes = [AutoConfig.from_pretrained(folder).vocab_size for folder in (student, teacher)]
    if sizes[0] != sizes[1]:
        raise ExatrackError(f"the student's vocabulary ({sizes[0]}) and the teacher's ({sizes[1]}) differ; "
                            "distil between models that share a tokenizer")


def load_model(folder, dtype=None):
    import torch
    from transformers import AutoModelForCausalLM

    dtype = dtype or (torch.bfloat16 if torch_device() == "cuda" else torch.float32)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(torch_device())


def training_data(values: dict, calib: str, tokenizer, teacher):
    """The blocks to train on and, unless online, the teacher's top-k store for them."""
    import mlflow
    from safetensors.torch import save_file

    if values["teacher_logits"]:
        store = load_store(values["teacher_logits"])
        return store["input_ids"].long(), store
    blocks = train.blocks(calib, tokenizer, values)
    if not values["top_k"]:
        return blocks, None
    store = precompute(load_model(teacher.folder).eval(), blocks, values["top_k"], values["batch_size"])
    with tempfile.TemporaryDirectory() as tmp:
        save_file(store, f"{tmp}/{STORE}")
        mlflow.log_artifact(f"{tmp}/{STORE}")
    return blocks, store


def loss_function(blocks, store: dict | None, teacher, temperature: float):
    """The student's loss on a batch of block indices: against the store, or against the teacher run online."""
    import torch

    device = torch_device()
    if store is not None:
        def from_store(net, batch):
            return kl_top_k(net(blocks[batch].to(device)).logits, store["ids"][batch].to(device),
                            store["values"][batch].to(device), temperature)
        return from_store
    reference = load_model(teacher.folder).eval().requires_grad_(False)

    def online(net, batch):
        ids = blocks[batch].to(device)
        with torch.no_grad():
            target = reference(ids).logits
        return kl_full(net(ids).logits, target, temperature)
    return online


def distill(ref: str, params: dict, calib: str | None = None, parent_run_id: str | None = None,
            tags: dict | None = None) -> str:
    import mlflow
    import torch
    from transformers import AutoTokenizer

    with checkpoint.step("distill", ref, PARAMS, params, calib, parent_run_id, tags) as (active, model, values, calib):
        teacher_ref = values["teacher"] or model.source
        if teacher_ref == ref and not values["teacher_logits"]:
            raise ExatrackError(f"the student {ref} would be its own teacher; pass another --teacher (e.g. the unpruned model)")
        mlflow.set_tag("exatrack.teacher", teacher_ref)  # the teacher param may be empty: 'what the student derives from'
        teacher = models.resolve(teacher_ref)
        check_vocabulary(model.folder, teacher.folder)
        tokenizer = AutoTokenizer.from_pretrained(model.folder)
        blocks, store = training_data(values, calib, tokenizer, teacher)  # the text is checked before a model loads
        mlflow.log_metric("train_blocks", len(blocks))
        start = quality_proxy(teacher.folder, model.folder)
        mlflow.log_metrics({f"start_{key}": v for key, v in start.items() if key != "proxy_tokens"})
        student = load_model(model.folder, torch.float32)  # float32 master weights; bf16 autocast on a GPU
        loss_of = loss_function(blocks, store, teacher, values["temperature"])
        train.fit(student, len(blocks), loss_of, values, values["lr"], f"distill {ref} from {teacher_ref}")
        checkpoint.log_checkpoint(model, functools.partial(checkpoint.save_bf16, student.cpu(), tokenizer),
                                  reference=teacher.folder)
        return active.info.run_id
