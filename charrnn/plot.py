"""Loss curves of one or more runs as a PNG, SVG or PDF (matplotlib, no display needed).

A pure function from runs to a file: a `Figure` of its own (no pyplot state), closed on return.
"""

from __future__ import annotations

from pathlib import Path

from charrnn.atomic import atomic_write
from charrnn.errors import InvalidUsageError
from charrnn.extras import require
from charrnn.metrics import read_metrics
from charrnn.rundir import RunDir
from charrnn.runs import describe_model

AXES = {"steps": "step", "chars": "characters trained", "minutes": "minutes of training"}
FORMATS = (".png", ".svg", ".pdf")
AXES_RECT = (0.09, 0.11, 0.88, 0.72)  # left, bottom, width, height: the legend sits above the axes
FIGSIZE, DPI = (8.0, 5.0), 100


def _x(event: dict, axis: str, chars_per_step: int) -> float:
    if axis == "minutes":
        return event["minutes"]
    return event["step"] * (chars_per_step if axis == "chars" else 1)


def plot_runs(run_dirs: list[Path], out: Path, axis: str = "steps", ylim: tuple[float, float] | None = None) -> None:
    """Training loss (solid) and validation loss (dashed, dots) of each run against `axis`,
    one colour per run, labelled `name (cell LxH)`; each run's best validation point is a star.
    The y range is `ylim` (low, high), or else the one `auto_ylim` picks."""
    if ylim is not None and not ylim[0] < ylim[1]:
        raise InvalidUsageError(f"--ylim needs LOW < HIGH, got {ylim[0]:g},{ylim[1]:g}")
    if out.suffix.lower() not in FORMATS:
        raise InvalidUsageError(f"the plot's file must end in {', '.join(FORMATS)}, got {out.name!r}")
    if axis not in AXES:
        raise InvalidUsageError(f"--x must be one of {', '.join(AXES)}")
    runs = [(path, read_metrics(RunDir(path).metrics), RunDir(path).read_config()) for path in run_dirs]  # errors first
    figure_module = require("matplotlib.figure", "plot")
    matplotlib = require("matplotlib", "plot")
    fig = figure_module.Figure(figsize=FIGSIZE, dpi=DPI)
    ax = fig.add_axes(AXES_RECT)
    bests, curves = [], []
    for i, (run, events, config) in enumerate(runs):
        colour = f"C{i % 10}"
        train = config.get("train") if isinstance(config.get("train"), dict) else {}
        chars_per_step = int(train.get("batch_size", 1)) * int(train.get("seq_len", 1))
        label = f"{run.resolve().name} ({describe_model(config)})"
        points = [(_x(e, axis, chars_per_step), e["train_loss"]) for e in events if _number(e.get("train_loss"))]
        vals = [(_x(e, axis, chars_per_step), e["val_loss"]) for e in events if _number(e.get("val_loss"))]
        curves.append((points, vals))
        if points:
            ax.plot(*zip(*points, strict=True), color=colour, linewidth=1.6, label=f"{label} train")
        if vals:
            ax.plot(*zip(*vals, strict=True), color=colour, linestyle="--", marker=".", label=f"{label} val")
            best_x, best = min(vals, key=lambda p: p[1])
            ax.plot([best_x], [best], marker="*", markersize=14, color=colour, markeredgecolor="black", linestyle="")
            bests.append((best_x, best))
    low_high = ylim or auto_ylim(curves)
    if low_high is not None:
        ax.set_ylim(*low_high)
    left, right = ax.get_xlim()
    for best_x, best in bests:  # labels near the right edge go to the star's left, inside the axes
        at_right = best_x > left + 0.75 * (right - left)
        ax.annotate(
            f"best {best:.4f}",
            (best_x, best),
            textcoords="offset points",
            xytext=(-8 if at_right else 6, -14),
            ha="right" if at_right else "left",
            fontsize=8,
        )
    ax.set_xlabel(AXES[axis])
    ax.set_ylabel("loss (nats per character)")
    ax.grid(True, alpha=0.3)
    fig.legend(loc="upper center", ncols=2, fontsize=8, frameon=False)
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # SVG text stays text
        atomic_write(out, lambda f: fig.savefig(f, format=out.suffix.lower()[1:]))


def auto_ylim(curves: list[tuple[list[tuple[float, float]], list[tuple[float, float]]]]) -> tuple[float, float] | None:
    """A y range that shows where runs differ, from each run's (x, loss) training and validation
    points: from the lowest loss up to the highest validation loss (without validation, the
    highest training loss after the first tenth of the run), 5% margins. The first minutes'
    training losses, far above everything after, fall off the top instead of squeezing the
    curves into a strip. None without points (matplotlib's own range)."""
    ys = [y for points, vals in curves for _, y in points + vals]
    tops = [y for _, vals in curves for _, y in vals]
    if not tops:
        for points, _ in curves:
            if points:
                first, last = points[0][0], points[-1][0]
                tops += [y for x, y in points if x >= first + 0.1 * (last - first)]
    if not ys or not tops:
        return None
    low, high = min(ys), max(tops)
    margin = 0.05 * (high - low) if high > low else 0.05 * max(abs(high), 1.0)
    return low - margin, high + margin


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and value == value and abs(value) != float("inf")
