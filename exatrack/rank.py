"""`rank`: score every evaluated run against the base run of the SAME evaluation fingerprint, log the
scores on the runs, draw a leaderboard on a ranking run, and point the `champion` alias at the best
checkpoint in the Model Registry.

A run is never scored against a base from another fingerprint (another GPU, vLLM version, benchmark
set or generation budget): speed ranks flip between GPUs. Runs with no matching base are listed as
unscored, with the reason.
"""

import csv
import io
from dataclasses import dataclass, field

from exatrack import tracking
from exatrack.bench import REGISTRY
from exatrack.models import SOURCE_MODEL
from exatrack.score import Measured, Score, Unscorable, challenge_score

REGISTERED_MODEL = "EXAONE-4.0-1.2B-exatrack"  # the EXAONE licence: a modified model's name begins with "EXAONE"
CHAMPION = "champion"


@dataclass
class Entry:
    run: object
    base_run_id: str | None = None
    score: Score | None = None
    reason: str = ""
    official: float | None = None
    estimate: float | None = None
    paired: float | None = None  # the score with SpeedNorm from `exatrack speed` against the same base model


    @property
    def name(self) -> str:
        tags = self.run.data.tags
        return tags.get("exatrack.lane") or self.run.info.run_name or self.run.info.run_id[:8]

    @property
    def is_base(self) -> bool:
        return self.run.data.tags.get("exatrack.base") == "true"


@dataclass
class Board:
    entries: list[Entry]
    fit: dict = field(default_factory=dict)  # {"ratio": k, "points": n} once official scores exist
    champion: str | None = None  # the registered version `champion` points at after this ranking

    @property
    def scored(self) -> list[Entry]:
        return sorted((e for e in self.entries if e.score), key=lambda e: -e.score.score)


def measured(run) -> Measured:
    tags, metrics = run.data.tags, run.data.metrics
    names = [n for n in tags.get("exatrack.perf_benchmarks", "").split(",") if n]
    scores = {n: metrics[f"{n}.{REGISTRY[n].primary}"] for n in names if f"{n}.{REGISTRY[n].primary}" in metrics}
    judges = {n: tags[f"{n}.judge"] for n in names if f"{n}.judge" in tags}
    return Measured(scores, metrics.get("bench_sec_per_token", 0.0), judges)


def evaluated_runs(client, experiment_id: str) -> list:
    """The experiment's evaluated runs: an experiment is one study, ranked on its own."""
    return client.search_runs(
        [experiment_id], "attributes.status = 'FINISHED' and tags.`exatrack.fingerprint` LIKE '%'",
        max_results=5000, order_by=["attributes.start_time DESC"],
    )


def pick_base(run, bases: list):
    """The newest base of the same fingerprint, and of the same source model where the run names one
    (the model a chain of steps started from, not the step before)."""
    tags = run.data.tags
    source = tags.get(SOURCE_MODEL)
    for base in bases:  # newest first
        if base.data.tags["exatrack.fingerprint"] != tags["exatrack.fingerprint"]:
            continue
        if source is None or base.data.tags.get(SOURCE_MODEL) == source:
            return base
    return None


def build_board(runs: list) -> Board:
    bases = [r for r in runs if r.data.tags.get("exatrack.base") == "true"]
    entries = []
    for run in runs:
        entry = Entry(run, official=run.data.metrics.get("official_score"))
        base = pick_base(run, bases)
        if base is None:
            entry.reason = (f"no base run with fingerprint {run.data.tags['exatrack.fingerprint']}: "
                            "run `exatrack baseline` on the source model with the same settings")
        else:
            entry.base_run_id = base.info.run_id
            try:
                entry.score = challenge_score(measured(run), measured(base))
                entry.paired = paired_score(run, base, entry.score)
            except Unscorable as err:
                entry.reason = str(err)
        entries.append(entry)
    board = Board(entries)
    fit_official(board)
    return board


def paired_score(run, base, score: Score) -> float | None:
    """The same PerfNorm with the controlled SpeedNorm, when the run's speed was paired with its base
    model on the base's device."""
    tags, metrics = run.data.tags, run.data.metrics
    same = (tags.get("speed.base_model") == base.data.tags.get(SOURCE_MODEL)
            and tags.get("speed.device") == base.data.tags.get("exatrack.device"))
    if "speed_norm_paired" not in metrics or not same:
        return None
    return max(0.5 * score.perf_norm + 0.5 * metrics["speed_norm_paired"], 0.0)


def fit_official(board: Board) -> None:
    """official ~= k * local, least squares through the origin; offered once two runs have both."""
    points = [(e.score.score, e.official) for e in board.entries if e.score and e.official is not None]
    if len(points) < 2 or not any(local for local, _ in points):
        return
    ratio = sum(local * official for local, official in points) / sum(local * local for local, _ in points)
    board.fit = {"ratio": ratio, "points": len(points)}
    for entry in board.scored:
        entry.estimate = ratio * entry.score.score


def log_scores(client, board: Board) -> None:
    for entry in board.scored:
        run_id = entry.run.info.run_id
        for key, value in (("perf_norm", entry.score.perf_norm), ("speed_norm", entry.score.speed_norm),
                           ("score", entry.score.score)):
            client.log_metric(run_id, key, value)
        if entry.estimate is not None:
            client.log_metric(run_id, "official_estimate", entry.estimate)
        if entry.paired is not None:
            client.log_metric(run_id, "score_paired", entry.paired)
        client.set_tag(run_id, "base_run_id", entry.base_run_id)
        client.set_tag(run_id, "exatrack.score_benchmarks", ",".join(entry.score.benchmarks))


COLUMNS = ["rank", "name", "run_id", "recipe", "perf", "perf_norm", "speed_norm", "score", "score_paired", "official",
           "estimate", "base_run_id", "note"]


def rows(board: Board) -> list[dict]:
    table = []
    for i, e in enumerate(board.scored + [e for e in board.entries if not e.score], start=1):
        s = e.score
        table.append({
            "rank": i if s else "", "name": e.name + (" (base)" if e.is_base else ""), "run_id": e.run.info.run_id,
            "recipe": e.run.data.params.get("recipe", ""),
            "perf": f"{s.perf:.4f}" if s else "", "perf_norm": f"{s.perf_norm:.4f}" if s else "",
            "speed_norm": f"{s.speed_norm:+.4f}" if s else "", "score": f"{s.score:.4f}" if s else "",
            "score_paired": "" if e.paired is None else f"{e.paired:.4f}",
            "official": "" if e.official is None else f"{e.official:.4f}",
            "estimate": "" if e.estimate is None else f"{e.estimate:.4f}",
            "base_run_id": e.base_run_id or "", "note": e.reason,
        })
    return table


def markdown(board: Board) -> str:
    table = rows(board)
    shown = [c for c in COLUMNS if c not in ("run_id", "base_run_id") and any(r[c] for r in table)]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(str(r[c]) for c in shown) + " |" for r in table]
    if board.fit:
        lines.append(f"\nofficial estimate = {board.fit['ratio']:.3f} x score, fitted on {board.fit['points']} runs "
                     "with recorded official scores")
    return "\n".join(lines) + "\n"


def to_csv(board: Board) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, COLUMNS)
    writer.writeheader()
    writer.writerows(rows(board))
    return out.getvalue()


def plot(board: Board):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for e in board.scored:
        ax.scatter(e.score.speed_norm, e.score.perf_norm, marker="*" if e.is_base else "o", s=80)
        ax.annotate(f"{e.name} ({e.score.score:.3f})", (e.score.speed_norm, e.score.perf_norm), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ax.axhline(1, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlabel("SpeedNorm = 1 - spt / spt_base")
    ax.set_ylabel("PerfNorm = Perf / Perf_base")
    ax.set_title("exatrack leaderboard (score = max(0.5 PerfNorm + 0.5 SpeedNorm, 0))")
    fig.tight_layout()
    return fig


def register_champion(client, board: Board, model_name: str) -> str | None:
    """Register the best scored checkpoint (once per run) and point `champion` at it."""
    from mlflow.exceptions import MlflowException

    for entry in board.scored:
        run = entry.run
        if entry.is_base or not client.list_artifacts(run.info.run_id, "checkpoint"):
            continue
        try:
            client.get_registered_model(model_name)
        except MlflowException:
            client.create_registered_model(model_name)
        existing = client.search_model_versions(f"name = '{model_name}' and run_id = '{run.info.run_id}'")
        version = existing[0] if existing else client.create_model_version(
            model_name, source=f"{run.info.artifact_uri}/checkpoint", run_id=run.info.run_id,
            tags={"score": f"{entry.score.score:.4f}", "fingerprint": run.data.tags["exatrack.fingerprint"]},
        )
        client.set_registered_model_alias(model_name, CHAMPION, version.version)
        return version.version
    return None


def rank(model_name: str = REGISTERED_MODEL, parent_run_id: str | None = None) -> Board:
    import mlflow
    from mlflow import MlflowClient

    from exatrack import ExatrackError

    if not model_name.startswith("EXAONE"):
        raise ExatrackError(f"registered model name '{model_name}' must begin with 'EXAONE' (the EXAONE model licence)")
    client = MlflowClient()
    with tracking.run("rank", run_name="rank", parent_run_id=parent_run_id) as active:
        board = build_board(evaluated_runs(client, active.info.experiment_id))
        log_scores(client, board)
        mlflow.log_text(markdown(board), "leaderboard.md")
        mlflow.log_text(to_csv(board), "leaderboard.csv")
        tracking.log_figure(plot(board), "leaderboard.png")
        mlflow.log_metrics({"scored_runs": len(board.scored), "unscored_runs": len(board.entries) - len(board.scored)})
        board.champion = register_champion(client, board, model_name)
        if board.champion:
            mlflow.set_tags({"exatrack.champion_version": board.champion, "exatrack.registered_model": model_name})
        if board.fit:
            mlflow.log_metrics({"official_ratio": board.fit["ratio"], "official_points": board.fit["points"]})
    return board


def record_official(run_id: str, score: float) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from exatrack import ExatrackError

    try:
        MlflowClient().log_metric(run_id, "official_score", score)
    except MlflowException as err:
        raise ExatrackError(f"cannot record an official score on run {run_id} ({str(err).splitlines()[0][:150]})")
