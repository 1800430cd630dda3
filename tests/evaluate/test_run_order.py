"""The order a session runs its models in, unit after unit: what one model's run leaves behind for the
next must fall on every model alike (exatrack/evaluate/worker.py, balanced_orders)."""

import collections

import pytest

from exatrack.evaluate import worker


@pytest.mark.parametrize("count", range(1, 8))
def test_every_model_comes_at_every_position_and_after_every_other_equally_often(count):
    names = [f"m{i}" for i in range(count)]
    orders = worker.balanced_orders(names)
    assert all(sorted(order) == names for order in orders)
    positions = collections.Counter((order.index(name), name) for order in orders for name in order)
    follows = collections.Counter(pair for order in orders for pair in zip(order, order[1:]))
    assert set(positions.values()) == {len(orders) // count} and len(positions) == count * count
    assert len(follows) == count * (count - 1) and len(set(follows.values())) <= 1


def test_the_units_of_a_session_run_through_the_balanced_orders(monkeypatch):
    """Three models, two benchmarks of three passes: the six units take the six orders once each, the
    second benchmark going on where the first left off, as run_session's offset does."""
    ran = []

    class Engine:
        def __init__(self, name):
            self.name = name

        def reset_prefix_cache(self):
            return True

    def run_turns(llm, conversations, sampling, chat_kwargs):
        ran.append(llm.name)
        return [["a"]] * len(conversations), [[1]] * len(conversations), 1.0, "engine"

    monkeypatch.setattr(worker, "run_turns", run_turns)
    engines = {name: Engine(name) for name in ("base", "a", "b")}
    offset = 0
    for bench in ("first", "second"):
        out = worker.run_benchmark(bench, engines, [{"turns": ["q"]}] * 2, 2, passes=3, repeats=1, sampling={},
                                   chat_kwargs={}, offset=offset)
        offset += len(out["base"]["chunks"])
    units = [ran[i:i + 3] for i in range(0, len(ran), 3)]
    assert units == worker.balanced_orders(list(engines))
