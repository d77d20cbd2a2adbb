"""The effect of T (Franceschi et al. 2018, first experiment): what the outer optimization reaches against T.

Runs `bilevel train -m experiment=effect_of_T hypergrad.T=<grid>` and one `task.exact=true` run (the inner problem
solved in closed form, T unused) into one sweep directory, one subdirectory per job; or, with --from DIR, reads
such a directory. Then writes effect_of_T.md (the table) and effect_of_T.png (the plot) into it, and into --out if
given, and prints the table. Per job:
  - f_T reached: the lowest outer objective (validation loss of the classifier fitted by T steps) over the
    run's validations, from metrics.jsonl;
  - validation and test accuracy of the best-validation checkpoint, from summary.json;
  - seconds per hyper-iteration: the median over the log windows of metrics.jsonl's s_per_iteration.

The default grid, T = 1, 10, 100, 1000, with the experiment's 100 hyper-iterations, takes about 2 minutes of one
CPU core (4.7 minutes on a shared 2-core machine that gave it 42% of a core), T = 1000 nearly all of it: about
1 s a hyper-iteration on a free core, and 1.2 GB of memory for the graph of the 1000 steps that reverse mode keeps.
The jobs get OMP_NUM_THREADS=1 unless it is set: the inner steps are small matrix products whose cost is Python and
autograd overhead, and a second thread only adds synchronization (17 to 90× slower on that busy machine).

Run:  python scripts/effect_of_T.py [--T 1 10 100 1000] [--out DIR] [override ...]
      python scripts/effect_of_T.py --experiment effect_of_T_omniglot data.root=/path/to/data
      python scripts/effect_of_T.py --from outputs/multirun/<sweep>
"""

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

TABLE, PLOT = "effect_of_T.md", "effect_of_T.png"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--T", type=int, nargs="+", default=[1, 10, 100, 1000], help="the grid of inner horizons")
    parser.add_argument("--experiment", default="effect_of_T", help="experiment config (e.g. effect_of_T_omniglot)")
    parser.add_argument("--from", dest="source", type=Path, help="read this sweep directory instead of running one")
    parser.add_argument("--out", type=Path, help="also write the table and the plot into this directory")
    parser.add_argument("overrides", nargs="*", help="passed to every job, e.g. data=omniglot data.root=/data")
    args = parser.parse_args()

    sweep = args.source or run_sweep(args.experiment, args.T, args.overrides)
    rows = read_sweep(sweep)
    if not rows:
        sys.exit(f"effect_of_T: no linear_representation run with summary.json and metrics.jsonl under {sweep}")
    table = markdown(rows, sweep)
    (sweep / TABLE).write_text(table)
    plot(rows, sweep / PLOT)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for name in (TABLE, PLOT):
            shutil.copyfile(sweep / name, args.out / name)
    print(table, end="")
    print(f"\nwritten: {sweep / TABLE}, {sweep / PLOT}" + (f" (and copies in {args.out})" if args.out else ""))


def run_sweep(experiment: str, grid: list[int], overrides: list[str]) -> Path:
    """The T grid and the exact problem, as two `bilevel train -m` calls writing into one sweep directory."""
    sweep = Path("outputs/multirun") / f"{datetime.datetime.now():%Y-%m-%d_%H-%M-%S}_effect_of_T"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    base = [sys.executable, "-m", "bilevel_cli", "train", "-m", f"experiment={experiment}", *overrides,
            f"hydra.sweep.dir={sweep}"]
    # The exact run solves the squared-loss problem whatever task.loss the others use; the table says which.
    for extra in ([f"hypergrad.T={','.join(map(str, grid))}"], ["task.exact=true", "task.loss=squared"]):
        done = subprocess.run([*base, *extra], env=env)
        if done.returncode:
            sys.exit(done.returncode)
    return sweep


def read_sweep(sweep: Path) -> list[dict]:
    """One row per finished linear_representation job under `sweep`: the T-step runs by T, then the exact ones."""
    if not sweep.is_dir():
        sys.exit(f"effect_of_T: no sweep directory {sweep}")
    rows = []
    for job in sorted(p for p in sweep.iterdir() if (p / "summary.json").is_file() and (p / "metrics.jsonl").is_file()):
        summary = json.loads((job / "summary.json").read_text())
        if summary.get("task") != "linear_representation":
            continue
        lines = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines() if line.strip()]
        rows.append({"T": summary["T"], "exact": summary["exact"], "loss": summary["loss"],
                     "f": min(m["val_loss"] for m in lines if "val_loss" in m),
                     "val_acc": summary["val_acc"], "test_acc": summary["test_acc"],
                     "seconds": statistics.median(m["s_per_iteration"] for m in lines if "s_per_iteration" in m),
                     "steps": summary["last_step"], "classes": summary["classes"], "dim": summary["dim"],
                     "method": summary["method"]})
    return sorted(rows, key=lambda r: (r["exact"], r["T"]))


def markdown(rows: list[dict], sweep: Path) -> str:
    first = rows[0]
    lines = [f"Effect of T: {first['classes']} classes, d = {first['dim']}, {first['steps']} hyper-iterations "
             f"({sweep}).", "",
             "| T | inner loss | f_T reached (lowest val. loss) | val. acc. % | test acc. % (best val. acc.) "
             "| s / hyper-iteration |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        T = "exact (closed form)" if r["exact"] else f"{r['T']} ({r['method']})"
        lines.append(f"| {T} | {r['loss']} | {r['f']:.4f} | {r['val_acc']:.1f} | {r['test_acc']:.1f} "
                     f"| {r['seconds']:.4f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """f_T, test accuracy and seconds per hyper-iteration against T (log axis); the exact problem's values as
    horizontal dashed lines."""
    steps = [r for r in rows if not r["exact"]]
    exact = [r for r in rows if r["exact"]]
    panels = (("f", "outer objective f_T reached"), ("test_acc", "test accuracy (%)"),
              ("seconds", "seconds per hyper-iteration"))
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), constrained_layout=True)
    for ax, (key, label) in zip(axes, panels):
        if steps:
            ax.plot([r["T"] for r in steps], [r[key] for r in steps], "o-", label="T steps")
        for r in exact:
            ax.axhline(r[key], color="k", linestyle="--", label="exact")
        ax.set_xscale("log")
        if key == "seconds":  # from T = 1 to 1000 the time spans decades too
            ax.set_yscale("log")
        ax.set_xlabel("T")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
