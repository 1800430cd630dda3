"""The bad-input catalogue: every mistake a user can make ends in one line saying what is wrong and how
to fix it, before any model loads; a run opened for it ends FAILED with that line as its error; nothing
is registered and nothing half-written is left behind.

Each case names its arguments ({placeholders} are the broken inputs the `bad` fixture writes), the
fragments its Error line must hold (what is wrong, then how to fix it), and whether the command opens a
run before it refuses.
"""

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from exatrack.cli import main
from exatrack.core import processes
from exatrack.core.basics import redact


def case(args: str, *says: str, run: bool = False, env: dict | None = None, id: str):
    return pytest.param(args.split(), says, run, env or {}, id=id)


JUDGE = "http://127.0.0.1:9/v1"  # refused before any request: nothing answers there
JUDGE_ENV = {"EXATRACK_JUDGE_URL": JUDGE, "EXATRACK_JUDGE_MODEL": "gpt-4o"}


CASES = [
    # quantize: the model
    case("quantize --model /no/such/folder", "no model at '/no/such/folder'", "pass an existing folder",
         run=True, id="model-missing"),
    case("quantize --model {empty}", "has no config.json", "pass a Hugging Face model folder",
         run=True, id="model-empty-folder"),
    case("quantize --model {bad_config}", "config.json does not parse", "re-create the checkpoint",
         run=True, id="model-corrupt-config"),
    case("quantize --model {cut_weights}", "model.safetensors is not readable safetensors",
         "copy or download the checkpoint again", run=True, id="model-truncated-weights"),
    case("quantize --model {no_tokenizer}", "has no tokenizer", "copy the tokenizer files",
         run=True, id="model-without-tokenizer"),
    case("quantize --model {gpt2}", "is a 'gpt2' model", "takes EXAONE-4 and Llama checkpoints",
         run=True, id="model-of-another-family"),
    case("quantize --model runs:/0123456789abcdef0123456789abcdef/checkpoint", "no run 0123456789abcdef",
         "check the run id", run=True, id="model-fake-run-id"),
    case("quantize --model runs:/{no_checkpoint}/checkpoint", "holds no config.json", "runs:/<id>/checkpoint",
         run=True, id="model-run-without-checkpoint"),
    case("quantize --model models:/EXAONE-never-registered@champion", "has no version or alias 'champion'",
         "run `exatrack rank` first", run=True, id="model-unregistered-alias"),
    case("quantize --model nosuch-org/nosuch-model", "cannot download nosuch-org/nosuch-model",
         "check the id, your network and HF_TOKEN", run=True, id="model-unknown-hub-id"),
    # quantize: the recipe and its parameters
    case("quantize --model tiny --recipe w3a3", "unknown recipe 'w3a3'", "choose one of",
         run=True, id="recipe-unknown"),
    case("quantize --model tiny --recipe {broken_yaml}", "is not valid YAML", "fix the file",
         run=True, id="recipe-not-yaml"),
    case("quantize --model tiny --recipe {misspelt_modifier_yaml}", "No modifier of type 'GPTQModifer' found",
         "fix the modifier's name or arguments", run=True, id="recipe-misspelt-modifier"),
    case("quantize --model tiny --recipe {misspelt_argument_yaml}", "dampening_fraq; Extra inputs are not permitted",
         "fix the modifier's name or arguments", run=True, id="recipe-misspelt-argument"),
    case("quantize --model tiny --recipe {no_stage_yaml}", "holds no modifier llmcompressor runs", "<name>_stage:",
         run=True, id="recipe-without-stage"),
    case("quantize --model tiny --recipe sparse24_fp8", "needs compressed-tensors<=0.14.0", "compress it where",
         run=True, id="recipe-needs-other-packages"),
    case("quantize --model tiny --ignore lm_head,re:.*no_such_module", "ignore=re:.*no_such_module matches no module",
         "e.g. lm_head", run=True, id="ignore-names-no-module"),
    case("quantize --model tiny --damp 1.5", "damp=1.5 is out of range", "e.g. 0.01",
         run=True, id="damp-out-of-range"),
    case("quantize --model tiny --damp abc", "damp='abc' is not a number", "pass e.g. damp=0.01",
         run=True, id="damp-not-a-number"),
    case("quantize --model tiny --num_samples 0", "num_samples=0 is out of range", ">= 1",
         run=True, id="num-samples-zero"),
    case("quantize --model tiny --num_samples many", "num_samples='many' is not a whole number", "e.g. num_samples=512",
         run=True, id="num-samples-not-a-number"),
    case("quantize --model tiny --max_seq_len 8", "max_seq_len=8 is out of range", ">= 16",
         run=True, id="max-seq-len-too-short"),
    case("quantize --model tiny --actorder group", "actorder='group' is not one of", "'static', 'weight'",
         run=True, id="actorder-not-a-choice"),
    case("quantize --model tiny --recipe_params smoothingg=0.5", "has no parameter smoothingg", "see `exatrack recipes`",
         run=True, id="recipe-params-unknown-name"),
    case("quantize --model tiny --recipe_params smoothing", "'smoothing' is not name=value", "e.g. smoothing=0.5",
         id="recipe-params-not-pairs"),
    case("quantize --model tiny --dampp 0.1", "No such option '--dampp'", "Did you mean '--damp'?",
         id="unknown-option"),
    # quantize: the calibration data, read before the model loads
    case("quantize --model tiny --calib /no/such/calib.jsonl", "/no/such/calib.jsonl does not exist",
         "pass an existing jsonl", run=True, id="calib-file-missing"),
    case("quantize --model tiny --calib {empty_jsonl}", "holds no records", "at least one row",
         run=True, id="calib-empty"),
    case("quantize --model tiny --calib {no_field_jsonl}", "without a 'text' or 'conversations' field", "add one of them",
         run=True, id="calib-record-without-text"),
    case("quantize --model tiny --calib {bad_json_jsonl}", "line 2 is not valid JSON", "one JSON object per line",
         run=True, id="calib-bad-json-line"),
    case("quantize --model tiny --calib {binary_jsonl}", "is not UTF-8 text", "written as UTF-8",
         run=True, id="calib-binary"),
    case("quantize --model tiny --calib {lists_jsonl}", "holds rows that are not JSON objects", "one object per row",
         run=True, id="calib-rows-not-objects"),
    case("quantize --model tiny --calib {notes_txt}", "is not jsonl, json or parquet", "convert it to jsonl",
         run=True, id="calib-not-a-data-file"),
    case("quantize --model tiny --calib nosuch-org/nosuch-data", "cannot load calibration dataset 'nosuch-org/nosuch-data'",
         "pass calib=sample", run=True, id="calib-unknown-dataset"),
    # prune, distill, sft: checked against the config and the text before the model loads
    case("prune --model tiny --drop 4", "drop=4 keep=0: give one of them", "leaving between 1 and 4",
         run=True, id="prune-every-layer"),
    case("prune --model tiny --ffn 4096", "ffn=4096 must be below the model's intermediate size 512",
         run=True, id="prune-ffn-wider-than-the-model"),
    case("prune --model tiny --drop -1", "drop=-1 is out of range", "must be >= 0", run=True, id="prune-drop-negative"),
    case("distill --model tiny --teacher {tiny_copy} --epochs 0", "epochs=0 is out of range", "must be >= 1",
         run=True, id="distill-no-epoch"),
    case("prune --model tiny --drop 1 --calib {binary_jsonl}", "is not UTF-8 text", "written as UTF-8",
         run=True, id="prune-calib-binary"),
    case("distill --model tiny", "the student tiny would be its own teacher", "pass another --teacher",
         run=True, id="distill-own-teacher"),
    case("distill --model tiny --teacher /no/such/teacher", "no model at '/no/such/teacher'", "pass an existing folder",
         run=True, id="distill-teacher-missing"),
    case("sft --model tiny --lora_dropout 1.5", "lora_dropout=1.5 is out of range", "< 1",
         run=True, id="sft-dropout-out-of-range"),
    # evaluate: refused before any engine starts
    case("evaluate --benchmarks kmmlu_pro,unknownbench", "unknown benchmark 'unknownbench'", "choose from",
         id="benchmark-unknown"),
    case("evaluate --limit -1", "limit=-1 is out of range", "at least 0", id="limit-negative"),
    case("evaluate --max_tokens -1", "max_tokens=-1 is out of range", "at least 1", id="max-tokens-negative"),
    case("evaluate --max_tokens lots", "'lots' is not a valid integer", id="max-tokens-not-a-number"),
    case("evaluate --kv_cache_dtype fp4", "kv_cache_dtype=fp4 is not one the grader's vLLM 0.14.1 takes",
         "use one of auto, bfloat16, fp8", id="kv-cache-dtype-unknown"),
    case("evaluate --base tiny --max_model_len 100000", "max_model_len=100000 is past tiny's 8192 tokens",
         "use at most 8192, or 0 for the model's own", id="max-model-len-past-the-model"),
    case("evaluate --base tiny --benchmarks ko_longrag --data sample --max_model_len 64", "a Ko-LongRAG question",
         "tokens in tiny's chat template, past the 64 its engine holds (max_model_len)", "raise --max_model_len",
         id="prompt-past-the-context"),
    case("pipeline --model tiny --lanes {lanes_ok_yaml} --benchmarks kmmlu_pro --data sample,kmmlu_pro={solution_letter_jsonl}",
         "KMMLU-Pro row 0 from", "'solution' is 'B'", run=True, id="pipeline-bad-row-before-any-lane"),
    case("pipeline --model tiny --lanes {lanes_ok_yaml} --max_model_len 100000", "max_model_len=100000 is past tiny's",
         run=True, id="pipeline-max-model-len-past-the-model"),
    case("evaluate --group 1", "group=1 is out of range", "at least 2", id="group-without-room-for-a-candidate"),
    case("evaluate --data bogus", "data='bogus' is neither hub, sample nor name=path", id="data-unknown-source"),
    case("evaluate --data sample,nosuch=x.jsonl", "data override 'nosuch=x.jsonl' names no benchmark", "use one of",
         id="data-override-unknown-benchmark"),
    case("evaluate --base tiny --benchmarks kmmlu_redux --data sample,kmmlu_redux=/no/such/redux.jsonl",
         "/no/such/redux.jsonl does not exist", "pass an existing jsonl", id="data-file-missing"),
    case("evaluate --base tiny --benchmarks kmmlu_redux --data sample,kmmlu_redux={no_field_jsonl}",
         "has no 'question' field", "each row needs question", id="data-file-wrong-schema"),
    # evaluate: a row's values, checked as the rows load (before any engine), not when scoring them
    case("evaluate --base tiny --benchmarks kmmlu_redux --data sample,kmmlu_redux={solution_past_options_jsonl}",
         "KMMLU-Redux row 0 from", "'solution' is '5'", "1 to 4", id="data-solution-past-the-options"),
    case("evaluate --base tiny --benchmarks kmmlu_pro --data sample,kmmlu_pro={solution_letter_jsonl}",
         "KMMLU-Pro row 0 from", "'solution' is 'B'", "1-based number of the right option", id="data-solution-a-letter"),
    case("evaluate --base tiny --benchmarks kmmlu_redux --data sample,kmmlu_redux={options_string_jsonl}",
         "'options' must be a list of 2 to 10", id="data-options-a-string"),
    case("evaluate --base tiny --benchmarks ko_longrag --data sample,ko_longrag={template_without_context_jsonl}",
         "Ko-LongRAG row 0 from", "template has no {context}", "would never reach the model",
         id="data-template-without-context"),
    case("evaluate --base tiny --benchmarks komt_bench --data sample,komt_bench={turns_string_jsonl}",
         "KoMT-Bench row 0 from", "'turns' must be a list of 1 or 2 non-empty questions", id="data-turns-a-string"),
    case("evaluate --base tiny --benchmarks komt_bench --data sample,komt_bench={shared_question_id_jsonl}",
         "rows 0 and 1 share question_id 7", "each question needs its own", id="data-question-id-twice"),
    case("evaluate --base tiny --benchmarks kmmlu_redux --data sample,kmmlu_redux={question_empty_jsonl}",
         "'question' is ''", "the model would be asked nothing", id="data-question-empty"),
    case("evaluate --base tiny --benchmarks kmmlu_redux --data sample,kmmlu_redux={one_option_jsonl}",
         "'options' must be a list of 2 to 10", id="data-one-option"),
    case("evaluate --base tiny --benchmarks kmmlu_pro --data sample,kmmlu_pro={solution_zero_jsonl}",
         "'solution' is '0'", "1-based number of the right option, 1 to 4", id="data-solution-zero"),
    case("evaluate --base tiny --benchmarks komt_bench --data sample,komt_bench={three_turns_jsonl}",
         "'turns' must be a list of 1 or 2 non-empty questions", id="data-three-turns"),
    case("evaluate --base tiny --benchmarks komt_bench --data sample,komt_bench={reference_string_jsonl}",
         "'reference' must be a list of reference answers", id="data-reference-not-a-list"),
    # evaluate: the judge's configuration and prompts, checked before any engine (not when KoMT is scored)
    case("evaluate --base tiny --benchmarks komt_bench --data sample", "EXATRACK_JUDGE_URL is set but "
         "EXATRACK_JUDGE_MODEL is not", "set both to judge KoMT-Bench, or neither", env={"EXATRACK_JUDGE_URL": JUDGE},
         id="judge-url-without-model"),
    case("evaluate --base tiny --benchmarks komt_bench --data sample", "EXATRACK_JUDGE_MODEL is set but "
         "EXATRACK_JUDGE_URL is not", env={"EXATRACK_JUDGE_MODEL": "gpt-4o"}, id="judge-model-without-url"),
    case("evaluate --base tiny --benchmarks komt_bench --data sample", "EXATRACK_JUDGE_URL is not an http(s) URL",
         "e.g. https://api.openai.com/v1", env={"EXATRACK_JUDGE_URL": "api.openai.com/v1", "EXATRACK_JUDGE_MODEL": "m"},
         id="judge-url-without-scheme"),
    case("evaluate --base tiny --benchmarks komt_bench --data sample", "EXATRACK_JUDGE_BUDGET_S='soon' is not a number",
         "e.g. 3600", env={**JUDGE_ENV, "EXATRACK_JUDGE_BUDGET_S": "soon"}, id="judge-budget-not-a-number"),
    case("evaluate --base tiny --benchmarks komt_bench --data sample", "EXATRACK_JUDGE_BUDGET_S='0' is not a number "
         "of seconds above 0", env={**JUDGE_ENV, "EXATRACK_JUDGE_BUDGET_S": "0"}, id="judge-budget-zero"),
    case("evaluate --base tiny --benchmarks komt_bench --data sample", "judge prompts /no/such/prompts.jsonl do not exist",
         "point EXATRACK_JUDGE_PROMPTS at a jsonl", env={**JUDGE_ENV, "EXATRACK_JUDGE_PROMPTS": "/no/such/prompts.jsonl"},
         id="judge-prompts-missing"),
    case("evaluate --base tiny --benchmarks komt_bench --data sample", "line 2 is not valid JSON",
         env={**JUDGE_ENV, "EXATRACK_JUDGE_PROMPTS": "{bad_json_jsonl}"}, id="judge-prompts-not-jsonl"),
    case("evaluate --base tiny --benchmarks komt_bench --data sample", "have no 'single-v1-multi-turn'",
         "KoMT-Bench needs single-v1, single-v1-multi-turn", env={**JUDGE_ENV, "EXATRACK_JUDGE_PROMPTS": "{one_prompt_jsonl}"},
         id="judge-prompts-template-missing"),
    case("evaluate --base tiny --benchmarks komt_bench --data sample", "'single-v1' has no {answer}",
         "the judge would never see it", env={**JUDGE_ENV, "EXATRACK_JUDGE_PROMPTS": "{blind_prompts_jsonl}"},
         id="judge-prompts-without-the-answer"),
    # evaluate: the timing design
    case("evaluate --passes 0", "passes=0 is out of range", "at least 1", id="passes-zero"),
    case("evaluate --chunks 0", "chunks=0 is out of range", "at least 1", id="chunks-zero"),
    case("evaluate --repeats 0", "repeats=0 is out of range", "at least 1", id="repeats-zero"),
    case("evaluate --pattern zigzag", "'zigzag' is not one of 'whole', 'chunks'", id="pattern-unknown"),
    case("evaluate --max_model_len -5", "max_model_len=-5 is out of range", "at least 0", id="max-model-len-negative"),
    case("evaluate --model runs:/0123456789abcdef0123456789abcdef/checkpoint", "no run 0123456789abcdef",
         "check the run id", id="evaluate-fake-run-id"),
    case("evaluate --model runs:/{no_checkpoint}/checkpoint", "holds no config.json", "runs:/<id>/checkpoint",
         id="evaluate-run-without-checkpoint"),
    case("evaluate --model tiny,{tiny_copy}", "the candidates derive from different models", "pass --base",
         id="evaluate-candidates-of-two-families"),
    # rescore
    case("rescore 0123456789abcdef0123456789abcdef", "no run 0123456789abcdef0123456789abcdef in this tracking store",
         "pass an evaluation run's id", id="rescore-unknown-run"),
    case("rescore {no_checkpoint}", "is a non-exatrack run, not an evaluation", "pass the id of an evaluation run",
         id="rescore-not-an-evaluation"),
    # record-official
    case("record-official 0123abc --score nan", "--score nan is not an official challenge score", "between 0 and 1",
         id="official-score-nan"),
    case("record-official 0123abc --score -7", "--score -7.0 is not an official challenge score", "between 0 and 1",
         id="official-score-negative"),
    case("record-official 0123abc --score 1.5", "--score 1.5 is not an official challenge score", "between 0 and 1",
         id="official-score-above-one"),
    case("record-official 0123abc --score high", "'high' is not a valid float", id="official-score-not-a-number"),
    case("record-official 0123abc --score 0.5", "cannot record an official score on run 0123abc", "check the run id",
         id="official-score-unknown-run"),
    # rank, leaderboard, promote
    case("rank", "no evaluated base in this experiment", "run `exatrack evaluate`", run=True, id="rank-with-no-runs"),
    case("rank --registered_model MyModel", "must begin with 'EXAONE'", id="rank-registry-name-without-exaone"),
    case("leaderboard", "no evaluated base in this experiment", "run `exatrack evaluate`", id="leaderboard-with-no-runs"),
    case("rank --registered_model EXAONE'x\"", "holds both quote characters, which MLflow's search cannot match",
         "rename it without one of them", id="rank-name-with-both-quotes"),
    case("leaderboard --fingerprint a'b\"", "holds both quote characters", id="leaderboard-fingerprint-with-both-quotes"),
    case("promote --registered_model EXAONE-never-registered", "no registered model is named EXAONE-never-registered",
         "run `exatrack rank` first", run=True, id="promote-nothing-registered"),
    case("promote --registered_model EXAONE-bad-input --version 99", "has no version or alias '99'",
         "name a version number", run=True, id="promote-unknown-version"),
    case("promote --out {folder}", "is a folder", "name the zip file", id="promote-out-is-a-folder"),
    case("promote --out /proc/exatrack-test/submit.zip", "cannot be written", "choose a folder you can write to",
         id="promote-out-unwritable"),
    case("promote --out {empty_jsonl}/submit.zip", "cannot be written", "choose a folder you can write to",
         id="promote-out-under-a-file"),
    case("promote --out {link_zip}", "is a link to", "name a plain file", id="promote-out-is-a-link"),
    case("promote --out {readonly_zip}", "is read-only", "chmod u+w", id="promote-out-read-only"),
    case("promote --registered_model EXAONE-linked --version 1 --grader_check false", "tokenizer.json is a link to",
         "outside the checkpoint", "put the file itself there", run=True, id="promote-checkpoint-links-outside"),
    case("promote --registered_model EXAONE-deleted-run --version 1", "which was deleted", "restore the run",
         run=True, id="promote-version-of-a-deleted-run"),
    case("promote --verify maybe", "'maybe' is not one of 'files', 'vllm'", id="promote-verify-not-a-choice"),
    # pipeline: the whole lanes file is checked before any run
    case("pipeline --lanes /no/such/lanes.yaml", "lanes file /no/such/lanes.yaml does not exist", "pass e.g. --lanes",
         id="lanes-file-missing"),
    case("pipeline --lanes {broken_yaml}", "is not valid YAML", "fix the file", id="lanes-not-yaml"),
    case("pipeline --lanes {lanes_misspelt_key_yaml}", "needs 'lanes:'", "mapping each lane name",
         id="lanes-misspelt-top-key"),
    case("pipeline --lanes {lanes_extra_key_yaml}", "has defaults beside 'lanes:'", "put every lane under 'lanes:'",
         id="lanes-unknown-top-key"),
    case("pipeline --lanes {lanes_params_beside_steps_yaml}", "lane chain", "has damp beside 'steps:'",
         "put every parameter inside its step", id="lanes-parameter-beside-steps"),
    case("pipeline --lanes {lanes_unknown_step_yaml}", "lane chain", "unknown step 'prnue'", "steps are quantize",
         id="lanes-unknown-step"),
    case("pipeline --lanes {lanes_unknown_param_yaml}", "lane fast in", "recipe 'w8a8' has no parameter dampp",
         "see `exatrack recipes`", id="lanes-unknown-parameter"),
    case("pipeline --lanes {lanes_misspelt_modifier_yaml}", "lane typo", "No modifier of type 'GPTQModifer'",
         "fix the modifier's name", id="lanes-recipe-misspelt-modifier"),
    case("pipeline --lanes {lanes_empty_yaml}", "has no lane under 'lanes:'", "add one, e.g. w8a8: {recipe: w8a8}",
         id="lanes-none"),
    case("pipeline --lanes {lanes_both_quotes_yaml}", "lane name", "cannot name runs", "rename it",
         id="lanes-name-with-both-quotes"),
    case("pipeline --lanes {lanes_steps_mapping_yaml}", "lane chain", "needs 'recipe:' or 'steps:', a list of",
         id="lanes-steps-not-a-list"),
    case("pipeline --lanes {lanes_step_two_keys_yaml}", "lane chain", "needs 'recipe:' or 'steps:', a list of",
         id="lanes-step-with-two-keys"),
    case("pipeline --lanes {lanes_ok_yaml} --only nosuch", "lane 'nosuch' is not in", "its lanes are fast",
         id="lanes-only-unknown"),
    # the store, the experiment, the command
    case("--experiment bad-input-deleted leaderboard", "experiment 'bad-input-deleted' is deleted",
         "mlflow experiments restore --experiment-id", "or pick another name with --experiment", id="experiment-deleted"),
    case("leaderboard", "the tracking store foo://bar does not work", "fix or unset MLFLOW_TRACKING_URI",
         env={"MLFLOW_TRACKING_URI": "foo://bar"}, id="tracking-uri-unsupported"),
    case("leaderboard", "The filesystem tracking backend", "fix or unset MLFLOW_TRACKING_URI",
         env={"MLFLOW_TRACKING_URI": "{folder}/file-store"}, id="tracking-uri-file-store"),
    case("leaderboard", "the tracking store", "mlflow.db is damaged (", "move it aside (mv mlflow.db mlflow.db.damaged)", env={"MLFLOW_TRACKING_URI": "sqlite:///{truncated_db}"},
         id="store-truncated"),
    case("leaderboard", "not_a.db is damaged (file is not a database)", "restore a copy, or start a new store",
         env={"MLFLOW_TRACKING_URI": "sqlite:///{not_a_db}"}, id="store-not-a-database"),
    case("quantise --model tiny", "No such command 'quantise'", "Did you mean 'quantize'?", id="unknown-command"),
]


def recipe(modifier: str, argument: str) -> str:
    return (f"params: {{}}\nrecipe:\n  quant_stage:\n    quant_modifiers:\n      {modifier}:\n"
            f"        targets: [Linear]\n        scheme: W8A8\n        ignore: [lm_head]\n        {argument}\n")


def mcqa_row(**values) -> str:
    return json.dumps({"question": "1 더하기 1은?", "options": ["1", "2", "3", "4"], "solution": "2", **values})


@pytest.fixture(scope="module")
def bad(tiny_model, tmp_path_factory) -> dict:
    """Broken inputs of every kind, and a store holding a run without a checkpoint and one registered version."""
    root = tmp_path_factory.mktemp("bad")
    paths = {"folder": root / "folder", "empty": root / "empty"}
    paths["folder"].mkdir()
    paths["empty"].mkdir()
    for name in ("tiny_copy", "bad_config", "cut_weights", "no_tokenizer", "gpt2"):
        paths[name] = root / name
        shutil.copytree(tiny_model, paths[name])
    (paths["bad_config"] / "config.json").write_text("{not json")
    weights = (paths["cut_weights"] / "model.safetensors").read_bytes()
    (paths["cut_weights"] / "model.safetensors").write_bytes(weights[:len(weights) // 2])
    (paths["no_tokenizer"] / "tokenizer.json").unlink()
    config = json.loads((tiny_model / "config.json").read_text())
    (paths["gpt2"] / "config.json").write_text(json.dumps({**config, "model_type": "gpt2",
                                                           "architectures": ["GPT2LMHeadModel"]}))
    files = {
        "binary.jsonl": bytes(range(256)),
        "empty.jsonl": "",
        "no_field.jsonl": json.dumps({"prompt": "hi"}) + "\n",
        "bad_json.jsonl": json.dumps({"text": "fine"}) + "\n{not json\n",
        "lists.jsonl": "[1, 2]\n",
        "notes.txt": "plain text\n",
        "broken.yaml": "recipe: [unclosed\n",
        "misspelt_modifier.yaml": recipe("GPTQModifer", "dampening_frac: 0.01"),
        "misspelt_argument.yaml": recipe("GPTQModifier", "dampening_fraq: 0.01"),
        "no_stage.yaml": recipe("GPTQModifier", "dampening_frac: 0.01").replace("quant_stage", "quant"),
        # benchmark rows whose fields are there but whose values would be scored wrong, or crash scoring
        "solution_past_options.jsonl": mcqa_row(solution="5") + "\n",
        "solution_letter.jsonl": mcqa_row(solution="B") + "\n",
        "options_string.jsonl": mcqa_row(options="1, 2, 3, 4") + "\n",
        "template_without_context.jsonl": json.dumps({"prompt": "질문: {question}", "context": ["문서"], "question": "?",
                                                      "answer": "답", "titles": ["t"], "task": "singledocQA"}) + "\n",
        "turns_string.jsonl": json.dumps({"question_id": 1, "category": "writing", "turns": "한 문장"}) + "\n",
        "shared_question_id.jsonl": "".join(json.dumps({"question_id": 7, "category": "writing", "turns": [q]}) + "\n"
                                            for q in ("첫 질문", "둘째 질문")),
        "question_empty.jsonl": mcqa_row(question="") + "\n",
        "one_option.jsonl": mcqa_row(options=["1"], solution="1") + "\n",
        "solution_zero.jsonl": mcqa_row(solution="0") + "\n",
        "three_turns.jsonl": json.dumps({"question_id": 1, "category": "writing", "turns": ["가", "나", "다"]}) + "\n",
        "reference_string.jsonl": json.dumps({"question_id": 1, "category": "math", "turns": ["1+1?"],
                                              "reference": "2"}) + "\n",
        "one_prompt.jsonl": json.dumps({"name": "single-v1", "system_prompt": "s",
                                        "prompt_template": "{question} {answer}"}) + "\n",
        "blind_prompts.jsonl": "".join(json.dumps({"name": name, "system_prompt": "s", "prompt_template": template}) + "\n"
                                       for name, template in (("single-v1", "{question}"),
                                                              ("single-v1-multi-turn", "{question_1}{answer_1}{question_2}{answer_2}"),
                                                              ("single-math-v1", "{question}{answer}{ref_answer_1}"),
                                                              ("single-math-v1-multi-turn", "{question_1}{answer_1}{question_2}"
                                                               "{answer_2}{ref_answer_1}{ref_answer_2}"))),
        "not_a.db": "these bytes are no sqlite database\n",
        "lanes_empty.yaml": {"lanes": {}},
        "lanes_both_quotes.yaml": {"lanes": {"it's \"fast\"": {"recipe": "w8a8"}}},
        "lanes_steps_mapping.yaml": {"lanes": {"chain": {"steps": {"prune": {"drop": 1}}}}},
        "lanes_step_two_keys.yaml": {"lanes": {"chain": {"steps": [{"prune": {"drop": 1}, "quantize": {"recipe": "w8a8"}}]}}},
        "lanes_ok.yaml": {"lanes": {"fast": {"recipe": "w8a8"}}},
        "lanes_unknown_param.yaml": {"lanes": {"fast": {"recipe": "w8a8", "dampp": 0.1}}},
        "lanes_unknown_step.yaml": {"lanes": {"chain": {"steps": [{"prnue": {"drop": 1}}]}}},
        "lanes_misspelt_key.yaml": {"lane": {"fast": {"recipe": "w8a8"}}},
        "lanes_extra_key.yaml": {"lanes": {"fast": {"recipe": "w8a8"}}, "defaults": {"damp": 0.02}},
        "lanes_params_beside_steps.yaml": {"lanes": {"chain": {"steps": [{"quantize": {"recipe": "w8a8"}}],
                                                               "damp": 0.02}}},
        "lanes_misspelt_modifier.yaml": {"lanes": {"typo": {"recipe": str(root / "misspelt_modifier.yaml")}}},
    }
    for name, content in files.items():  # {binary_jsonl} names binary.jsonl
        path = paths[name.replace(".", "_")] = root / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    client = MlflowClient()
    experiment = client.create_experiment("bad-input-fixtures")
    # a copy of this session's store cut in half: what a full disk or a killed copy leaves
    store = Path.cwd() / "mlflow.db"
    paths["truncated_db"] = root / "truncated" / "mlflow.db"
    paths["truncated_db"].parent.mkdir()
    paths["truncated_db"].write_bytes(store.read_bytes()[:store.stat().st_size // 2])
    paths["no_checkpoint"] = client.create_run(experiment).info.run_id
    client.set_terminated(paths["no_checkpoint"])
    registered = client.create_run(experiment).info.run_id
    client.log_artifacts(registered, str(tiny_model), "checkpoint")
    client.set_terminated(registered)
    client.delete_experiment(client.create_experiment("bad-input-deleted"))
    client.create_registered_model("EXAONE-bad-input")
    source = f"{client.get_run(registered).info.artifact_uri}/checkpoint"
    client.create_model_version("EXAONE-bad-input", source, registered)
    # a version whose checkpoint links out of itself, one whose run was deleted
    (root / "secret.txt").write_text("not the model's\n")
    linked = client.create_run(experiment).info.run_id
    client.log_artifacts(linked, str(tiny_model), "checkpoint")
    client.set_terminated(linked)
    in_store = Path(urlparse(client.get_run(linked).info.artifact_uri).path) / "checkpoint" / "tokenizer.json"
    in_store.unlink()
    in_store.symlink_to(root / "secret.txt")
    client.create_registered_model("EXAONE-linked")
    client.create_model_version("EXAONE-linked", f"{client.get_run(linked).info.artifact_uri}/checkpoint", linked)
    deleted = client.create_run(experiment).info.run_id
    client.log_artifacts(deleted, str(tiny_model), "checkpoint")
    client.set_terminated(deleted)
    client.create_registered_model("EXAONE-deleted-run")
    client.create_model_version("EXAONE-deleted-run", f"{client.get_run(deleted).info.artifact_uri}/checkpoint", deleted)
    client.delete_run(deleted)
    # an --out that is a link to a file elsewhere, and one made read-only
    (root / "elsewhere.zip").write_bytes(b"someone else's file")
    paths["link_zip"] = root / "link.zip"
    paths["link_zip"].symlink_to(root / "elsewhere.zip")
    paths["readonly_zip"] = root / "readonly.zip"
    paths["readonly_zip"].write_bytes(b"last week's submission")
    paths["readonly_zip"].chmod(0o444)
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """Each case in the experiment 'bad-input' (empty: rank finds nothing), with a temporary folder of its
    own that must be empty again afterwards, and with no model allowed to load: refusals come first."""
    import transformers

    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "bad-input")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setenv("TMPDIR", str(scratch))

    def no_model_load(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was refused")

    # a classmethod, as the real one: llmcompressor's modifier modules read `from_pretrained.__func__` on import
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(no_model_load))
    yield scratch
    # torch's own cache may stay; the command's own temp folder (removed when its process exits, which
    # an in-process invocation does not) must be empty
    left = [p.name for p in scratch.iterdir() if not p.name.startswith("torchinductor_")
            and not (processes.TEMP_FOLDER.match(p.name) and not any(p.iterdir()))]
    assert not left, "temporary files were left behind"


def runs() -> dict:
    return {r.info.run_id: r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")}


def registry() -> set:
    client = MlflowClient()
    return {(m.name, v.version, tuple(v.aliases)) for m in client.search_registered_models()
            for v in client.search_model_versions(f"name = '{m.name}'")}


def partial_files(*folders) -> list:
    return [p for folder in folders for p in Path(folder).rglob("*.partial")]


def assert_one_error_line(output: str, says: tuple) -> str:
    lines = output.strip().splitlines()
    assert lines and [line for line in lines if line.startswith("Error")] == [lines[-1]], output[-3000:]
    assert "Traceback" not in output
    for fragment in says:
        assert fragment in lines[-1], (fragment, lines[-1])
    return lines[-1]


@pytest.mark.parametrize("args, says, opens_run, env", CASES)
def test_bad_input_is_one_clear_line_and_leaves_nothing_behind(args, says, opens_run, env, bad, tmp_path):
    before_runs, before_registry = runs(), registry()
    result = CliRunner().invoke(main, [arg.format(**bad) for arg in args],
                                env={k: v.format(**bad) for k, v in env.items()})
    assert result.exit_code not in (0, None) and isinstance(result.exception, SystemExit), result.output[-3000:]
    line = assert_one_error_line(result.output, says)
    opened = [run for run_id, run in runs().items() if run_id not in before_runs]
    assert len(opened) == (1 if opens_run else 0), [r.info.run_name for r in opened]
    for run in opened:
        assert run.info.status == "FAILED" and run.data.tags["exatrack.error"] in line
        assert not MlflowClient().list_artifacts(run.info.run_id, "checkpoint")
    assert registry() == before_registry
    assert not partial_files(Path.cwd(), tmp_path, Path(bad["folder"]).parent)


def test_an_empty_database_beside_a_full_artifact_folder_is_named(tmp_path):
    """mlflow.db deleted (or replaced by a new one) while mlruns/ still holds runs: every board came out
    empty without a word why."""
    (tmp_path / "mlruns" / "1" / ("0" * 32) / "artifacts").mkdir(parents=True)
    result = CliRunner().invoke(main, ["leaderboard"], env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    assert_one_error_line(result.output, ("no evaluated base in this experiment",))
    assert (f"the tracking store knows no run, but {tmp_path / 'mlruns'} holds the artifacts of 1 run: was mlflow.db "
            "deleted or replaced?") in result.output


def test_the_catalogue_holds_at_least_forty_distinct_cases():
    assert len({c.id for c in CASES}) == len(CASES) >= 40


def exatrack_process(args: list, cwd: Path, env: dict, prefix: tuple = ()):
    """`exatrack` in a process of its own, for what one in this process cannot show: how long it takes
    to refuse, and a working folder of its own. Returns the finished process and its wall time."""
    command = [*prefix, str(Path(sys.executable).with_name("exatrack")), *args]
    started = time.monotonic()
    done = subprocess.run(command, cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    return done, time.monotonic() - started


def test_a_tracking_server_that_does_not_answer_is_refused_in_seconds(tmp_path):
    """It used to hang four minutes in MLflow's retries, then print a traceback."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again once the probe is
    uri = f"http://127.0.0.1:{port}"
    done, took = exatrack_process(["quantize", "--model", "tiny"], tmp_path, {"MLFLOW_TRACKING_URI": uri})
    assert done.returncode == 1 and took < 60, (took, done.stderr[-2000:])
    assert_one_error_line(done.stderr, (f"no tracking server answers at MLFLOW_TRACKING_URI={uri}", "start the server"))
    assert [p.name for p in tmp_path.iterdir()] == ["tmp"]  # nothing written where it ran


def test_a_read_only_working_folder_is_refused_at_once(tmp_path):
    """It used to fail after 106 s with an sqlite message, once the work was done."""
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o555)
    prefix = ()
    if os.geteuid() == 0:  # root writes anywhere unless it gives up that capability
        setpriv = shutil.which("setpriv") or pytest.skip("as root, a folder is read-only only under setpriv")
        prefix = (setpriv, "--bounding-set=-dac_override,-dac_read_search", "--")
    try:
        done, took = exatrack_process(["quantize", "--model", "tiny"], folder, {}, prefix)
    finally:
        folder.chmod(0o755)
    assert done.returncode == 1 and took < 60, (took, done.stderr[-2000:])
    assert_one_error_line(done.stderr, (f"the folder {folder} is read-only", "from a folder you can write to"))
    assert not list(folder.iterdir())


def test_secrets_reach_no_param_tag_artifact_or_log_line(tiny_model, monkeypatch, caplog):
    """The HF token, the judge's key, and credentials inside the judge's URL, a calibration URL and
    MLFLOW_TRACKING_URI: none is kept in the store, printed, or logged, at any level."""
    from exatrack.evaluate import serving
    from tests.fakes import RecordedSession
    from tests.judge_server import FakeJudge

    secrets = {"HF_TOKEN": "hf_badinput_secret_1", "EXATRACK_JUDGE_API_KEY": "sk-badinput-secret-2"}
    password = "badinput-secret-3"
    words = [*secrets.values(), password]
    judge = FakeJudge()
    monkeypatch.setattr(serving, "run_session", RecordedSession())
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "bad-input-secrets")
    env = {**secrets, "EXATRACK_JUDGE_URL": judge.url.replace("//", f"//judge:{password}@"),
           "EXATRACK_JUDGE_MODEL": "fake"}
    calib = f"https://user:{password}@data.example/calib.jsonl"
    runner = CliRunner()
    with caplog.at_level(logging.DEBUG):
        judged = runner.invoke(main, "evaluate --base tiny --benchmarks komt_bench --data sample --limit 1".split(),
                               env=env)
        refused = runner.invoke(main, ["quantize", "--model", "tiny", "--calib", calib], env=env)
        server = runner.invoke(main, ["leaderboard"], env={"MLFLOW_TRACKING_URI": f"http://user:{password}@127.0.0.1:9"})
    judge.close()
    assert judged.exit_code == 0 and judge.requests, judged.output[-2000:]
    assert_one_error_line(refused.output, ("calib.jsonl does not exist",))
    assert_one_error_line(server.output, ("MLFLOW_TRACKING_URI carries credentials", "MLFLOW_TRACKING_PASSWORD"))
    quantize_run = MlflowClient().get_run(runs_in("bad-input-secrets")[-1])
    assert quantize_run.data.params["calib"] == "https://***@data.example/calib.jsonl"
    kept = [Path.cwd() / "mlflow.db"]  # every param and tag
    for run_id in runs_in("bad-input-secrets"):
        artifacts = Path(MlflowClient().get_run(run_id).info.artifact_uri.removeprefix("file://"))
        kept += [p for p in artifacts.rglob("*") if p.is_file()]
    assert {"fingerprint.json", "paired.json"} <= {p.name for p in kept}
    assert not [p for p in kept if any(word.encode() in p.read_bytes() for word in words)]
    printed = judged.output + refused.output + server.output + caplog.text
    assert "HTTP Request: POST" in caplog.text and not [word for word in words if word in printed]
    assert redact("models:/EXAONE-x@champion, https://u:p@h/v1") == "models:/EXAONE-x@champion, https://***@h/v1"


def runs_in(experiment: str) -> list[str]:
    """The experiment's run ids, oldest first."""
    found = mlflow.search_runs(experiment_names=[experiment], output_format="list", order_by=["attributes.start_time"])
    return [run.info.run_id for run in found]


def test_a_calibration_source_shorter_than_num_samples_is_used_whole_and_says_so(caplog):
    """The bundled sample holds 59 records and tiny's quantize asks for 512 by default: all 59 are used,
    and the warning names both numbers."""
    from exatrack.compress import calibration

    with caplog.at_level(logging.WARNING):
        records = calibration.load_records("sample", 512)
    assert len(records) == 59
    assert "calibration source 'sample' holds 59 records, fewer than the 512 asked for: all 59 are used" in caplog.text


@pytest.mark.parametrize("name", ["fp8_dynamic", "fp8_static", "rtn_w8a8", "rtn_w8a16", "rtn_w4a16", "smoothquant_w8a8",
                                  "sparse24_fp8", "w4a16", "w8a16", "w8a8", "w8a8_kv_fp8"])
def test_every_shipped_recipe_passes_the_modifier_check_that_refuses_misspelt_ones(name):
    from exatrack.compress import recipes

    recipe = recipes.load(name)
    recipe.check_modifiers(recipe.resolve_params({}))
