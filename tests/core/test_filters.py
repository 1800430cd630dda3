"""Names reach MLflow's search filters quoted as its grammar reads them back (it has no escapes): a
quote in a model path, a source, a fingerprint or a registered model's name finds its runs."""

import mlflow
import pytest
from mlflow import MlflowClient

from exatrack.core.basics import ExatrackError
from exatrack.core.tracking import quoted
from exatrack.models.models import SOURCE_MODEL
from exatrack.publish.registry import check_name
from exatrack.score.leaderboard import evaluation_runs


@pytest.mark.parametrize("source", ["plain", "EXAONE'x", 'a "quoted" name'])
def test_a_quote_in_a_source_finds_its_runs_and_no_other(source):
    experiment = mlflow.set_experiment(f"filters-{abs(hash(source))}").experiment_id
    for tagged in (source, "other"):
        with mlflow.start_run(tags={"exatrack.kind": "evaluation", "exatrack.fingerprint": "f", SOURCE_MODEL: tagged}):
            pass
    found = evaluation_runs(MlflowClient(), experiment, fingerprint="f", source=source)
    assert [r.data.tags[SOURCE_MODEL] for r in found] == [source]


def test_a_name_holding_both_quotes_is_refused_in_one_line_before_any_work():
    with pytest.raises(ExatrackError, match="holds both quote characters, which MLflow's search cannot match"):
        check_name("""EXAONE'x"y""")
    assert quoted("EXAONE'x") == '"EXAONE\'x"' and quoted("EXAONE") == "'EXAONE'"
