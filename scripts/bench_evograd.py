"""EvoGrad vs reverse mode on data hyper-cleaning (the embedded digits): accuracy, time and memory per hyper-iteration.

Each method trains the per-example weights of experiment=hyper_cleaning (600 training examples, 300 of them
mislabelled, / 400 validation / 797 test; softmax regression by T = 100 gradient steps at rate 1; Adam at 0.05 on
the weights, projected on [0, 1]) for the same number of hyper-iterations from the same start, in a fresh subprocess
(`--one METHOD K`), and reports:
  - test accuracy of the cleaned model and F1 of the examples flagged as mislabelled (weight < 0.5); the baseline
    (every example) and the oracle (the clean ones only) do not depend on the method and are printed once;
  - s per hyper-iteration: the median over the run;
  - memory of one hyper-iteration (the last): the peak bytes of the distinct storages autograd's saved tensors hold,
    the data and the weights excluded (the graph each method keeps; the problem is too small for the process's RSS
    to show it).

Run:  python scripts/bench_evograd.py [--steps 200] [--copies 2 16] [--device cpu|cuda|auto] [--threads 1]
                                      [--out BENCHMARKS.md]
"""

import argparse
import contextlib
import json
import os
import platform
import shlex
import statistics
import sys
import time

import torch

from bench_memory import MiB, parse_arguments, run_json, write_section
from bilevel_cli.core.saved_bytes import SavedBytes
from bilevel_cli.data.digits import load_digits
from bilevel_cli.tasks.hyper_cleaning import HyperCleaning

HEADING = "### EvoGrad vs reverse mode, hyper-cleaning:"


def train_one(method: str, copies: int, args) -> dict:
    """Trains the weights with `method` (EvoGrad with `copies` copies); scores, median time and saved-tensor peak."""
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    digits = {k: v.to(args.device) for k, v in load_digits().items()}
    options = {"K": copies, "sigma": 1e-3, "tau": 0.05} if method == "evograd" else {}
    task = HyperCleaning(digits["images"], digits["labels"], train=600, val=400, test=797, corrupted=300, T=100,
                         method=method, method_options=options, inner_lr=1.0)
    optimizer = torch.optim.Adam(task.parameters(), lr=0.05)
    meter = SavedBytes(t.untyped_storage().data_ptr() for t in [*task.buffers(), *task.parameters()])
    times = []
    for step in range(args.steps):
        hooks = (torch.autograd.graph.saved_tensors_hooks(meter.track, lambda x: x) if step == args.steps - 1
                 else contextlib.nullcontext())
        start = time.perf_counter()
        with hooks:
            optimizer.zero_grad()
            task.hyper_iteration(with_metrics=False)
        optimizer.step()
        task.constrain()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"scores": task.test(), "time": statistics.median(times), "saved": meter.peak}


def run_one(method: str, copies: int, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--one", method, str(copies), "--steps", str(args.steps),
           "--device", args.device, "--threads", str(args.threads)]
    return run_json(cmd, dict(os.environ))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="hyper-iterations (experiment=hyper_cleaning's)")
    parser.add_argument("--copies", type=int, nargs="+", default=[2, 16], help="EvoGrad's K (the paper's is 2)")
    args = parse_arguments(parser, "K")
    if args.one:
        print(json.dumps(train_one(args.one[0], int(args.one[1]), args)))
        return

    runs = {"reverse": run_one("reverse", 0, args), **{f"evograd K={K}": run_one("evograd", K, args)
                                                       for K in args.copies}}
    reverse = runs["reverse"]
    lines = [f"{HEADING} digits, {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
             f"{args.threads} thread(s), device {args.device}, float32",
             "", f"`python {shlex.join(sys.argv)}`", "",
             f"600 training examples (300 mislabelled) / 400 validation / 797 test, T = 100 gd steps, {args.steps} "
             f"hyper-iterations of Adam (0.05). Test accuracy of the model trained on every example: "
             f"{reverse['scores']['test_acc_baseline']:.2f}%, on the clean ones only: "
             f"{reverse['scores']['test_acc_oracle']:.2f}%.", "",
             "| method | test acc (%) | F1 | s / hyper-iteration | saved-tensor peak (MiB) | time vs reverse "
             "| memory vs reverse |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in runs.items():
        lines.append(f"| {name} | {r['scores']['test_acc']:.2f} | {r['scores']['f1']:.3f} | {r['time']:.4f} "
                     f"| {r['saved'] / MiB:.2f} | {r['time'] / reverse['time']:.3f} "
                     f"| {r['saved'] / reverse['saved']:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        write_section(args.out, HEADING, text)


if __name__ == "__main__":
    main()
