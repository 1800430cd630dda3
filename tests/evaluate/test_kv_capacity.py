"""Issue 21's starved sessions: an engine whose KV cache holds less than the grader's engine would run
at once for a benchmark sent whole is said in one line before any generation, and recorded."""

import json

from exatrack.evaluate import serving, worker
from exatrack.models.models import Model


def words(texts):
    """One token per word."""
    return [len(text.split()) for text in texts]


def benchmark(lengths, max_tokens=None):
    conversations = [{"turns": [" ".join(["w"] * n), "a later turn"]} for n in lengths]
    if max_tokens is not None:
        for c in conversations:
            c["sampling"] = {"max_tokens": max_tokens}
    return {"conversations": conversations, "chunk_size": len(conversations)}


def test_the_need_is_the_largest_benchmarks_longest_requests_that_run_at_once():
    benchmarks = {"short": benchmark([5] * 10), "long": benchmark([100, 1, 300, 2], max_tokens=10)}
    # at most 2 at once: the two longest first turns of the longest benchmark, with their budgets
    assert serving.kv_tokens_needed(benchmarks, words, {"max_tokens": 50}, 2) == (300 + 10) + (100 + 10)
    assert serving.kv_tokens_needed(benchmarks, words, {"max_tokens": 50}, 100) == 10 * (5 + 50)


def test_a_starved_engine_is_said_and_flagged_before_generation_and_a_roomy_one_is_not(monkeypatch):
    events = []
    monkeypatch.setattr(worker, "progress", lambda **event: events.append(event))
    request = {"models": [{"name": "roomy", "kv_tokens_needed": 4096}, {"name": "starved", "kv_tokens_needed": 4096},
                          {"name": "uncounted", "kv_tokens_needed": None}, {"name": "failed-to-load"}]}
    info = {"roomy": {"kv_cache_tokens": 4096}, "starved": {"kv_cache_tokens": 4095},
            "uncounted": {"kv_cache_tokens": 10}, "failed-to-load": {"error": "x"}}
    worker.check_kv_capacity(request, {name: object() for name in ("roomy", "starved", "uncounted")}, info)
    assert info["roomy"] == {"kv_cache_tokens": 4096, "kv_tokens_needed": 4096, "starved": False}
    assert info["starved"]["starved"] is True
    assert info["uncounted"] == {"kv_cache_tokens": 10}  # not counted: not checked, the session goes on
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


def test_every_timed_run_starts_from_an_empty_prefix_cache(monkeypatch):
    """A second pass (or repeat) of a benchmark must not find its prompts in the prefix cache: the grader
    sends each prompt once, so its prefill is always paid."""
    events = []

    class Recording:
        def reset_prefix_cache(self):
            events.append("reset")
            return True

    def run_turns(llm, conversations, sampling, chat_kwargs):
        events.append("run")
        return [["a"]] * len(conversations), [[1]] * len(conversations), 1.0, "engine"

    monkeypatch.setattr(worker, "run_turns", run_turns)
    conversations = [{"turns": ["q"]}] * 4
    worker.run_benchmark("b", {"x": Recording(), "y": Recording()}, conversations, 2, passes=2, repeats=2,
                         sampling={}, chat_kwargs={}, offset=0)
    assert events == ["reset", "run"] * (2 * 2 * 2 * 2)  # models x passes x chunks x repeats


def real_shaped(folder, weights: int):
    """A checkpoint folder with EXAONE-4.0-1.2B's attention shape (61,440 bytes of bf16 KV per token),
    `weights` bytes of weights and a one-word-per-token tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "exaone4", "num_hidden_layers": 30, "hidden_size": 2048,
                                                    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64}))
    with open(folder / "model.safetensors", "wb") as f:
        f.truncate(weights)  # sparse: only its size counts
    tokenizer = Tokenizer(models.WordLevel({"w": 0, "[UNK]": 1}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))
    return Model(folder.name, folder)


def sized(monkeypatch, tmp_path, gpu_gib: float | None, lengths: list[int], max_tokens: int, count: int):
    from exatrack.evaluate import session as evaluate

    monkeypatch.setattr(serving, "has_gpu", lambda: gpu_gib is not None)
    monkeypatch.setattr(serving, "gpu_bytes", lambda: None if gpu_gib is None else int(gpu_gib * 2**30))
    rows = {"b": [{"id": str(n)} for n in lengths]}
    conversations = [{"turns": [" ".join(["w"] * n)]} for n in lengths]
    monkeypatch.setattr(evaluate, "REGISTRY", {"b": type("B", (), {"conversations": lambda self, r, greedy: conversations})()})
    models = [real_shaped(tmp_path / f"m{i}", 2**30) for i in range(count)]
    settings = evaluate.Settings(benchmarks="b", max_tokens=max_tokens)
    return evaluate.Sizing.of(models, settings, rows), models


def test_the_need_is_counted_by_the_checkpoints_tokenizer_and_capped_by_what_the_graders_engine_holds(monkeypatch, tmp_path):
    small, models = sized(monkeypatch, tmp_path, None, [100, 300, 2], max_tokens=10, count=1)
    assert small.kv_tokens == {"m0": (300 + 10) + (100 + 10) + (2 + 10)}  # all three run at once
    assert small.needs == {"m0": None} and small.shares(models) == [None]  # no GPU: nothing to size
    large, _ = sized(monkeypatch, tmp_path / "large", None, [1000] * 300, max_tokens=16384, count=1)
    assert large.kv_tokens["m0"] == serving.grader_kv_tokens(tmp_path / "large" / "m0", None)


def test_sessions_on_a_gpu_hold_only_engines_that_each_fit_the_graders_batches(monkeypatch, tmp_path, caplog):
    sizing, models = sized(monkeypatch, tmp_path, 141, [10] * 400, max_tokens=4000, count=7)
    holds = serving.grader_kv_tokens(tmp_path / "m0", None)  # the grader's L4 holds fewer than 256 x 4,010
    assert sizing.kv_tokens["m0"] == holds < 256 * 4010
    per_engine = 2**30 + serving.GRADER_ENGINE["reserve_bytes"] + holds * 61_440  # weights, reserve, KV cache
    assert sizing.needs["m0"] == per_engine
    fit = int(0.85 * 141 * 2**30 // per_engine)  # engines side by side on a 141 GiB GPU
    assert fit == 5
    groups = sizing.sessions(models[0], models[1:], most=6)
    assert [len(g) for g in groups] == [4, 2] and not caplog.records
    shares = sizing.shares([models[0], *groups[0]])
    memory = serving.engine_memory(shares)
    assert abs(sum(m["gpu_memory_utilization"] for m in memory) - 0.85) < 1e-9  # what is left, shared out
    assert all(m["gpu_memory_utilization"] >= share for m, share in zip(memory, shares))
    assert [len(g) for g in sizing.sessions(models[0], models[1:], most=2)] == [1] * 6  # --group still caps


def test_a_gpu_too_small_for_two_faithful_engines_is_said_in_one_line(monkeypatch, tmp_path, caplog):
    sizing, models = sized(monkeypatch, tmp_path, 24, [10] * 400, max_tokens=4000, count=3)
    groups = sizing.sessions(models[0], models[1:], most=6)
    assert groups == [[models[1]], [models[2]]]  # still evaluated, each beside the base
    assert len(caplog.records) == 1 and "cannot hold the base and m1 side by side" in caplog.messages[0]
    memory = serving.engine_memory(sizing.shares([models[0], models[1]]))
    assert memory == [{"gpu_memory_utilization": 0.425}] * 2  # as they can: equal parts
