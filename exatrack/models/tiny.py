"""The built-in tiny EXAONE-4 model: the real architecture scaled down, trained for a few seconds.

It exists so that every path (quantize, vLLM evaluation, ranking, packaging) runs on a laptop CPU
with the same code as the real 1.2B model. It is trained briefly on the bundled corpus because an
untrained model has near-uniform next-token distributions, on which no quantization error shows.
"""

import hashlib
import json
import shutil
from pathlib import Path

from exatrack.core import console
from exatrack.core.basics import cache_dir
from exatrack.models import compat

DATA_DIR = Path(__file__).parent / "data"  # the corpus it is trained on and its chat template

# The real config's architecture, scaled down. Widths are multiples of 128 so that every recipe
# (W4A16 uses groups of 128) and every vLLM kernel accepts the tiny checkpoints.
ARCH = dict(
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    max_position_embeddings=8192,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
)
TRAIN = dict(vocab_size=2048, steps=120, batch_size=8, seq_len=128, lr=3e-3, seed=0)
# EXAONE's special tokens, at EXAONE's ids for the first four.
SPECIAL_TOKENS = ["[PAD]", "[BOS]", "[EOS]", "[UNK]", "[|system|]", "[|user|]", "[|assistant|]",
                  "[|tool|]", "[|endofturn|]", "<think>", "</think>"]


def tiny_path() -> Path:
    """The cached tiny model, built on first use; the key changes whenever its recipe does."""
    key = hashlib.sha256(
        json.dumps([ARCH, TRAIN]).encode()
        + Path(__file__).read_bytes()
        + Path(compat.__file__).read_bytes()
        + (DATA_DIR / "corpus.jsonl").read_bytes()
        + (DATA_DIR / "chat_template.jinja").read_bytes()
    ).hexdigest()[:12]
    path = cache_dir() / "tiny" / key
    if not (path / "config.json").exists():
        build(path)
    return path


def build(out: Path) -> Path:
    """Build into a partial folder and rename it into place, so a crash leaves no half model; the
    partial folder has a fixed name, so a build killed midway leaves nothing the next one keeps."""
    from filelock import FileLock

    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if (out / "config.json").exists():
            return out
        tmp = out.with_name(f".{out.name}.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tokenizer = train_tokenizer()
            model = train_model(tokenizer)
            model.to(dtype=_bf16()).save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            compat.for_both_stacks(tmp)  # read alike by the grader's stack; its special tokens are its own
            shutil.rmtree(out, ignore_errors=True)
            tmp.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _bf16():
    import torch

    return torch.bfloat16


def corpus_conversations() -> list[list[dict]]:
    lines = (DATA_DIR / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["conversations"] for line in lines if line.strip()]


def train_tokenizer():
    """A byte-level BPE like EXAONE's (GPT-2 style), so any Korean text encodes without [UNK]."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TRAIN["vocab_size"],
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [turn["content"] for conv in corpus_conversations() for turn in conv]
    bpe.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="[BOS]",
        eos_token="[|endofturn|]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        chat_template=(DATA_DIR / "chat_template.jinja").read_text(encoding="utf-8"),
        clean_up_tokenization_spaces=False,
    )


def exaone4_config(tokenizer):
    from transformers import Exaone4Config

    return Exaone4Config(
        vocab_size=len(tokenizer),
        layer_types=["full_attention"] * ARCH["num_hidden_layers"],
        sliding_window=None,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **ARCH,
    )


def train_model(tokenizer):
    """A few hundred AdamW steps on the chat-formatted corpus; seeded, so the same weights each time."""
    import torch
    from transformers import Exaone4ForCausalLM, GenerationConfig

    torch.manual_seed(TRAIN["seed"])
    model = Exaone4ForCausalLM(exaone4_config(tokenizer)).float()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    stream = torch.tensor(
        [i for conv in corpus_conversations() for i in tokenizer.apply_chat_template(conv, tokenize=True)["input_ids"]]
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=TRAIN["lr"], weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, TRAIN["lr"], total_steps=TRAIN["steps"])
    generator = torch.Generator().manual_seed(TRAIN["seed"])
    n, length = TRAIN["batch_size"], TRAIN["seq_len"]
    model.train()
    for _ in console.bar(range(TRAIN["steps"]), desc="training tiny EXAONE-4 (once)", unit="step"):
        starts = torch.randint(0, len(stream) - length, (n,), generator=generator)
        batch = torch.stack([stream[s : s + length] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    model.eval()
    return model
