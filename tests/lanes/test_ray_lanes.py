"""Lanes fanned out over a local Ray cluster of 2 workers give what running them in turn gives: the same
step runs (a shared prefix made once), the same lineage, the same leaderboard; a failing lane fails
alone; Ctrl-C stops every worker and leaves no run RUNNING."""

import json
import signal
import time

import mlflow
import psutil
import pytest
from mlflow import MlflowClient

from exatrack.core import tracking
from exatrack.evaluate import serving
from exatrack.lanes.pipeline import pipeline as run_pipeline
from exatrack.lanes.steps import STEP_INPUTS
from tests.fakes import RecordedSession
from tests.lanes.test_pipeline import SETTINGS, SMALL
from tests.test_faults import EVALUATION, FAKE_VLLM, QUANTIZE, Folder


def pipeline(*args, **kwargs):
    """A pipeline without the grader check: what is under test here is the orchestration (the check
    has its own tests in test_grader and test_package, and `make demo` runs it whole)."""
    return run_pipeline(*args, **{"grader_check": False, **kwargs})


pytest.importorskip("ray")
LANES = {  # two lanes sharing their prune step, and one that fails
    "prune-w8a8": {"steps": [{"prune": {"drop": 1, **SMALL}}, {"quantize": {"recipe": "w8a8", **SMALL}}]},
    "prune-fp8": {"steps": [{"prune": {"drop": 1, **SMALL}}, {"quantize": {"recipe": "fp8_dynamic"}}]},
    "broken": {"steps": [{"prune": {"drop": 4, **SMALL}}]},  # tiny has 4 layers: fails when it runs
}


def tree(experiment: str) -> tuple[dict, dict]:
    """Each step run as (kind, lane, the step key it took its model from), by its own step key; and the
    pipeline run's lane tags."""
    client = MlflowClient()
    runs = client.search_runs([mlflow.get_experiment_by_name(experiment).experiment_id])
    steps = {r.info.run_id: r for r in runs if STEP_INPUTS in r.data.tags}
    key_of = {f"runs:/{run_id}/checkpoint": r.data.tags[STEP_INPUTS] for run_id, r in steps.items()}
    shape = {}
    for r in steps.values():
        key = r.data.tags[STEP_INPUTS]
        assert key not in shape, "a step ran twice"
        shape[key] = (r.data.tags["exatrack.kind"], r.info.status, key_of.get(r.data.params["model"], r.data.params["model"]))
    parent = next(r for r in runs if r.data.tags["exatrack.kind"] == "pipeline")
    return shape, {k: v for k, v in parent.data.tags.items() if k.startswith("lane.")}


@pytest.fixture(scope="module")
def both(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray")
    lanes = folder / "lanes.yaml"
    lanes.write_text(json.dumps({"lanes": LANES}))
    outcomes = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(serving, "run_session", RecordedSession())
        for kind, workers in (("in-turn", 1), ("ray", 2)):
            mlflow.set_experiment(f"lanes-{kind}")
            outcomes[kind] = pipeline("tiny", str(lanes), SETTINGS, workers=workers, out=str(folder / f"{kind}.zip"),
                                      model_name=f"EXAONE-lanes-{kind}")
    return outcomes


def test_ray_and_in_turn_make_the_same_runs_and_lineage(both):
    in_turn, ray = tree("lanes-in-turn"), tree("lanes-ray")
    assert ray == in_turn
    shape, lane_tags = ray
    assert sorted(kind for kind, _, _ in shape.values()) == ["prune", "prune", "quantize", "quantize"]
    assert lane_tags["lane.broken"].startswith("failed: drop=4")


def test_ray_and_in_turn_give_the_same_statuses_and_leaderboard(both):
    assert both["ray"].lanes == both["in-turn"].lanes
    assert both["ray"].failed == ["broken"]
    boards = {kind: sorted((e.name, e.score and round(e.score.score, 6), e.reason) for e in outcome.board.entries)
              for kind, outcome in both.items()}
    assert boards["ray"] == boards["in-turn"] and len(boards["ray"]) == 3  # the base and two lanes


def test_ray_step_runs_say_where_they_ran(both):
    runs = MlflowClient().search_runs([mlflow.get_experiment_by_name("lanes-ray").experiment_id],
                                      f"tags.`{STEP_INPUTS}` != ''")
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert finished and all("exatrack.worker" in r.data.tags for r in finished)


def ray_workers() -> list:
    return [p for p in psutil.process_iter(["cmdline"]) if "ray::" in " ".join(p.info["cmdline"] or [])]


def test_ctrl_c_stops_every_worker_and_leaves_no_run_running(tiny_model, tmp_path):
    folder = Folder(tmp_path)
    proc = folder.start(FAKE_VLLM, "pipeline", *EVALUATION, "--workers", "2", "--lanes", "lanes.yaml")
    folder.kill_when(proc, lambda: bool(folder.running(QUANTIZE)), sig=signal.SIGINT)
    assert proc.returncode != 0
    assert folder.runs("attributes.status = 'RUNNING'") == []
    stopped = folder.runs("attributes.status = 'KILLED'")
    assert stopped and all(r.data.tags["exatrack.ended"] == tracking.INTERRUPTED for r in stopped)
    deadline = time.monotonic() + 30
    while ray_workers() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray_workers() == []
