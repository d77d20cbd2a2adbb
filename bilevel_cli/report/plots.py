"""The report's figures as PNG bytes: learning curves per run, and final accuracy and time per hyper-iteration
against T."""

import io
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # files only: no display, and the same output with or without one
import matplotlib.pyplot as plt  # noqa: E402 (after the backend is chosen)
from matplotlib.ticker import MaxNLocator  # noqa: E402

from bilevel_cli.report.runs import Group  # noqa: E402
from bilevel_cli.report.table import Row  # noqa: E402

T_KEY = "hypergrad.T"


@dataclass
class Figure:
    name: str     # the PNG's file name
    caption: str
    png: bytes


def make_figures(groups: list[Group], rows: list[Row]) -> list[Figure]:
    figures = [_learning_curves(groups, "outer_loss", "outer loss"),
               _learning_curves(groups, "val_acc", "validation accuracy %")]
    against_t = [(row, t) for row in rows if (t := _t_of(row.group)) is not None]
    if len({t for _, t in against_t}) > 1:
        figures += [_against_t(against_t, "test_acc", "test accuracy %"),
                    _against_t(against_t, "s_per_iteration", "s / hyper-iteration")]
    return [figure for figure in figures if figure]


def _learning_curves(groups: list[Group], metric: str, label: str) -> Figure | None:
    """One line per run, one colour per group: seeds of a setting share its colour, so their spread shows."""
    figure, axes = plt.subplots(figsize=(7, 4.2))
    drawn = False
    for index, group in enumerate(groups):
        for number, run in enumerate(group.runs):
            points = [(line["step"], line[metric]) for line in run.metrics if metric in line]
            if points:
                steps, values = zip(*points)
                axes.plot(steps, values, color=f"C{index % 10}", alpha=0.8, marker="." if len(points) < 20 else None,
                          label=group.label if number == 0 else None)
                drawn = True
    if not drawn:
        plt.close(figure)
        return None
    axes.set(xlabel="hyper-iteration", ylabel=label, title=f"{label} per run")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    return Figure(f"{metric}.png", f"{label} against hyper-iterations, one line per run, one colour per group",
                  _png(figure, axes))


def _against_t(rows_and_ts: list, metric: str, label: str) -> Figure:
    """One line per setting of the other differing keys, mean ± 95% CI over seeds where there is one."""
    figure, axes = plt.subplots(figsize=(7, 4.2))
    series: dict[str, list] = {}
    for row, t in rows_and_ts:
        others = ", ".join(f"{k}={v}" for k, v in row.group.settings.items() if k != T_KEY) or None
        series.setdefault(others, []).append((t, getattr(row, metric)))
    for index, (name, points) in enumerate(series.items()):
        points = sorted(((t, value) for t, value in points if value is not None), key=lambda point: point[0])
        if not points:
            continue
        ts = [t for t, _ in points]
        if metric == "test_acc":
            means = [value.mean for _, value in points]
            errors = [value.ci95 if value.ci95 is not None and not value.over_episodes else 0 for _, value in points]
            axes.errorbar(ts, means, yerr=errors, color=f"C{index % 10}", marker="o", capsize=3, label=name)
        else:
            axes.plot(ts, [value for _, value in points], color=f"C{index % 10}", marker="o", label=name)
    axes.set(xlabel="T (inner steps)", ylabel=label, title=f"{label} against T")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    all_ts = [t for _, t in rows_and_ts]
    if max(all_ts) / min(all_ts) >= 100:  # T = 1, 10, 100, 1000 would crowd the left end otherwise
        axes.set_xscale("log")
    bars = " (error bars: 95% CI over seeds)" if metric == "test_acc" else ""
    return Figure(f"{metric}_vs_T.png", f"{label} against T, mean over seeds{bars}", _png(figure, axes))


def _t_of(group: Group) -> int | None:
    """The T all finished runs of the group ran with (summary.json's), or None when they disagree or none finished."""
    ts = {run.summary.get("T") for run in group.finished}
    return ts.pop() if len(ts) == 1 and None not in ts else None


def _png(figure, axes) -> bytes:
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()
