"""The leaderboard: every evaluation in scope scored against the base it was timed beside (the base
run of its own serving session), with 95% intervals; the lanes statistically tied with the leader;
and a verdict that says whether anything beats the base at all.

A board covers ONE fingerprint and ONE source model: a tiny-model demo and a real-model study in the
same store never compete, and a run is never scored against a base from other conditions.
"""

import statistics
from dataclasses import dataclass, field

from exatrack.core.tracking import quoted
from exatrack.evaluate import session as evaluate
from exatrack.evaluate.benchmarks import REGISTRY
from exatrack.models.models import MODEL_TYPE, SOURCE_MODEL
from exatrack.score.score import Difference, Measured, Score, Unscorable, paired_difference, paired_score, recovery

BASE_SCORE = 0.5  # the base against itself: PerfNorm 1, SpeedNorm 0


@dataclass
class Entry:
    run: object  # the evaluation run
    base_run_id: str | None = None
    score: Score | None = None
    reason: str = ""
    tied: bool = False  # with the leader: see mark_ties
    to_leader: Difference | None = None  # this lane minus the leader, paired (same session only)
    recovery: dict = field(default_factory=dict)  # benchmark -> Recovery against the base
    official: float | None = None
    estimate: tuple | None = None  # (low, mid, high) of the official score, from recorded pairs

    @property
    def name(self) -> str:
        tags = self.run.data.tags
        if self.is_base:
            return f"base ({tags.get('exatrack.evaluated_model', '')})"
        return tags.get("exatrack.lane") or tags.get("exatrack.evaluated_model") or self.run.info.run_id[:8]

    @property
    def is_base(self) -> bool:
        return self.run.data.tags.get(evaluate.BASE) == "true"

    @property
    def checkpoint_run(self) -> str | None:
        return self.run.data.tags.get("exatrack.checkpoint_run")


@dataclass
class Board:
    fingerprint: str
    source: str
    entries: list[Entry]
    official_ratios: list[float] = field(default_factory=list)  # official / local of every recorded pair
    champion: str | None = None  # the registered version `champion` points at after this ranking
    registered_model: str | None = None  # the registered model it ranked into

    @property
    def scored(self) -> list[Entry]:
        """Candidates with a score, best first (bases are the yardstick, not contestants)."""
        return sorted((e for e in self.entries if e.score and not e.is_base), key=lambda e: -e.score.score)

    @property
    def leader(self) -> Entry | None:
        return self.scored[0] if self.scored else None

    @property
    def source_type(self) -> str | None:
        """The base's model_type; None for runs evaluated before exatrack tagged it (all EXAONE-4)."""
        return next((e.run.data.tags.get(MODEL_TYPE) for e in self.entries if e.is_base), None)

    def verdict(self) -> str:
        leader = self.leader
        if leader is None:
            return "no lane was scored"
        if leader.score.score <= BASE_SCORE:
            return f"no lane beats the base (best: {leader.name}, score {leader.score.score:.4f} <= {BASE_SCORE})"
        s = leader.score
        line = f"{leader.name} leads with score {s.score:.4f} [{s.score_ci.low:.4f}, {s.score_ci.high:.4f}]"
        tied = [e.name for e in self.scored[1:] if e.tied]
        if len(tied) == 1:
            line += f"; {tied[0]} is tied with it"
        elif tied:
            line += f"; {', '.join(tied[:-1])} and {tied[-1]} are tied with it"
        if s.score_ci.low <= BASE_SCORE:
            line += f"; its lead over the base ({BASE_SCORE}) is inside the noise"
        return line


def load_measured(run) -> Measured:
    import mlflow

    tags, metrics = run.data.tags, run.data.metrics
    names = [n for n in tags.get("exatrack.perf_benchmarks", "").split(",") if n]
    primary = {n: f"{n}.{REGISTRY[n].primary}" for n in names}
    try:
        paired = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/paired.json")
        items, chunks = paired["items"], paired["chunks"]
    except Exception as err:  # deleted, truncated, or of another shape: that run is unscored, the board stands
        raise Unscorable(f"paired.json of evaluation run {run.info.run_id} cannot be read "
                         f"({type(err).__name__}); evaluate it again")
    return Measured(
        scores={n: metrics[key] for n, key in primary.items() if key in metrics},
        sec_per_token=metrics.get("bench_sec_per_token", 0.0),
        judges={n: tags[f"{n}.judge"] for n in names if f"{n}.judge" in tags},
        items=items,
        chunks=chunks,
        tokens={n: metrics[f"{n}.gen_tokens"] for n in chunks if f"{n}.gen_tokens" in metrics},
    )


def evaluation_runs(client, experiment_id: str, fingerprint: str | None = None, source: str | None = None) -> list:
    query = f"attributes.status = 'FINISHED' and tags.`exatrack.kind` = 'evaluation' and tags.`{evaluate.FINGERPRINT}` LIKE '%'"
    if fingerprint:
        query += f" and tags.`{evaluate.FINGERPRINT}` = {quoted(fingerprint)}"
    if source:
        query += f" and tags.`{SOURCE_MODEL}` = {quoted(source)}"
    return client.search_runs([experiment_id], query, max_results=5000, order_by=["attributes.start_time DESC"])


def default_scope(runs: list) -> tuple[str, str] | None:
    """The fingerprint and source model of the newest base: the study the user ran last."""
    for run in runs:  # newest first
        if run.data.tags.get(evaluate.BASE) == "true":
            return run.data.tags[evaluate.FINGERPRINT], run.data.tags[SOURCE_MODEL]
    return None


def scope_type(client, experiment_id: str, fingerprint: str | None, source: str | None) -> str | None:
    """The model_type of the base a ranking would score against (None where none is tagged)."""
    runs = evaluation_runs(client, experiment_id, fingerprint, source)
    return next((r.data.tags.get(MODEL_TYPE) for r in runs if r.data.tags.get(evaluate.BASE) == "true"), None)


def for_scope(client, experiment_id: str, fingerprint: str | None, source: str | None, estimator: str = "sum") -> Board:
    """The board of the named fingerprint and source model, else of the newest base's."""
    from exatrack.core.basics import ExatrackError

    runs = evaluation_runs(client, experiment_id, fingerprint, source)
    scope = (fingerprint, source) if fingerprint and source else default_scope(runs)
    if scope is None:
        raise ExatrackError("no evaluated base in this experiment: run `exatrack evaluate` (or `pipeline`) first, "
                            "or pick the experiment with --experiment")
    return build(runs, *scope, estimator)


def build(runs: list, fingerprint: str, source: str, estimator: str = "sum") -> Board:
    """Score every run of this fingerprint and source against the base of its own session."""
    runs = [r for r in runs if r.data.tags.get(evaluate.FINGERPRINT) == fingerprint
            and r.data.tags.get(SOURCE_MODEL) == source]
    bases = {r.data.tags.get(evaluate.SESSION): r for r in runs if r.data.tags.get(evaluate.BASE) == "true"}
    measured_bases = {}  # a base is read once, however many candidates its session had
    board = Board(fingerprint, source, [])
    for run in runs:
        entry = Entry(run, official=run.data.metrics.get("official_score"))
        board.entries.append(entry)
        base = bases.get(run.data.tags.get(evaluate.SESSION))
        if entry.is_base:
            continue
        if base is None:
            entry.reason = "its serving session has no finished base run: evaluate it again with its base"
            continue
        entry.base_run_id = base.info.run_id
        try:
            if base.info.run_id not in measured_bases:
                measured_bases[base.info.run_id] = load_measured(base)
            measured = load_measured(run)
            entry.score = paired_score(measured, measured_bases[base.info.run_id], estimator)
            entry.recovery = recovery(measured, measured_bases[base.info.run_id])
        except Unscorable as err:
            entry.reason = str(err)
    mark_ties(board)
    estimate_official(board)
    return board


def mark_ties(board: Board) -> None:
    """Tied with the leader: for a lane of the leader's own session, the paired interval of its score
    minus the leader's holds 0; for a lane of another session (another base, other units) nothing is
    shared to pair on, and tied means their two intervals overlap, a conservative rule said as such."""
    leader = board.leader
    for entry in board.scored[1:]:
        if entry.base_run_id == leader.base_run_id:
            try:
                entry.to_leader = paired_difference(entry.score, leader.score)
                entry.tied = 0 in entry.to_leader.score_ci
                continue
            except Unscorable as err:
                entry.reason = f"not paired with the leader ({err})"
        entry.tied = entry.score.score_ci.high >= leader.score.score_ci.low


def estimate_official(board: Board) -> None:
    """official ~= k x local, with k spanning the recorded pairs' ratios: one fitted k would hide
    that they differ (0.59 to 0.92 in the challenge team's four pairs)."""
    ratios = [e.official / e.score.score for e in board.scored if e.official is not None and e.score.score > 0]
    board.official_ratios = ratios
    if len(ratios) < 2:
        return
    middle = statistics.median(ratios)
    for entry in board.scored:
        local = entry.score.score
        entry.estimate = (min(ratios) * local, middle * local, max(ratios) * local)
