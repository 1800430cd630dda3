"""Faults and concurrency, with real processes: a command killed with -9 leaves runs that the next
command ends and a temp folder that it removes, and a killed pipeline resumes from its finished steps;
two pipelines started at once on a fresh store both finish.

The pipelines run as `tests/fakes.py`, the exatrack command line with a recorded session standing in
for vLLM: what is under test is the store and the processes, not generation.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import psutil
import pytest
from mlflow import MlflowClient

from exatrack.core import processes, tracking
from exatrack.evaluate import serving
from tests.conftest import REPO

FAKE_VLLM = [sys.executable, str(REPO / "tests" / "fakes.py")]
EXATRACK = [str(Path(sys.executable).parent / "exatrack")]
SMALL = {"num_samples": 8, "max_seq_len": 64}
LANES = {"pruned-fp8": {"steps": [{"prune": {"drop": 1, **SMALL}}, {"quantize": {"recipe": "fp8_dynamic"}}]},
         "fp8": {"recipe": "fp8_dynamic"},
         "w8a8": {"recipe": "w8a8", **SMALL}}
EVALUATION = ["--model", "tiny", "--data", "sample", "--benchmarks", "kmmlu_redux", "--pattern", "chunks", "--chunks", "2",
              "--grader_check", "false"]  # the store and the processes are under test here, not the submission


class Folder:
    """A working folder of its own (so its own store) and a temp folder its commands are pointed at."""

    def __init__(self, path: Path):
        self.path, self.temp, self.logs = path, path / "tmp", {}
        self.temp.mkdir()
        (path / "lanes.yaml").write_text(json.dumps({"lanes": LANES}))
        self.client = MlflowClient(f"sqlite:///{path / 'mlflow.db'}")

    def start(self, command: list[str], *args: str) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}  # not this test session's store
        log = self.path / f"command{len(self.logs) + 1}.log"
        with log.open("w") as out:
            proc = subprocess.Popen([*command, "--experiment", "faults", *args], cwd=self.path, stdout=out,
                                    stderr=subprocess.STDOUT, env={**env, "TMPDIR": str(self.temp)})
        self.logs[proc.pid] = log
        return proc

    def finish(self, proc: subprocess.Popen) -> str:
        """Its output, once it ended with status 0."""
        proc.wait(timeout=600)
        output = self.logs[proc.pid].read_text()
        assert proc.returncode == 0, output[-3000:]
        return output

    def kill_when(self, proc: subprocess.Popen, reached, seconds: float = 300, sig=signal.SIGKILL) -> None:
        """kill -9 (or send `sig`) once `reached()` holds (polled); the process must still be running then."""
        deadline = time.monotonic() + seconds
        while not reached():
            assert proc.poll() is None, self.logs[proc.pid].read_text()[-3000:]
            assert time.monotonic() < deadline, "never reached the point to kill it"
            time.sleep(0.2)
        proc.send_signal(sig)
        proc.wait(timeout=60)

    def runs(self, query: str = "") -> list:
        return self.client.search_runs([e.experiment_id for e in self.client.search_experiments()], query)

    def running(self, query: str) -> list:
        return self.runs(f"attributes.status = 'RUNNING' and {query}")


QUANTIZE = "tags.`exatrack.kind` = 'quantize'"
LANE_QUANTIZE = f"{QUANTIZE} and tags.`exatrack.lane` = 'pruned-fp8'"


def test_a_killed_pipeline_is_ended_cleaned_up_after_and_resumes_from_its_finished_steps(tiny_model, tmp_path):
    folder = Folder(tmp_path)
    folder.client.search_experiments()  # the store exists before this test polls it
    pipeline = folder.start(FAKE_VLLM, "pipeline", *EVALUATION, "--only", "pruned-fp8", "--lanes", "lanes.yaml")
    # killed in its lane's second step, the first (prune) finished: its temp folder left behind
    folder.kill_when(pipeline, lambda: folder.running(LANE_QUANTIZE))
    left = [p.name for p in folder.temp.iterdir()]
    assert left and left == [f.name for f in folder.temp.glob(f"exatrack-*-{pipeline.pid}-*")]
    prune = folder.runs("tags.`exatrack.kind` = 'prune'")
    assert [r.info.status for r in prune] == ["FINISHED"]

    resumed = folder.start(FAKE_VLLM, "pipeline", *EVALUATION, "--only", "pruned-fp8", "--lanes", "lanes.yaml")
    assert "lane pruned-fp8: done" in folder.finish(resumed)
    assert [r.info.run_id for r in folder.runs("tags.`exatrack.kind` = 'prune'")] == [prune[0].info.run_id]  # reused
    quantized = {r.info.status: r for r in folder.runs(LANE_QUANTIZE)}
    assert sorted(quantized) == ["FINISHED", "KILLED"]  # the unfinished step redone, from the finished prune
    assert quantized["KILLED"].data.tags[tracking.ENDED].startswith(f"stale: process {pipeline.pid} on ")
    assert quantized["FINISHED"].data.params["model"] == f"runs:/{prune[0].info.run_id}/checkpoint"
    pipelines = {r.info.status: r for r in folder.runs("tags.`exatrack.kind` = 'pipeline'")}
    assert sorted(pipelines) == ["FINISHED", "KILLED"]
    ended = pipelines["KILLED"]  # by the resumed pipeline as it started
    assert ended.data.tags[tracking.ENDED] == f"stale: process {pipeline.pid} on {ended.data.tags[tracking.HOST]} is gone"
    assert not folder.runs("attributes.status = 'RUNNING'")
    assert not list(folder.temp.iterdir())  # the killed command's temp folder, and the last one's own


def test_two_pipelines_started_at_once_on_a_fresh_store_both_finish_with_intact_runs(tiny_model, tmp_path):
    folder = Folder(tmp_path)
    both = [folder.start(FAKE_VLLM, "pipeline", *EVALUATION, "--only", lane, "--lanes", "lanes.yaml", "--out", f"{lane}.zip")
            for lane in ("fp8", "w8a8")]
    for proc in both:
        folder.finish(proc)
    assert {r.info.status for r in folder.runs()} == {"FINISHED"}
    for parent in folder.runs("tags.`exatrack.kind` = 'pipeline'"):
        children = folder.runs(f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        kinds = sorted(r.data.tags["exatrack.kind"] for r in children)
        assert {"evaluation", "quantize", "rank"} <= set(kinds), kinds  # the base's evaluation, the lane, the ranking
        (lane,) = [r for r in children if r.data.tags["exatrack.kind"] == "quantize"]
        assert "proxy_kl" in lane.data.metrics and folder.client.list_artifacts(lane.info.run_id, "checkpoint")
    assert not list((tmp_path / "tmp").iterdir())


def test_only_runs_of_gone_processes_of_this_host_are_ended():
    gone = subprocess.Popen(["sleep", "5"])
    started = psutil.Process(gone.pid).create_time()
    gone.kill()
    gone.wait()
    mlflow.set_experiment("stale-runs")
    client = MlflowClient()
    host = processes.me()[0]
    owners = {"gone": (host, gone.pid, started), "live": processes.me(), "elsewhere": ("another-host", gone.pid, started)}
    ids = {}
    for name, (where, pid, since) in owners.items():
        tags = {tracking.HOST: where, tracking.PID: str(pid), tracking.PID_STARTED: f"{since:.2f}"}
        ids[name] = client.create_run(mlflow.get_experiment_by_name("stale-runs").experiment_id, tags=tags).info.run_id
    assert tracking.end_stale_runs() == [ids["gone"]]
    assert {name: client.get_run(i).info.status for name, i in ids.items()} == {
        "gone": "KILLED", "live": "RUNNING", "elsewhere": "RUNNING"}
    for run_id in ids.values():
        client.set_terminated(run_id)


def serving_workers() -> set[int]:
    return {p.pid for p in psutil.process_iter(["cmdline"]) if str(serving.WORKER) in " ".join(p.info["cmdline"] or [])}


@pytest.mark.vllm
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_generation_stops_the_worker_and_its_engines_and_ends_the_run_killed(sig, tiny_model, tmp_path):
    """A scheduler's SIGTERM, or Ctrl-C's SIGINT, to `evaluate` while the real engine generates: the
    serving worker and the engines it started end with it, and the run is KILLED, not left RUNNING."""
    folder, before = Folder(tmp_path), serving_workers()
    evaluate = folder.start(EXATRACK, "evaluate", "--model", "tiny", "--data", "sample", "--benchmarks", "kmmlu_redux",
                            "--eager", "--passes", "500")  # generation outlasts the test's patience many times over
    generating = lambda: any("conversations on" in log.read_text(errors="replace")  # noqa: E731
                             for log in folder.temp.glob("exatrack-*/*/serving.log"))
    folder.kill_when(evaluate, generating, sig=sig)
    assert evaluate.returncode != 0
    deadline = time.monotonic() + 30
    while serving_workers() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not serving_workers() - before
    (run,) = folder.runs("tags.`exatrack.kind` = 'evaluation'")
    assert run.info.status == "KILLED" and run.data.tags[tracking.ENDED] == tracking.INTERRUPTED
    assert not folder.runs("attributes.status = 'RUNNING'")
    assert not list(folder.temp.iterdir())  # the command's temp folder went with it


def test_a_scoring_failure_after_generation_fails_that_benchmark_alone_and_keeps_the_answers(tiny_model, monkeypatch):
    """A benchmark's scorer crashing after the session: that benchmark is left out of Perf with the
    reason, the others are scored, and the run keeps the answers the engine gave (answers.json)."""
    from mlflow import MlflowClient

    from exatrack.evaluate import session as evaluate
    from exatrack.evaluate.benchmarks import REGISTRY
    from exatrack.models import models
    from tests.fakes import RecordedSession

    monkeypatch.setattr(serving, "run_session", RecordedSession())

    def broken(rows, answers):
        raise RuntimeError("scorer broke")

    monkeypatch.setattr(REGISTRY["kmmlu_redux"], "score", broken)
    mlflow.set_experiment("scoring-fails")
    settings = evaluate.Settings(benchmarks="kmmlu_pro,kmmlu_redux", data="sample", pattern="chunks", chunks=2)
    evaluate.evaluate(models.resolve("tiny"), [], settings)
    client = MlflowClient()
    (run,) = client.search_runs([mlflow.get_experiment_by_name("scoring-fails").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["exatrack.perf_benchmarks"] == "kmmlu_pro"
    assert run.data.tags["kmmlu_redux.score_error"] == "RuntimeError: scorer broke"
    assert "kmmlu_redux.accuracy" not in run.data.metrics and "kmmlu_pro.accuracy" in run.data.metrics
    kept = json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/answers.json"))
    assert len(kept["kmmlu_redux"]["answers"]) == len(REGISTRY["kmmlu_redux"].load("sample"))
