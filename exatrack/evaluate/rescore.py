"""`rescore`: score a serving session's kept answers again, without generating them again.

Generation is the expensive part of an evaluation (tens of GPU minutes per model on the real
benchmarks); scoring is not, and it is what fails or changes afterwards: no judge was configured, the
judge was down, a scorer crashed, a scorer was fixed. `evaluate` keeps every model's answers
(answers.json) and what they were generated under (generation.json) before it scores, and this
scores them again, on the same runs. A whole session is scored at once: the judge is part of the
fingerprint, and a base scored one way beside a candidate scored another would not compare.
"""

import logging

from exatrack.core import tracking
from exatrack.core.basics import ExatrackError
from exatrack.evaluate.benchmarks import REGISTRY, content_hash, subset
from exatrack.evaluate.session import BASE, SESSION, Settings, log_scores

log = logging.getLogger(__name__)


def rescore(run_id: str) -> dict[str, str]:
    """Every run of `run_id`'s session scored again from its kept answers; returns run id -> run name.
    Everything that can be refused (the runs, their kept files, the rows, the judge) is refused before
    the first answer is scored."""
    from mlflow import MlflowClient

    client = MlflowClient()
    runs = session_runs(client, run_id)
    kept = {r.info.run_id: read_kept(client, r) for r in runs}
    scorable = {rid: k for rid, k in kept.items() if k is not None}
    base = runs[0]
    if base.data.tags.get(BASE) != "true" or base.info.run_id not in scorable:
        raise ExatrackError(f"the base's run {base.info.run_id} kept no answers (its generation failed, or exatrack "
                            "older than rescore evaluated it): evaluate the session again")
    settings, sources = session_settings(scorable.values())
    settings.check()  # the judge's configuration and prompts, before any judging
    rows = {name: subset(REGISTRY[name].load(where), settings.limit) for name, where in sources.items()}
    for rid, (_, generation) in scorable.items():
        check_rows(rows, generation["content"], rid)
    for r in runs:
        if r.info.run_id not in scorable:
            log.warning("run %s (%s) kept no answers: left as it is", r.info.run_id, r.info.run_name)
            continue
        answers, generation = scorable[r.info.run_id]
        with tracking.run("evaluation", run_id=r.info.run_id):
            log_scores(settings, rows, answers, generation)
        if "exatrack.error" in r.data.tags:  # a failure after generation, mended now
            client.delete_tag(r.info.run_id, "exatrack.error")
    return {rid: r.info.run_name for r in runs if (rid := r.info.run_id) in scorable}


def session_runs(client, run_id: str) -> list:
    """The evaluation runs timed in one session with `run_id`, the base first."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ExatrackError(f"no run {run_id} in this tracking store; pass an evaluation run's id (exatrack "
                            "leaderboard, or the MLflow UI, shows them)") from None
    if run.data.tags.get("exatrack.kind") != "evaluation" or not run.data.tags.get(SESSION):
        raise ExatrackError(f"run {run_id} is a {run.data.tags.get('exatrack.kind', 'non-exatrack')} run, not an "
                            "evaluation; pass the id of an evaluation run")
    query = f"tags.`{SESSION}` = {tracking.quoted(run.data.tags[SESSION])} and tags.`exatrack.kind` = 'evaluation'"
    runs = client.search_runs([run.info.experiment_id], query, max_results=1000)
    return sorted(runs, key=lambda r: r.data.tags.get(BASE) != "true")


def read_kept(client, run) -> tuple[dict, dict] | None:
    """The run's answers.json and generation.json; None where it kept none."""
    import json

    from mlflow.exceptions import MlflowException

    names = {f.path for f in client.list_artifacts(run.info.run_id)}
    if not {"answers.json", "generation.json"} <= names:
        return None
    try:
        return tuple(json.loads(load_text(run.info.run_id, name)) for name in ("answers.json", "generation.json"))
    except (MlflowException, OSError, ValueError) as err:
        raise ExatrackError(f"run {run.info.run_id}'s kept answers do not read ({type(err).__name__}: "
                            f"{str(err)[:120]}); evaluate the session again") from None


def load_text(run_id: str, path: str) -> str:
    import mlflow

    return mlflow.artifacts.load_text(f"runs:/{run_id}/{path}")


def session_settings(kept) -> tuple[Settings, dict]:
    """The one set of settings and row sources a session's answers were generated under."""
    first = next(iter(kept))[1]
    known = set(Settings.__dataclass_fields__)
    settings = Settings(**{k: v for k, v in first["settings"].items() if k in known})
    return settings, first["sources"]


def check_rows(rows: dict, content: dict, run_id: str) -> None:
    """The rows read now must be those the answers were generated for: answers are matched to rows
    by position, so other rows would score every answer against another question."""
    for name, hashed in content.items():
        if content_hash(rows[name]) != hashed:
            raise ExatrackError(f"{REGISTRY[name].title}'s rows are not those run {run_id} answered (its source "
                                "changed since the evaluation); restore them, or evaluate again")
