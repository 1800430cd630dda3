"""The grader check: a package read by the challenge's stack (the grader environment, grader_worker.py)
and by the project's own (transformers 5, compressed-tensors 0.19), compared field by field. `promote`
runs it before `submission` moves or a zip is written: the model submitted is the model measured.

Compared, each difference a problem named in one line:
- the config as vLLM reads it: architecture, RoPE type and base, dtype, max length;
- the quantization config parsed by vLLM, and the kernel scheme it picks for every Linear, at the
  grader GPU's compute capability (an L4's 8.9): none refused, none served unquantized that the
  checkpoint quantized;
- the tokenizer: it loads, with the same special tokens and the same chat-template ids, and keeps
  the special tokens of the model it was made from (vLLM skips them in the answers it returns: a
  package that lost them answers with `<think>` and the like where its base does not);
- logits of fixed prompts under the grader's transformers equal to the project's own load, within
  LOGIT_BOUND, with the same top-1 token at every position.
Without CUDA this cannot run vLLM's kernels or generate: it proves the files are read as the same
model, not that the grader's GPU computes the same numbers.
"""

import json
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from exatrack.core import environments
from exatrack.core.basics import ExatrackError

CAPABILITY = "8.9"  # the challenge grader's NVIDIA L4: FP8 W8A8 kernels need 8.9 (on 8.0 vLLM picks W8A16)
# Both loads run the same torch on the same weights, so they agree exactly where the files are read
# alike (0.0 for bf16 and every shipped format on tiny, 2026-12-01); a RoPE base read as 10000 instead
# of 1e6 moved them by 3.3. The bound leaves room for another torch's summation order, nothing more.
LOGIT_BOUND = 1e-3
CONVERSATION = [{"role": "user", "content": "한국의 수도는 어디인가요?"}]
TEXTS = ["다음 문제에 대해 정답을 고르세요. 정답: B", "The capital of Korea is Seoul, and its river is the Han."]
WORKER = Path(__file__).with_name("grader_worker.py")
FUSED = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj", "gate_proj": "gate_up_proj",
         "up_proj": "gate_up_proj", "o_proj": "o_proj", "down_proj": "down_proj"}  # as vLLM builds them


@dataclass
class Report:
    folder: Path
    problems: list[str] = field(default_factory=list)
    read: dict = field(default_factory=dict)  # what the grader's stack read, for the record

    @property
    def passed(self) -> bool:
        return not self.problems


def check(folders: list[Path], references: list[Path | None] | None = None,
          logits: bool = True) -> tuple[dict, list[Report]]:
    """Every folder read by both stacks, each beside the model it was made from where `references`
    names it: one grader process for all of them, running while this one reads them too. Without
    `logits`, the files only (seconds, where loading a real model twice takes a minute). Returns the
    grader stack's versions and a report per folder."""
    folders = [Path(f) for f in folders]
    prompts = [fixed_prompts(f) if logits else [] for f in folders]
    request = {"capability": CAPABILITY, "conversation": CONVERSATION,
               "packages": [{"folder": str(f), "prompts": p, "reference": r and str(r)}
                            for f, p, r in zip(folders, prompts, references or [None] * len(folders))]}
    with Worker(request) as worker:
        ours = [our_reading(f, p) for f, p in zip(folders, prompts)]
        response = worker.response()
    return response["versions"], [compare(f, o, g) for f, o, g in zip(folders, ours, response["packages"])]


def fixed_prompts(folder: Path) -> list[list[int]]:
    """TEXTS in the package's tokens, by the tokenizers library both stacks use underneath (how the
    two stacks tokenize is compared on the chat template's ids)."""
    if not (folder / "tokenizer.json").exists():  # vocab.json and merges.txt only, as EXAONE's hub files
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
        return [tokenizer.encode(text, add_special_tokens=False) for text in TEXTS]
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    return [tokenizer.encode(text, add_special_tokens=False).ids for text in TEXTS]


class Worker:
    """grader_worker.py in the grader environment, started at once and waited for at `response()`."""

    def __init__(self, request: dict):
        self.tmp = tempfile.TemporaryDirectory()
        folder = Path(self.tmp.name)
        self.response_file, self.log = folder / "response.json", folder / "grader.log"
        (folder / "request.json").write_text(json.dumps(request, ensure_ascii=False), encoding="utf-8")
        with open(self.log, "w") as out:
            interpreter = environments.python("grader")
            self.proc = subprocess.Popen([str(interpreter), str(WORKER), str(folder / "request.json"),
                                          str(self.response_file)], stdout=out, stderr=subprocess.STDOUT,
                                         env=environments.child_env(interpreter))

    def response(self) -> dict:
        if self.proc.wait() != 0 or not self.response_file.exists():
            raise ExatrackError(f"the grader's stack could not run its check: "
                                f"{environments.failure_line(self.log.read_text())}; rebuild it with `exatrack grader-env --build`")
        return json.loads(self.response_file.read_text(encoding="utf-8"))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:  # this side failed first
            self.proc.kill()
            self.proc.wait()
        self.tmp.cleanup()


def our_reading(folder: Path, prompts: list[list[int]]) -> dict:
    """The project stack's reading of the package, and its logits of the fixed prompts."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(folder).get_text_config()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    chat = tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    logits = []
    if prompts:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        with torch.no_grad():
            logits = [model(torch.tensor([ids])).logits[0].float() for ids in prompts]
    return {"architecture": (config.architectures or [None])[0], "rope": config.rope_parameters,
            "dtype": str(config.dtype).replace("torch.", ""), "max_len": config.max_position_embeddings,
            "special_tokens": sorted(tokenizer.all_special_tokens),
            "chat_ids": tokenizer.encode(chat, add_special_tokens=False), "logits": logits,
            "quantized": quantized_layers(folder)}


def quantized_layers(folder: Path) -> set[str]:
    """vLLM's name for every Linear the checkpoint holds quantized weights of (read from the headers)."""
    from safetensors import safe_open

    names = set()
    for weights in folder.glob("*.safetensors"):
        with safe_open(str(weights), "numpy") as f:
            names |= {key.rsplit(".", 1)[0] for key in f.keys() if key.endswith((".weight_scale", ".weight_packed"))}
    fused = set()
    for name in names:
        prefix, _, module = name.rpartition(".")
        fused.add(f"{prefix}.{FUSED.get(module, module)}")
    return fused


def compare(folder: Path, ours: dict, grader: dict) -> Report:
    report = Report(folder, read={k: v for k, v in grader.items() if k != "logits"})
    problems = report.problems
    for part in ("reference", "config", "quantization", "tokenizer", "logits"):
        if part in grader and "error" in grader[part]:
            problems.append(f"{part}: the grader's stack fails to read it ({grader[part]['error']})")
    config = grader["config"]
    if "error" not in config:
        for what, theirs, mine in (("architecture", config["architecture"], ours["architecture"]),
                                   ("dtype", config["dtype"], ours["dtype"]),
                                   ("max length", config["max_model_len"], ours["max_len"])):
            if theirs != mine:
                problems.append(f"{what}: the grader's vLLM reads {theirs}, exatrack's stack {mine}")
        if (config["rope_parameters"] or {}) != (ours["rope"] or {}):
            problems.append(f"RoPE: the grader's vLLM reads {config['rope_parameters']}, exatrack's stack {ours['rope']}")
    if "schemes" in grader.get("quantization", {}):
        schemes = grader["quantization"]["schemes"]
        problems += [f"quantization: {name}: {scheme[len('error: '):]}" for name, scheme in schemes.items()
                     if scheme.startswith("error")]
        dropped = sorted(n for n in ours["quantized"] if schemes.get(n) == "unquantized")
        if dropped:
            problems.append(f"quantization: the grader's vLLM would serve {dropped[0]} (and {len(dropped) - 1} more) "
                            "unquantized, though the checkpoint quantizes it")
    tokenizer = grader.get("tokenizer", {})
    if "error" not in tokenizer and tokenizer:
        if tokenizer["chat_ids"] != ours["chat_ids"]:
            problems.append(f"tokenizer: the chat template gives other ids under the grader's stack "
                            f"({len(tokenizer['chat_ids'])} tokens against {len(ours['chat_ids'])})")
        if tokenizer["special_tokens"] != ours["special_tokens"]:
            problems.append(f"tokenizer: the grader's stack sees {len(tokenizer['special_tokens'])} special tokens, "
                            f"exatrack's {len(ours['special_tokens'])}")
        source = grader.get("reference", {}).get("special_tokens")
        if source is not None and tokenizer["special_tokens"] != source:
            problems.append(f"tokenizer: the grader's stack sees {len(tokenizer['special_tokens'])} special tokens in the "
                            f"package and {len(source)} in the model it was made from")
    if "prompts" in grader.get("logits", {}):
        report.read["logits"] = agreement(ours["logits"], grader["logits"]["prompts"])
        if (shown := report.read["logits"])["max_abs_diff"] > LOGIT_BOUND or shown["top1"] < shown["positions"]:
            problems.append(f"logits: the grader's transformers and exatrack's differ by up to {shown['max_abs_diff']:.3g} "
                            f"(bound {LOGIT_BOUND}) on fixed prompts; the top token agrees at {shown['top1']} "
                            f"of {shown['positions']} positions")
    return report


def agreement(ours: list, theirs: list) -> dict:
    """Max |Δ logit| (over the whole vocabulary, or the grader's top-k where it sent only those) and
    the positions whose top token agrees."""
    import torch

    worst, top1, positions = 0.0, 0, 0
    for mine, other in zip(ours, theirs):
        if "logits" in other:
            worst = max(worst, (mine - torch.tensor(other["logits"])).abs().max().item())
        else:
            at = torch.tensor(other["top_ids"])
            worst = max(worst, (mine.gather(1, at) - torch.tensor(other["top_values"])).abs().max().item())
        top1 += int((mine.argmax(-1) == torch.tensor(other["top_ids"])[:, 0]).sum())
        positions += mine.shape[0]
    return {"max_abs_diff": worst, "top1": top1, "positions": positions}
