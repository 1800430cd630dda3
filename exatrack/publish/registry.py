"""The MLflow Model Registry: the leader's checkpoint registered once, `champion` pointed at it, but only
where it was earned (a score above the base's 0.5). Aliases, not stages."""

import logging
import re
from pathlib import Path

from exatrack.core.basics import ExatrackError
from exatrack.models.models import SOURCE_MODEL

log = logging.getLogger(__name__)
REGISTERED_MODEL = "EXAONE-4.0-1.2B-exatrack"  # the EXAONE licence: a modified model's name begins with "EXAONE"
CHAMPION = "champion"
SUBMISSION = "submission"
EXAONE_TYPES = (None, "", "exaone4")  # model types the licence's naming rule covers (None: tagged before it existed)


def name_for(source: str, model_type: str | None) -> str:
    """The registered model a source's lanes go under unless one is named: EXAONE's, or for another
    family one of its own (e.g. smollm2-exatrack), so that one registry never mixes two models."""
    return REGISTERED_MODEL if model_type in EXAONE_TYPES else f"{slug(source)}-exatrack"


def slug(source: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(source).name).strip("-")


def check_name(model_name: str, model_type: str | None = None) -> None:
    from exatrack.core.tracking import quoted

    if model_type in EXAONE_TYPES and not model_name.startswith("EXAONE"):
        raise ExatrackError(f"registered model name '{model_name}' must begin with 'EXAONE' (the EXAONE model licence)")
    quoted(model_name)  # a name MLflow's search cannot find again is refused before any work


def check_one_source(client, model_name: str, source: str, model_type: str | None) -> None:
    """`champion` and `submission` of a registered model point at one source model's lanes; a version
    of another (SmolLM2 ranked under EXAONE's name) would let `promote` zip the wrong model."""
    from exatrack.core.tracking import quoted

    for version in client.search_model_versions(f"name = {quoted(model_name)}"):
        theirs = version.tags.get("source_model") or client.get_run(version.run_id).data.tags.get(SOURCE_MODEL)
        if theirs and theirs != source:
            # another family gets its own default; another EXAONE source this name and the licence's prefix
            own = f"{model_name}-{slug(source)}" if model_type in EXAONE_TYPES else name_for(source, model_type)
            raise ExatrackError(f"{model_name} holds versions of {theirs}, not {source}; rank {source}'s lanes under "
                                f"their own name: --registered_model {own}")


def register_champion(client, board, model_name: str) -> str | None:
    """Register the leader's checkpoint (once per run) and point `champion` at it; None, and a
    warning, when no lane beats the base."""
    from mlflow.exceptions import MlflowException

    from exatrack.core.tracking import quoted
    from exatrack.publish import card
    from exatrack.score.leaderboard import BASE_SCORE

    leader = board.leader
    if leader is None or leader.score.score <= BASE_SCORE:
        log.warning("nothing registered: %s", board.verdict())
        return None
    run_id = leader.checkpoint_run
    if not run_id or not client.list_artifacts(run_id, "checkpoint"):
        log.warning("nothing registered: the leader %s has no checkpoint run", leader.name)
        return None
    try:
        client.create_registered_model(model_name)
    except MlflowException as err:  # there already, maybe made by a command ranking at the same moment
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    existing = client.search_model_versions(f"name = {quoted(model_name)} and run_id = {quoted(run_id)}")
    s = leader.score
    check_one_source(client, model_name, board.source, board.source_type)
    tags = {"score": f"{s.score:.4f}", "score_ci": f"[{s.score_ci.low:.4f}, {s.score_ci.high:.4f}]",
            "source_model": board.source,
            "fingerprint": board.fingerprint, "evaluation_run": leader.run.info.run_id,
            "tied_with": ",".join(e.name for e in board.scored[1:] if e.tied)}
    version = existing[0] if existing else client.create_model_version(
        model_name, source=f"{client.get_run(run_id).info.artifact_uri}/checkpoint", run_id=run_id, tags=tags)
    for key, value in tags.items():  # a re-ranking updates what the version's score is now
        client.set_model_version_tag(model_name, version.version, key, value)
    mark_champion(client, model_name, run_id)
    client.set_registered_model_alias(model_name, CHAMPION, version.version)
    card.write(client, model_name, version.version)
    return version.version


def mark_champion(client, model_name: str, run_id: str) -> None:
    """The tag `exatrack.champion` on the champion's run only: the UI's runs table shows which it is."""
    from mlflow.exceptions import MlflowException

    try:
        previous = client.get_model_version_by_alias(model_name, CHAMPION).run_id
    except MlflowException:
        previous = None
    if previous and previous != run_id:
        client.delete_tag(previous, "exatrack.champion")
    client.set_tag(run_id, "exatrack.champion", model_name)
