"""`promote`: turn a registered version into the challenge's submission, `submit.zip` holding `model/`
with only what vLLM needs, checked before anything is logged or the `submission` alias moves.
"""

import json
import logging
import os
import shutil
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

from exatrack.core import processes, tracking
from exatrack.core.basics import ExatrackError
from exatrack.models import models
from exatrack.publish import card
from exatrack.publish.registry import CHAMPION, REGISTERED_MODEL, SUBMISSION

log = logging.getLogger(__name__)
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "tokenizer.model"]
KEEP = ["config.json", "generation_config.json", "chat_template.jinja", *TOKENIZER_FILES]


def select_files(folder: Path) -> list[Path]:
    """config, weights (and their index), generation config, tokenizer, chat template; nothing else."""
    return sorted(p for p in folder.iterdir() if p.name in KEEP or p.suffix == ".safetensors"
                  or p.name == "model.safetensors.index.json")


def check(folder: Path) -> list[str]:
    """Everything vLLM needs is there and readable; returns the problems found (none = ready)."""
    names = {p.name for p in folder.iterdir()}
    problems = [f"missing {n}" for n in ("config.json", "generation_config.json", "tokenizer_config.json") if n not in names]
    if not any(n.endswith(".safetensors") for n in names):
        problems.append("missing *.safetensors weights")
    if not models.has_tokenizer(names):
        problems.append("missing tokenizer files (tokenizer.json, or vocab.json and merges.txt)")
    if problems:
        return problems
    try:
        config = json.loads((folder / "config.json").read_text())
    except json.JSONDecodeError as err:
        return [f"config.json does not parse ({err})"]
    if not config.get("architectures"):
        problems.append("config.json names no architectures; vLLM cannot pick a model class")
    problems += models.weight_problems(folder)
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
        if not (tokenizer.chat_template or (folder / "chat_template.jinja").exists()):
            problems.append("the tokenizer has no chat template")
    except Exception as err:
        problems.append(f"the tokenizer does not load ({type(err).__name__}: {str(err)[:120]})")
    return problems


def verify_with_vllm(folder: Path) -> str:
    from exatrack.evaluate import serving

    request = {"models": [{"name": "package", "path": str(folder),
                           "engine": {"seed": 0, "enforce_eager": True, **serving.engine_memory([None])[0]}}],
               "thinking": False, "sampling": {"temperature": 0.0, "max_tokens": 16}, "repeats": 1,
               "benchmarks": {"smoke": {"conversations": [{"turns": ["한국의 수도는 어디인가요?"]}], "chunk_size": 1}}}
    response = serving.run_session(request, str(folder))
    if error := response["models"]["package"].get("error"):
        raise ExatrackError(f"vLLM could not load {folder} ({error}); the package is not submitted")
    answer = response["benchmarks"]["smoke"]["package"]
    if not sum(answer["tokens"][0]):
        raise ExatrackError(f"vLLM loaded {folder} but generated nothing; the package is not submitted")
    return answer["answers"][0][0]


@contextmanager
def zip_aside(files: list[Path], out: Path):
    """The zip written in a folder of this process's beside `out` and yielded, to be logged; it
    replaces `out` only once the block succeeds. A crash, a full disk or a failed logging leaves the
    previous `out` as it was; two commands promoting to one `out` never write into the same file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{out.name}."
    for left in out.parent.glob(f"{prefix}exatrack-*"):  # what a killed promote left beside `out`
        owner = processes.TEMP_FOLDER.match(left.name[len(prefix):].removesuffix(".partial"))
        if owner and processes.gone(owner["host"], int(owner["pid"]), float(owner["started"])):
            shutil.rmtree(left, ignore_errors=True)
    host, pid, started = processes.me()
    aside = out.with_name(f"{prefix}exatrack-{host}-{pid}-{started:.2f}.partial")
    written = aside / out.name
    try:
        try:
            aside.mkdir(exist_ok=True)
            with zipfile.ZipFile(written, "w", zipfile.ZIP_DEFLATED) as archive:
                for path in files:
                    archive.write(path, f"model/{path.name}")
        except OSError as err:
            raise ExatrackError(f"--out {out} cannot be written ({err.strerror or err}); the previous one, if any, "
                                "is as it was; free space or choose a folder you can write to")
        try:
            yield written
        except OSError as err:
            raise ExatrackError(f"the submission could not be logged to the tracking store ({err.strerror or err}); "
                                f"{out.name} is as it was; free space in the store and promote again")
        written.replace(out)
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def version_of(client, model_name: str, version: str):
    from mlflow.exceptions import MlflowException

    try:
        if str(version).isdigit():
            return client.get_model_version(model_name, version)
        return client.get_model_version_by_alias(model_name, version)
    except MlflowException:
        names = [m.name for m in client.search_registered_models()]
        if model_name not in names:  # rank registers a non-EXAONE source under its own name
            held = f", or pass --registered_model {names[0]} (this store holds {', '.join(names)})" if names else ""
            raise ExatrackError(f"no registered model is named {model_name}; run `exatrack rank` first{held}")
        raise ExatrackError(f"{model_name} has no version or alias '{version}'; run `exatrack rank` first, "
                            "or name a version number")


def checked_files(client, model_name: str, version: str, against_grader: bool = True):
    """The version, the files its package would hold, and how the grader's stack read them; every check
    passed (the grader's last: it starts a process of that stack); nothing written."""
    chosen = version_of(client, model_name, version)
    tied = (chosen.tags or {}).get("tied_with")
    if tied:
        log.warning("version %s is statistically tied with %s: the choice between them is inside the noise",
                    chosen.version, tied)
    if client.get_run(chosen.run_id).info.lifecycle_stage == "deleted":
        raise ExatrackError(f"version {chosen.version} of {model_name} comes from run {chosen.run_id}, which was deleted; "
                            "restore the run (mlflow runs restore) or promote another version")
    folder = models.resolve(f"models:/{model_name}/{chosen.version}").folder
    files = select_files(folder)
    for path in files:  # a link out of the checkpoint would put its target (any file) into the package
        if path.is_symlink() and not path.resolve().is_relative_to(folder.resolve()):
            raise ExatrackError(f"version {chosen.version}: {path.name} is a link to {path.resolve()}, outside the "
                                "checkpoint; a package holds the checkpoint's own files: put the file itself there")
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / "model"
        package.mkdir()
        for path in files:
            os.symlink(path, package / path.name)
        if problems := check(package):
            raise ExatrackError(f"version {chosen.version} is not a complete model: {'; '.join(problems)}")
        checked = read_by_grader(package, source_of(client, chosen)) if against_grader else None
    return chosen, files, checked


def source_of(client, chosen) -> Path | None:
    """The uncompressed model the version derives from, whose tokenizer the package must keep; None
    where this machine cannot reach it (a hub model never downloaded here)."""
    source = client.get_run(chosen.run_id).data.tags.get(models.SOURCE_MODEL)
    try:
        return models.locate(source).folder if source else None
    except ExatrackError as err:
        log.warning("the grader check cannot compare the tokenizer with the source model %s: %s", source, err.message)
        return None


def read_by_grader(package: Path, source: Path | None) -> dict:
    """The grader check's record: the stack, what it read, and every difference from exatrack's reading."""
    from exatrack.publish import grader

    stack, (report,) = grader.check([package], [source])
    return {"stack": stack, "capability": grader.CAPABILITY, "source": str(source), "problems": report.problems,
            "read": report.read}


def refuse_unfaithful(version: str, checked: dict) -> None:
    if problems := checked["problems"]:
        more = f" (and {len(problems) - 1} more, in grader_check.json)" if len(problems) > 1 else ""
        raise ExatrackError(f"version {version} is not the model exatrack measured under the grader's stack "
                            f"(vLLM {checked['stack']['vllm']}): {problems[0]}{more}; re-create the checkpoint "
                            "with this exatrack, or promote with --grader_check false at your own risk")


def stack_name(checked: dict) -> str:
    stack = checked["stack"]
    return f"vllm {stack['vllm']}, transformers {stack['transformers']}, compressed-tensors {stack['compressed-tensors']}"


def check_out(out: Path) -> None:
    """Refused before anything is built: a link (it would be written through, wherever it points), a
    read-only zip, a folder, or a place that cannot be written. The nearest folder that exists is tried
    with a nameless temporary file, which root's permissions cannot fool."""
    if out.is_symlink():
        raise ExatrackError(f"--out {out} is a link to {out.resolve()}; name a plain file, e.g. submit.zip")
    if out.is_file() and not out.stat().st_mode & 0o222:  # the mode, not os.access: root may write anything
        raise ExatrackError(f"--out {out} is read-only; make it writable (chmod u+w) or choose another name")
    if out.is_dir():
        raise ExatrackError(f"--out {out} is a folder; name the zip file, e.g. {out / 'submit.zip'}")
    existing = next(folder for folder in out.parents if folder.exists())
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise ExatrackError(f"--out {out} cannot be written ({err.strerror or err} in {existing}); "
                            "choose a folder you can write to")


def promote(version: str = CHAMPION, model_name: str = REGISTERED_MODEL, out: str = "submit.zip",
            verify: str = "files", parent_run_id: str | None = None, dry_run: bool = False,
            grader_check: bool = True) -> Path | list[Path]:
    """Build submit.zip from a version and point `submission` at it, once the grader's stack reads the
    package as the model exatrack measured (grader.py). `dry_run` checks and returns the files the
    package would hold: no run, no zip, no alias moved."""
    import mlflow
    from mlflow import MlflowClient

    if verify not in ("files", "vllm"):
        raise ExatrackError(f"verify={verify} is not one of files, vllm")
    check_out(Path(out).absolute())
    client, zip_path = MlflowClient(), Path(out).resolve()
    if dry_run:
        chosen, files, checked = checked_files(client, model_name, version, grader_check)
        if checked:
            refuse_unfaithful(chosen.version, checked)
        return files
    with tracking.run("promote", run_name="promote", parent_run_id=parent_run_id):
        chosen, files, checked = checked_files(client, model_name, version, grader_check)
        mlflow.log_params({"registered_model": model_name, "version": chosen.version, "asked": version, "verify": verify,
                           "grader_check": grader_check})
        if checked:
            mlflow.log_dict(checked, "grader_check.json")
            verdict = "passed" if not checked["problems"] else f"refused: {checked['problems'][0]}"
            mlflow.set_tags({"exatrack.grader_check": verdict[:5000], "exatrack.grader_stack": stack_name(checked)})
            refuse_unfaithful(chosen.version, checked)
        if tied := (chosen.tags or {}).get("tied_with"):
            mlflow.set_tag("exatrack.tied_with", tied)
        if verify == "vllm":
            with tempfile.TemporaryDirectory() as tmp:
                package = Path(tmp) / "model"
                package.mkdir()
                for path in files:
                    shutil.copy2(path, package / path.name)
                mlflow.set_tag("exatrack.vllm_smoke_answer", verify_with_vllm(package)[:200])
        with zip_aside(files, zip_path) as written:
            mlflow.log_artifact(str(written))
            mlflow.log_metric("submit_zip_mb", written.stat().st_size / 2**20)
        client.set_registered_model_alias(model_name, SUBMISSION, chosen.version)
        if checked:
            client.set_model_version_tag(model_name, chosen.version, "grader_check", f"passed ({stack_name(checked)})")
        card.write(client, model_name, chosen.version)
        mlflow.set_tags({"exatrack.submission_version": chosen.version, "exatrack.source_run_id": chosen.run_id})
    return zip_path
