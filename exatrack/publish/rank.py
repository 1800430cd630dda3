"""`rank`: build the leaderboard of one fingerprint and source model, log every score with its interval
on its evaluation run, log the board (markdown, CSV, plot) on a ranking run, and point `champion` at
the leader where it beats the base."""

from exatrack.core import stats, tracking
from exatrack.core.basics import ExatrackError
from exatrack.publish import registry
from exatrack.score import leaderboard, render


def log_scores(client, board) -> None:
    """On every evaluation run, and on the lane's run it is nested under, so that the UI's runs table
    shows each lane's score without opening anything."""
    for place, entry in enumerate(board.scored, start=1):
        s = entry.score
        metrics = {"rank": place}
        for key in ("perf_norm", "speed_norm", "score"):
            interval = getattr(s, f"{key}_ci")
            metrics.update({key: getattr(s, key), f"{key}_low": interval.low, f"{key}_high": interval.high})
        if entry.estimate:
            metrics["official_estimate"] = entry.estimate[1]
        if d := entry.to_leader:
            metrics.update(to_leader=d.score, to_leader_low=d.score_ci.low, to_leader_high=d.score_ci.high)
        for name, r in entry.recovery.items():
            if r.ratio is not None:
                metrics.update({f"{name}.recovery": r.ratio, f"{name}.recovery_low": r.ci.low,
                                f"{name}.recovery_high": r.ci.high})
            if r.token_ratio is not None:
                metrics[f"{name}.token_ratio"] = r.token_ratio
        tags = {"base_run_id": entry.base_run_id, "exatrack.score_benchmarks": ",".join(s.benchmarks),
                "exatrack.tied_with_leader": "yes" if entry.tied else "no",
                "exatrack.tie_rule": "paired" if entry.to_leader or place == 1 else "intervals overlap (other session)"}
        for run_id in filter(None, (entry.run.info.run_id, entry.checkpoint_run)):
            for key, value in metrics.items():
                client.log_metric(run_id, key, value)
            for key, value in tags.items():
                client.set_tag(run_id, key, value)


def log_board(board) -> None:
    """On the active run (the ranking run, and a pipeline's own): the table, the plot, the verdict."""
    import mlflow

    mlflow.log_text(render.markdown(board), "leaderboard.md")
    mlflow.log_text(render.to_csv(board), "leaderboard.csv")
    if board.scored:
        tracking.log_figure(render.plot(board), "leaderboard.png")
        tracking.log_figure(render.recovery_plot(board), "recovery.png")
    mlflow.set_tag("exatrack.verdict", board.verdict()[:5000])


def rank(model_name: str | None = None, parent_run_id: str | None = None, fingerprint: str | None = None,
         source: str | None = None, estimator: str = "sum", register: bool = True) -> leaderboard.Board:
    """The board of one fingerprint and source; its leader registered under `model_name` (by default
    the source's own: registry.name_for), which the board keeps as `registered_model`."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    if model_name:  # refused before any run opens; the type of the base it would rank against decides the rule
        registry.check_name(model_name, leaderboard.scope_type(client, tracking.use_experiment(), fingerprint, source))
    if estimator not in stats.ESTIMATORS:
        raise ExatrackError(f"estimator={estimator} is not one of {', '.join(stats.ESTIMATORS)}")
    with tracking.run("rank", run_name="rank", parent_run_id=parent_run_id) as active:
        board = leaderboard.for_scope(client, active.info.experiment_id, fingerprint, source, estimator)
        board.registered_model = model_name = model_name or registry.name_for(board.source, board.source_type)
        log_scores(client, board)
        mlflow.log_params({"fingerprint": board.fingerprint, "source_model": board.source, "estimator": estimator})
        log_board(board)
        mlflow.log_metrics({"scored_runs": len(board.scored),
                            "unscored_runs": sum(1 for e in board.entries if not e.score and not e.is_base)})
        if register:
            board.champion = registry.register_champion(client, board, model_name)
        if board.champion:
            mlflow.set_tags({"exatrack.champion_version": board.champion, "exatrack.registered_model": model_name})
    return board


def record_official(run_id: str, score: float) -> None:
    import math

    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if not (math.isfinite(score) and 0 <= score <= 1):
        raise ExatrackError(f"--score {score} is not an official challenge score; pass a number between 0 and 1")
    try:
        MlflowClient().log_metric(run_id, "official_score", score)
    except MlflowException as err:
        raise ExatrackError(f"cannot record an official score on run {run_id} ({str(err).splitlines()[0][:150]}); "
                            "check the run id (`mlflow runs list`, or the MLflow UI)")
