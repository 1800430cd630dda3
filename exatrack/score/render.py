"""A leaderboard drawn for people: markdown (terminal and MLflow), CSV, and the PerfNorm x SpeedNorm plot
with error bars and iso-score lines."""

import csv
import io

from exatrack.evaluate.benchmarks import REGISTRY
from exatrack.score.leaderboard import BASE_SCORE, Board

COLUMNS = ["rank", "name", "score", "score_low", "score_high", "tied", "to_leader", "to_leader_low", "to_leader_high",
           "perf_norm", "perf_norm_low", "perf_norm_high", "speed_norm", "speed_norm_low", "speed_norm_high", "perf",
           "official", "official_estimate", "run_id", "base_run_id", "note"]
OTHER_SESSION = "other session: intervals compared"


def benchmarks(board: Board) -> list[str]:
    """The benchmarks any scored lane has a recovery on, in a stable order."""
    return sorted({name for e in board.scored for name in e.recovery})


def columns(board: Board) -> list[str]:
    per_benchmark = [f"{name}.{key}" for name in benchmarks(board)
                     for key in ("recovery", "recovery_low", "recovery_high", "token_ratio")]
    return COLUMNS[:-3] + per_benchmark + COLUMNS[-3:]


def rows(board: Board) -> list[dict]:
    table = []
    ordered = board.scored + [e for e in board.entries if not e.score]
    for i, e in enumerate(ordered, start=1):
        s = e.score
        row = {c: "" for c in columns(board)}
        note = "the yardstick: score 0.5, PerfNorm 1, SpeedNorm 0 by definition" if e.is_base else e.reason
        row.update(name=e.name, run_id=e.run.info.run_id, base_run_id=e.base_run_id or "", note=note)
        if e.is_base:
            row["perf"] = f"{e.run.data.metrics.get('perf', float('nan')):.4f}"
        if s:
            row.update(rank=i, tied="yes" if e.tied else "", perf=f"{s.perf:.4f}")
            for key in ("score", "perf_norm", "speed_norm"):
                interval = getattr(s, f"{key}_ci")
                row.update({key: f"{getattr(s, key):.4f}", f"{key}_low": f"{interval.low:.4f}",
                            f"{key}_high": f"{interval.high:.4f}"})
        if d := e.to_leader:
            row.update(to_leader=f"{d.score:+.4f}", to_leader_low=f"{d.score_ci.low:+.4f}",
                       to_leader_high=f"{d.score_ci.high:+.4f}")
        elif s and e is not board.leader and e.base_run_id != board.leader.base_run_id:
            row["to_leader"] = OTHER_SESSION
        for name, r in e.recovery.items():
            if r.ratio is not None:
                row.update({f"{name}.recovery": f"{r.ratio:.4f}", f"{name}.recovery_low": f"{r.ci.low:.4f}",
                            f"{name}.recovery_high": f"{r.ci.high:.4f}"})
            if r.token_ratio is not None:
                row[f"{name}.token_ratio"] = f"{r.token_ratio:.2f}"
        if e.official is not None:
            row["official"] = f"{e.official:.4f}"
        if e.estimate:
            row["official_estimate"] = f"{e.estimate[1]:.4f} [{e.estimate[0]:.4f}, {e.estimate[2]:.4f}]"
        table.append(row)
    return table


def with_interval(row: dict, key: str) -> str:
    return f"{row[key]} [{row[key + '_low']}, {row[key + '_high']}]" if row[key] and row.get(key + "_low") else row[key]


def markdown(board: Board) -> str:
    table = rows(board)
    header = ["rank", "name", "score [95% CI]", "tied", "Δ to leader [95% CI]", "PerfNorm [95% CI]",
              "SpeedNorm [95% CI]", "perf"]
    optional = [c for c in ("official", "official_estimate", "note") if any(r[c] for r in table)]
    lines = [f"leaderboard: fingerprint {board.fingerprint}, source model {board.source}", "",
             "| " + " | ".join(header + optional) + " |", "|" + "---|" * (len(header) + len(optional))]
    for r in table:
        cells = [str(r["rank"]), r["name"], with_interval(r, "score"), r["tied"], with_interval(r, "to_leader"),
                 with_interval(r, "perf_norm"), with_interval(r, "speed_norm"), r["perf"]] + [r[c] for c in optional]
        lines.append("| " + " | ".join(cells) + " |")
    if names := benchmarks(board):
        lines += ["", "recovery per benchmark: the lane's score over the base's [95% CI], and its generated tokens "
                  "over the base's (x)", "", "| name | " + " | ".join(REGISTRY[n].title for n in names) + " |",
                  "|" + "---|" * (len(names) + 1)]
        for r in table:
            if r["rank"] != "":
                cells = [f"{with_interval(r, f'{n}.recovery') or '-'} ({r[f'{n}.token_ratio'] or '-'}x)" for n in names]
                lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    if len(board.official_ratios) >= 2:
        ratios = board.official_ratios
        lines.append(f"\nofficial estimate = k x score, k from {min(ratios):.3f} to {max(ratios):.3f} "
                     f"(median {sorted(ratios)[len(ratios) // 2]:.3f}) over {len(ratios)} runs with recorded official scores")
    lines.append(f"\nverdict: {board.verdict()}")
    return "\n".join(lines) + "\n"


def to_csv(board: Board) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, columns(board))
    writer.writeheader()
    writer.writerows(rows(board))
    return out.getvalue()


def plot(board: Board):
    """PerfNorm against SpeedNorm with both intervals, dashed lines of equal score, labels kept apart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 6))
    entries = board.scored
    xs = [e.score.speed_norm for e in entries] + [0.0]
    span_x = [min(xs + [e.score.speed_norm_ci.low for e in entries]) - 0.05,
              max(xs + [e.score.speed_norm_ci.high for e in entries]) + 0.05]
    for level in sorted({round(BASE_SCORE + d, 2) for d in (-0.2, -0.1, 0.0, 0.1, 0.2)}):
        # 0.5 * PerfNorm + 0.5 * SpeedNorm = level  <=>  PerfNorm = 2 * level - SpeedNorm
        ax.plot(span_x, [2 * level - x for x in span_x], ls="--", lw=0.6, color="grey")
        ax.annotate(f"score {level:.2f}", (span_x[1], 2 * level - span_x[1]), fontsize=7, color="grey")
    for e in entries:
        s = e.score
        ax.errorbar(s.speed_norm, s.perf_norm,
                    xerr=[[s.speed_norm - s.speed_norm_ci.low], [s.speed_norm_ci.high - s.speed_norm]],
                    yerr=[[s.perf_norm - s.perf_norm_ci.low], [s.perf_norm_ci.high - s.perf_norm]],
                    fmt="o", capsize=3, color="tab:red" if e is board.leader else "tab:orange" if e.tied else "tab:blue")
    ax.scatter([0], [1], marker="*", s=150, color="k", zorder=5)
    labels = [(e.score.speed_norm, e.score.perf_norm, f"{e.name} {e.score.score:.3f}") for e in entries]
    labels.append((0.0, 1.0, "base 0.500"))
    place_labels(ax, labels)
    ax.set_xlim(*span_x)
    ax.set_xlabel("SpeedNorm = 1 - spt / spt_base  (95% CI)")
    ax.set_ylabel("PerfNorm = Perf / Perf_base  (95% CI)")
    ax.set_title("score = max(0.5 PerfNorm + 0.5 SpeedNorm, 0); red: leader, orange: tied with it")
    fig.tight_layout()
    return fig


def recovery_plot(board: Board):
    """Each lane's score over the base's on each benchmark, with its interval, and its generated tokens
    over the base's beside it: where a lane loses quality, and whether it rambles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, entries = benchmarks(board), board.scored
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.5 * len(entries) * max(1, len(names))))
    y = 0
    ticks = []
    for e in entries:
        for name in names:
            r = e.recovery.get(name)
            if r and r.ratio is not None:
                ax.errorbar(r.ratio, y, xerr=[[r.ratio - r.ci.low], [r.ci.high - r.ratio]], fmt="o", capsize=3,
                            color="tab:red" if r.ci.high < 1 else "tab:blue")
            if r and r.token_ratio is not None:
                ax.annotate(f"tokens x{r.token_ratio:.2f}", (1, y), xytext=(6, -3), textcoords="offset points",
                            fontsize=7, color="tab:red" if r.token_ratio > 1.5 else "grey")
            ticks.append((y, f"{e.name} · {REGISTRY[name].title}"))
            y -= 1
    ax.axvline(1.0, ls="--", lw=0.6, color="grey")
    ax.set_yticks([t for t, _ in ticks], [label for _, label in ticks], fontsize=7)
    ax.set_xlabel("recovery = lane's score / base's score (95% CI); red: below the base's")
    ax.set_title("recovery per benchmark, and generated tokens against the base's")
    fig.tight_layout()
    return fig


def place_labels(ax, labels: list[tuple[float, float, str]]) -> None:
    """Labels stacked in the order of their points' height, each at least one line below the last."""
    ymin, ymax = ax.get_ylim()
    step = (ymax - ymin) / 30
    last = None
    for x, y, text in sorted(labels, key=lambda item: -item[1]):
        ty = y if last is None else min(y, last - step)
        ax.annotate(text, (x, y), xytext=(x, ty), fontsize=8, textcoords="data",
                    arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "grey"} if ty != y else None)
        last = ty
