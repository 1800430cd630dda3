"""A recorded serving session: stands in for vLLM where a test checks orchestration, not generation.

Every answer is "정답: B" in 3 tokens; a chunk's time is the model's time per token (a quantized
checkpoint's can be set apart from a plain one's) times a jitter shared by every model of the chunk,
as a slow moment of a real machine is.
"""

import json
import random
from pathlib import Path


class RecordedSession:
    def __init__(self, quantized_per_token: float = 0.02, plain_per_token: float = 0.03, kv_cache_used: str | None = None):
        self.per_token = {True: quantized_per_token, False: plain_per_token}
        self.kv_cache_used = kv_cache_used  # None: what was asked
        self.requests, self.models = [], []

    def __call__(self, request: dict, what: str, **_) -> dict:
        self.requests.append(request)
        self.models += [m["path"] for m in request["models"]]
        info, speed = {}, {}
        for m in request["models"]:
            config = json.loads((Path(m["path"]) / "config.json").read_text())
            speed[m["name"]] = self.per_token["quantization_config" in config]
            used = self.kv_cache_used or m["engine"].get("kv_cache_dtype", "auto")
            info[m["name"]] = {"load_time_s": 0.0, "kv_cache_dtype": used, "max_model_len": 8192}
        rng = random.Random(0)
        benchmarks = {}
        for name, spec in request["benchmarks"].items():
            count, size = len(spec["conversations"]), spec["chunk_size"]
            units = [(p, s) for p in range(request.get("passes", 1)) for s in range(0, count, size)]
            jitter = [1 + rng.random() for _ in units]
            benchmarks[name] = {}
            for m in request["models"]:
                turns = [len(c["turns"]) for c in spec["conversations"]]
                chunks = [{"rows": [s, min(s + size, count)], "pass": p, "tokens": 3 * sum(turns[s:s + size]),
                           "seconds": [speed[m["name"]] * 3 * sum(turns[s:s + size]) * j] * request["repeats"]}
                          for (p, s), j in zip(units, jitter)]
                benchmarks[name][m["name"]] = {"answers": [["정답: B"] * t for t in turns], "tokens": [[3] * t for t in turns],
                                               "chunks": chunks, "clock": "engine"}
        return {"vllm_version": "recorded", "stack": {"vllm": "recorded", "transformers": "recorded"},
                "device": "recorded device", "models": info, "benchmarks": benchmarks}


if __name__ == "__main__":  # the exatrack command line with a recorded session standing in for vLLM: tests of real processes
    from exatrack.cli import main
    from exatrack.evaluate import serving

    serving.run_session = RecordedSession()
    main(prog_name="exatrack")
