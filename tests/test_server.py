"""A team's tracking server: quantize, evaluate, rank and promote through a real `mlflow server` on
loopback that serves the artifacts itself (mlflow-artifacts:/), so checkpoints reach evaluate and
promote as downloads; and the cache those go through: one entry per run, reused, bounded.

The recorded session stands in for vLLM: what is under test is the way through the server.
"""

import fcntl
import os
import re
import tempfile
import zipfile

import mlflow
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from exatrack.cli import main
from exatrack.evaluate import serving
from exatrack.models import downloads
from tests.fakes import RecordedSession


@pytest.fixture
def server(mlflow_server, tmp_path, monkeypatch):
    """Commands pointed at the server (in a new experiment, so its artifacts are served), the download
    cache in tmp_path/cache; the session's tracking settings restored after the test."""
    from mlflow.tracking import fluent

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "through-server")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "")  # set_experiment exports it
    monkeypatch.setattr(fluent, "_active_experiment_id", fluent._active_experiment_id)
    monkeypatch.setattr(downloads, "root", lambda: tmp_path / "cache")
    monkeypatch.setattr(serving, "run_session", RecordedSession())
    return mlflow_server


def invoke(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output[-3000:]
    return result.output


def test_quantize_evaluate_rank_and_promote_through_a_tracking_server(tiny_model, server, tmp_path):
    run_id = re.search(r"quantize finished: run (\w+)", invoke("quantize", "--model", "tiny", "--recipe", "fp8_dynamic"))[1]
    assert MlflowClient().get_run(run_id).info.artifact_uri.startswith("mlflow-artifacts:")
    cache = tmp_path / "cache"
    (cache / run_id / ".partial").mkdir(parents=True)  # what a download killed midway leaves
    temp_files = set(os.listdir(tempfile.gettempdir()))

    invoke("evaluate", "--model", f"runs:/{run_id}/checkpoint", "--data", "sample", "--benchmarks", "kmmlu_redux",
           "--pattern", "chunks", "--chunks", "2")
    assert sorted(os.listdir(cache / run_id)) == [downloads.IN_USE, "checkpoint"]  # fetched once, the half one gone
    assert "champion: EXAONE-server-test version 1" in invoke("rank", "--registered_model", "EXAONE-server-test")
    invoke("promote", "--registered_model", "EXAONE-server-test", "--out", str(tmp_path / "submit.zip"),
           "--grader_check", "false")  # the way through the server is under test; the check has its own tests

    assert "model/config.json" in zipfile.ZipFile(tmp_path / "submit.zip").namelist()
    assert MlflowClient().get_model_version_by_alias("EXAONE-server-test", "submission").run_id == run_id
    assert [p.name for p in cache.iterdir() if p.is_dir()] == [run_id]  # promote reused the evaluated download
    assert set(os.listdir(tempfile.gettempdir())) == temp_files  # no copy left in the temp folder
    assert mlflow.get_experiment_by_name("through-server") is not None


def test_the_cache_keeps_within_its_bound_without_removing_an_entry_in_use(tmp_path, monkeypatch):
    monkeypatch.setattr(downloads, "root", lambda: tmp_path)
    for used, name in enumerate(["held", "old", "new"]):  # least recently used first
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"w" * 1000)
        (tmp_path / name / downloads.IN_USE).touch()
        os.utime(tmp_path / name / downloads.IN_USE, (used, used))
    with open(tmp_path / "held" / downloads.IN_USE) as marker:
        fcntl.flock(marker, fcntl.LOCK_SH)  # as another command using it holds it
        assert downloads.evict(limit=2500) == [tmp_path / "old"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["held", "new"]
