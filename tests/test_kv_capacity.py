"""Issue 21's starved sessions: an engine whose KV cache holds less than the grader's engine would run
at once for a benchmark sent whole is said in one line before any generation, and recorded."""

import json

from exatrack import serving, worker


class WordTokenizer:
    """One token per word, called as a Hugging Face tokenizer is."""

    def __call__(self, texts):
        return {"input_ids": [text.split() for text in texts]}


class Engine:
    def get_tokenizer(self):
        return WordTokenizer()


def benchmark(lengths, max_tokens=None):
    conversations = [{"turns": [" ".join(["w"] * n), "a later turn"]} for n in lengths]
    if max_tokens is not None:
        for c in conversations:
            c["sampling"] = {"max_tokens": max_tokens}
    return {"conversations": conversations, "chunk_size": len(conversations)}


def test_the_need_is_the_largest_benchmarks_longest_requests_that_run_at_once():
    benchmarks = {"short": benchmark([5] * 10), "long": benchmark([100, 1, 300, 2], max_tokens=10)}
    # at most 2 at once: the two longest first turns of the longest benchmark, with their budgets
    assert worker.kv_tokens_needed(benchmarks, WordTokenizer(), {"max_tokens": 50}, 2) == (300 + 10) + (100 + 10)
    assert worker.kv_tokens_needed(benchmarks, WordTokenizer(), {"max_tokens": 50}, 100) == 10 * (5 + 50)


def test_a_starved_engine_is_said_and_flagged_before_generation_and_a_roomy_one_is_not(monkeypatch):
    events = []
    monkeypatch.setattr(worker, "progress", lambda **event: events.append(event))
    request = {"benchmarks": {"long": benchmark([1000] * 4, max_tokens=24)}, "sampling": {"max_tokens": 8},
               "grader_max_num_seqs": 256,
               "models": [{"name": "roomy", "grader_kv_tokens": 10**6}, {"name": "starved", "grader_kv_tokens": 10**6},
                          {"name": "grader-bound", "grader_kv_tokens": 500}, {"name": "failed-to-load"}]}
    info = {"roomy": {"kv_cache_tokens": 4096}, "starved": {"kv_cache_tokens": 4095},
            "grader-bound": {"kv_cache_tokens": 600}, "failed-to-load": {"error": "x"}}
    engines = {name: Engine() for name in ("roomy", "starved", "grader-bound")}
    worker.check_kv_capacity(request, engines, info)
    assert info["roomy"] == {"kv_cache_tokens": 4096, "kv_tokens_needed": 4096, "starved": False}
    assert info["starved"]["starved"] is True
    # the grader's own engine holds only 500: an engine holding more is as faithful as it can be
    assert info["grader-bound"] == {"kv_cache_tokens": 600, "kv_tokens_needed": 500, "starved": False}
    assert info["failed-to-load"] == {"error": "x"}
    assert events == [{"event": "starved", "model": "starved", "holds": 4095, "needed": 4096}]


def test_the_graders_kv_capacity_follows_the_attention_shape_the_weights_and_the_cache_dtype(tmp_path):
    real = tmp_path / "exaone"
    real.mkdir()  # EXAONE-4.0-1.2B's attention shape, as its config.json gives it
    (real / "config.json").write_text(json.dumps({"model_type": "exaone4", "num_hidden_layers": 30, "hidden_size": 2048,
                                                  "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64}))
    empty = serving.grader_kv_tokens(real, None)
    (real / "model.safetensors").write_bytes(b"\0" * 2**20)
    assert serving.grader_kv_tokens(real, None) < empty  # the weights take their share
    assert serving.grader_kv_tokens(real, "fp8") in (2 * serving.grader_kv_tokens(real, None),
                                                     2 * serving.grader_kv_tokens(real, None) + 1)
    config = json.loads((real / "config.json").read_text())
    (real / "config.json").write_text(json.dumps({**config, "num_key_value_heads": config["num_key_value_heads"] * 2}))
    assert serving.grader_kv_tokens(real, None) < empty / 1.9  # twice the KV heads, half the tokens
    (real / "config.json").write_text(json.dumps({"model_type": "exaone4"}))
    assert serving.grader_kv_tokens(real, None) is None


def test_a_tokenizer_the_check_cannot_use_loses_the_check_not_the_session():
    class Odd:
        def get_tokenizer(self):
            return object()  # not callable as a Hugging Face tokenizer

    info = {"m": {"kv_cache_tokens": 10}}
    request = {"benchmarks": {"b": benchmark([5])}, "sampling": {}, "models": [{"name": "m"}]}
    worker.check_kv_capacity(request, {"m": Odd()}, info)
    assert info == {"m": {"kv_cache_tokens": 10}}
