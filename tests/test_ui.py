"""What a person sees in the MLflow UI after a pipeline: a real `mlflow server` on loopback over the
test store, its experiment page rendered by headless Chromium (Debian's; .ci/run installs it)."""

import json
import re
import shutil
import subprocess

import mlflow
import pytest

from exatrack.evaluate import serving
from exatrack.evaluate.session import Settings
from exatrack.lanes.pipeline import pipeline as run_pipeline
from tests.fakes import RecordedSession


def pipeline(*args, **kwargs):
    """A pipeline without the grader check: what is under test here is the orchestration (the check
    has its own tests in test_grader and test_package, and `make demo` runs it whole)."""
    return run_pipeline(*args, **{"grader_check": False, **kwargs})


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
LANES = {"w8a8-d0.01": {"recipe": "w8a8", "damp": 0.01, "num_samples": 8, "max_seq_len": 64},
         "w8a8-d0.05": {"recipe": "w8a8", "damp": 0.05, "num_samples": 8, "max_seq_len": 64}}


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory, mlflow_server):
    """A short pipeline on tiny (a recorded session stands in for vLLM), then the session's server over its store."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(serving, "run_session", RecordedSession())
        lanes = tmp_path_factory.mktemp("ui") / "lanes.yaml"
        lanes.write_text(json.dumps({"lanes": LANES}))
        mlflow.set_experiment("ui-test")
        pipeline("tiny", str(lanes), Settings(benchmarks="kmmlu_pro,kmmlu_redux", data="sample", pattern="chunks", chunks=4),
                 out=str(lanes.parent / "submit.zip"), model_name="EXAONE-ui-test")
    return mlflow_server, mlflow.get_experiment_by_name("ui-test").experiment_id


def rendered_text(url: str, height: int = 1000, until: str = "") -> str:
    """The page's text after its scripts ran (Chromium's virtual time lets the app fetch and render);
    tried again, up to three times, while `until` has not appeared (a busy machine renders late)."""
    import tempfile

    for _ in range(3):
        with tempfile.TemporaryDirectory() as profile:
            done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                                   "--virtual-time-budget=40000", f"--window-size=1600,{height}", "--dump-dom", url],
                                  capture_output=True, text=True, timeout=180)
        text = " ".join(re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style).*?</\1>", " ", done.stdout, flags=re.S)).split())
        if until in text:
            break
    return text


# The runs sorted by score, flat: what the README tells people to open.
BY_SCORE = "orderByKey=metrics.%60score%60&orderByAsc=false&searchFilter=metrics.score%20%3E%3D%200"


def test_the_lane_runs_are_listed_by_score_with_the_data_they_saw(server):
    url, experiment = server
    text = rendered_text(f"{url}/#/experiments/{experiment}/runs?{BY_SCORE}", until="corpus (")
    for lane in LANES:
        assert f" {lane} " in text and f"eval {lane}" in text, text[:2000]
    assert "kmmlu_pro (" in text and "corpus (" in text  # the Dataset column: benchmarks and calibration text


def test_the_chart_view_draws_each_lanes_score_and_its_interval(server):
    url, experiment = server
    text = rendered_text(f"{url}/#/experiments/{experiment}/runs?{BY_SCORE}&compareRunsMode=CHART", 9000, " score_high ")
    for metric in ("score", "score_low", "score_high", "perf_norm", "speed_norm"):
        chart = re.search(rf" {metric} ((?:[-\d.]+ )+)", text)
        assert chart, (metric, text[:3000])
    assert all(lane in text for lane in LANES)
