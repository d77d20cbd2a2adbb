"""Time and peak memory of one hyper-iteration of few-shot hyper-representation, next to a floor and the peers.

Omniglot-sized 5-way 1-shot episodes (15 queries per class, 28×28 grey) through conv4-64, for each meta-batch B
and inner horizon T, of: `floor`, forward + backward of the backbone alone on the same images (a linear layer on
the features, one cross-entropy over all images and their episode labels; T-free, timed with each T's paths);
`bilevel`, HyperRepresentation.training_step as `bilevel train` runs it (reverse mode, gd inner, learned inner
lr 0.1: the backbone once over the meta-batch, the T steps on all episodes at once); `naive`, the peers' way,
written here: a Python loop over episodes, each with the backbone on its own images, a linear head from zero,
T steps built with autograd.grad(create_graph=True), query loss / B, backward, gradients accumulating; and
`higher` (innerloop_ctx, differentiable SGD on an nn.Linear head) and `torchopt` (MetaSGD) in the same loop,
when they import (the output says which were skipped, and why). All use the task's learned inner lr, so they
compute one gradient: checked first in float64 (B=2, T=3, 8 filters; max relative difference to bilevel).
`bilevel-bf16` is `bilevel` with `trainer.precision=bf16` (the backbone under bfloat16 autocast; its gradient
is checked against float32 in tests/tasks/test_hyper_representation.py), timed only where the device has native
bfloat16 (emulated, it is far slower than float32 and would dominate the run). A last table times the floor with
the backbone run each way it could be (bf16 autocast, channels-last, torch.compile) against plain float32: an
option of `bilevel train` exists only for what pays.
Time: median of --repeats rounds after --warmup rounds, synchronized on CUDA; a round calls every path of a
configuration once, in turn, so that a slow spell of a shared machine falls on all of them alike and the ratios
compare calls made side by side. Memory, from one more call of each: on CUDA
max_memory_allocated above what was allocated before; on CPU the peak bytes of the storages held by autograd's
saved tensors (each storage once). Random uint8 images (timing does not depend on them), fixed seeds. Last,
the sampler's throughput (episodes/s drawn and gathered from a uint8 store on the device) is set against the
bilevel path's consumption at B=16, T=5.

Run:  python scripts/bench_hyperiteration.py [--B 4 16 32] [--T 1 5 10 50] [--device cpu|cuda|auto]
          [--repeats 5] [--warmup 2] [--threads N] [--quick] [--out BENCHMARKS.md]
"""

import argparse
import importlib
import importlib.metadata
import os
import platform
import shlex
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from bench_memory import MiB, append_section
from bilevel_cli.core.saved_bytes import SavedBytes
from bilevel_cli.data.episodes import EpisodeSampler
from bilevel_cli.engine.allocator import keep_freed_memory
from bilevel_cli.engine.config import native_bf16
from bilevel_cli.models.conv4 import Conv4
from bilevel_cli.tasks.hyper_representation import HyperRepresentation

WAYS, SHOTS, QUERIES = 5, 1, 15
STORE = (1200, 20, 1, 28, 28)  # classes, images per class, C, H, W: Omniglot's training split in size
PEERS = ("higher", "torchopt")


def paths(task: HyperRepresentation, peers: dict) -> tuple[dict, list[nn.Module]]:
    """(name -> fn(episodes), the modules whose .grad the fns fill): each fn is one hyper-iteration."""
    backbone, lr = task.backbone, task.inner_lr
    dtype = next(backbone.parameters()).dtype
    head = nn.LazyLinear(WAYS, device=lr.device, dtype=dtype)

    def floor(ep):
        labels = torch.cat([ep.support_labels, ep.query_labels], 1)
        F.cross_entropy(head(task.features(ep)).flatten(0, 1), labels.flatten()).backward()

    def per_episode(inner):  # the peers' loop; inner(support x, y, query x, y) -> the episode's query loss
        def run(ep):
            batch, k = len(ep.images), ep.support_labels.shape[1]
            for b in range(batch):
                x = backbone(ep.images[b:b + 1].to(dtype) / 255, ep.segments)[0]
                (inner(x[:k], ep.support_labels[b], x[k:], ep.query_labels[b]) / batch).backward()
        return run

    def naive(xs, ys, xq, yq):
        w, b = xs.new_zeros(WAYS, xs.shape[1], requires_grad=True), xs.new_zeros(WAYS, requires_grad=True)
        for _ in range(task.T):
            gw, gb = torch.autograd.grad(F.cross_entropy(F.linear(xs, w, b), ys), (w, b), create_graph=True)
            w, b = w - lr * gw, b - lr * gb
        return F.cross_entropy(F.linear(xq, w, b), yq)

    def zero_linear(x):  # a fresh head per episode, from zero as in bilevel
        linear = nn.Linear(x.shape[1], WAYS, device=x.device, dtype=x.dtype)
        for p in linear.parameters():
            nn.init.zeros_(p)
        return linear

    def with_higher(xs, ys, xq, yq):
        linear = zero_linear(xs)
        sgd = torch.optim.SGD(linear.parameters(), lr=1.0)  # a placeholder: the override sets the learned lr
        with peers["higher"].innerloop_ctx(linear, sgd, override={"lr": [lr]}) as (flinear, diffopt):
            for _ in range(task.T):
                diffopt.step(F.cross_entropy(flinear(xs), ys))
            return F.cross_entropy(flinear(xq), yq)

    def with_torchopt(xs, ys, xq, yq):
        linear = zero_linear(xs)
        sgd = peers["torchopt"].MetaSGD(linear, lr=lr)
        for _ in range(task.T):
            sgd.step(F.cross_entropy(linear(xs), ys))
        return F.cross_entropy(linear(xq), yq)

    def bilevel_bf16(ep):
        task.precision = "bf16"
        try:
            task.training_step(ep)
        finally:
            task.precision = "fp32"

    inners = {"naive": naive, "higher": with_higher, "torchopt": with_torchopt}
    fns = {"floor": floor, "bilevel": task.training_step, "bilevel-bf16": bilevel_bf16}
    return fns | {name: per_episode(inners[name]) for name in ["naive", *peers]}, [task, head]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_times(fns: dict, episodes, zero, device, repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds of each fn over `repeats` rounds after `warmup` rounds; a round calls each fn once, in turn."""
    times = {name: [] for name in fns}
    for _ in range(warmup + repeats):
        for name, fn in fns.items():
            zero()
            sync(device)
            start = time.perf_counter()
            fn(episodes)
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(seconds[warmup:]) for name, seconds in times.items()}


def peak_bytes(fn, episodes, zero, device) -> int:
    """Peak bytes of one call: on CUDA allocated above what was before, on CPU held by autograd's saved tensors."""
    zero()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn(episodes)
        return torch.cuda.max_memory_allocated(device) - before
    meter = SavedBytes()
    with torch.autograd.graph.saved_tensors_hooks(meter.track, lambda x: x):
        fn(episodes)
    return meter.peak


def check_gradients(store, peers, device) -> dict[str, float]:
    """Max relative difference of each loop's gradient (backbone ∞-norm, inner lr) to bilevel's, in float64."""
    torch.manual_seed(0)
    task = HyperRepresentation(Conv4(channels=8), WAYS, T=3).to(device, torch.float64)
    fns, episodes, grads = paths(task, peers)[0], EpisodeSampler(store, WAYS, SHOTS, QUERIES, seed=1).sample(2), {}
    for name in [n for n in fns if n not in ("floor", "bilevel-bf16")]:  # autocast leaves float64 as it is
        task.zero_grad(set_to_none=True)
        fns[name](episodes)
        grads[name] = torch.cat([p.grad.flatten() for p in task.backbone.parameters()]), task.inner_lr.grad
    backbone, lr = grads.pop("bilevel")
    return {name: max(((g - backbone).abs().max() / backbone.abs().max()).item(), ((h - lr) / lr).abs().item())
            for name, (g, h) in grads.items()}


def sampler_rate(store, batch: int, device, seconds: float = 1.0) -> float:
    """Episodes per second that EpisodeSampler draws and gathers, `batch` at a time."""
    sampler = EpisodeSampler(store, WAYS, SHOTS, QUERIES, seed=2)
    for _ in range(3):
        sampler.sample(batch)
    sync(device)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        sampler.sample(batch)
        calls += 1
    sync(device)
    return calls * batch / (time.perf_counter() - start)


def backbone_variants(task, floor, episodes, zero, device, args) -> dict[str, float | str]:
    """Median seconds of the floor with the backbone run each way it could be (or why it could not); each change
    is undone after its measurement."""
    def timed(warmup=args.warmup):
        return median_times({"floor": floor}, episodes, zero, device, args.repeats, warmup)["floor"]

    out = {"float32": timed()}
    task.precision = "bf16"
    out["bf16 autocast"] = timed()
    task.precision = "fp32"
    task.backbone.to(memory_format=torch.channels_last)
    out["channels-last"] = timed()
    task.backbone.to(memory_format=torch.contiguous_format)
    backbone, task.backbone = task.backbone, torch.compile(task.backbone)
    try:
        out["torch.compile"] = timed(args.warmup + 1)  # the first call compiles
    except Exception as error:  # e.g. no C++ compiler for the CPU backend
        out["torch.compile"] = f"failed: {type(error).__name__}: {str(error).splitlines()[0]}"
    task.backbone = backbone
    return out


def header(device, skipped, args) -> list[str]:
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    gpu = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    malloc = " ".join(f"{k}={v}" for k, v in os.environ.items() if k.startswith("MALLOC_")) or "default"
    if args.kept_freed_memory:
        malloc = "freed memory kept for reuse, as in `bilevel train` (engine/allocator.py)"
    versions = [f"python {platform.python_version()}", f"torch {torch.__version__}"] + [
        f"{n} skipped ({skipped[n]})" if n in skipped else f"{n} {importlib.metadata.version(n)}" for n in PEERS]
    return [(f"### One hyper-iteration: conv4-64, {WAYS}-way {SHOTS}-shot, {QUERIES} queries per class, 28×28 grey, "
             f"float32, {device}"), "",
            (f"Machine: {platform.platform()}, {cpu}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch "
             f"thread(s){gpu}; glibc malloc settings: {malloc}."), f"Versions: {', '.join(versions)}.", "",
            f"`python {shlex.join(sys.argv)}`", "",
            (f"Random uint8 images, fixed seeds. Time: median of {args.repeats} rounds after {args.warmup} warm-up "
             "rounds; a round calls each path of a row once, in turn.")]


def goals(ratios: dict, rate: float, consumption: float, device) -> list[str]:
    def line(text, value, ok):
        verdict = "not measured" if value is None else f"{value:.2f}, {'met' if ok(value) else 'NOT met'}"
        return f"- {text}: {verdict}"
    at, t50 = ratios.get((16, 5), {}), [r["bilevel/floor"] for (_, T), r in ratios.items() if T == 50]
    out = ["Goals (ratios of the per-configuration medians):"]
    if device.type == "cuda":
        out += [line("GPU B=16, T=5: naive/bilevel ≥ 5", at.get("naive/bilevel"), lambda v: v >= 5),
                line("GPU B=16, T=5: naive/bilevel-bf16 ≥ 5 (`trainer.precision=bf16`)", at.get("naive/bilevel-bf16"),
                     lambda v: v >= 5)]
    else:
        out += [line("CPU B=16, T=5: bilevel/floor ≤ 1.15", at.get("bilevel/floor"), lambda v: v <= 1.15),
                line("CPU B=16, T=5: naive/bilevel ≥ 1.3", at.get("naive/bilevel"), lambda v: v >= 1.3),
                line("CPU B=16, T=5: naive/bilevel-bf16 ≥ 1.3 (`trainer.precision=bf16`)", at.get("naive/bilevel-bf16"),
                     lambda v: v >= 1.3),
                line("CPU T=50: bilevel/floor ≤ 1.3 (worst B)", max(t50, default=None), lambda v: v <= 1.3)]
    return out + [line(f"sampler {rate:.0f} episodes/s vs consumption {consumption:.1f} episodes/s (bilevel, B=16, "
                       "T=5): ratio ≥ 10", rate / consumption, lambda v: v >= 10)]


def table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)] + ["| " + " | ".join(r) + " |" for r in body]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--B", type=int, nargs="+", default=[4, 16, 32], help="meta-batch sizes")
    parser.add_argument("--T", type=int, nargs="+", default=[1, 5, 10, 50], help="inner horizons")
    parser.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda when available)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per configuration")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before them")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="smoke test: B=4,16, T=1,5, 3 repeats")
    parser.add_argument("--out", help="also append the markdown to this file")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's allocator as it is, instead of the settings `bilevel train` uses")
    args = parser.parse_args()
    # As `bilevel train` does, for every path alike: they run in this one process.
    args.kept_freed_memory = not args.default_malloc and keep_freed_memory()
    if args.quick:
        args.B, args.T, args.repeats = [4, 16], [1, 5], 3
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    wall = time.perf_counter()
    peers, skipped = {}, {}
    for name in PEERS:
        try:
            peers[name] = importlib.import_module(name)
        except Exception as error:  # an unmaintained peer can break on a new torch in many ways
            skipped[name] = f"{type(error).__name__}: {error}"
    store = torch.randint(0, 256, STORE, dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).to(device)
    diffs = check_gradients(store, peers, device)

    torch.manual_seed(0)
    task = HyperRepresentation(Conv4(channels=64), WAYS, T=1).to(device)
    bf16 = native_bf16(device)
    (fns, modules), names = paths(task, peers), ["floor", "bilevel", *["bilevel-bf16"] * bf16, "naive", *peers]
    ours = [n for n in names if n.startswith("bilevel")]

    def zero():
        for module in modules:
            module.zero_grad(set_to_none=True)

    rows = {}
    for B in args.B:
        episodes = EpisodeSampler(store, WAYS, SHOTS, QUERIES, seed=B).sample(B)
        for T in args.T:
            task.T = T
            seconds = median_times({n: fns[n] for n in names}, episodes, zero, device, args.repeats, args.warmup)
            rows[B, T] = {n: (seconds[n], peak_bytes(fns[n], episodes, zero, device)) for n in names}
            print(f"B={B} T={T}: " + ", ".join(f"{n} {t * 1e3:.0f} ms" for n, (t, _) in rows[B, T].items()),
                  file=sys.stderr, flush=True)
    task.T, episodes = 5, EpisodeSampler(store, WAYS, SHOTS, QUERIES, seed=16).sample(16)
    seconds = rows[16, 5]["bilevel"][0] if (16, 5) in rows else median_times(
        {"bilevel": fns["bilevel"]}, episodes, zero, device, args.repeats, args.warmup)["bilevel"]
    consumption, rate = 16 / seconds, sampler_rate(store, 16, device)
    variants = backbone_variants(task, fns["floor"], episodes, zero, device, args)

    ratios = {key: {f"{n}/floor": r[n][0] / r["floor"][0] for n in ours}
              | {f"{n}/bilevel": r[n][0] / r["bilevel"][0] for n in names[len(ours) + 1:]}
              | ({"naive/bilevel-bf16": r["naive"][0] / r["bilevel-bf16"][0]} if bf16 else {})
              for key, r in rows.items()}
    keys = list(ratios[next(iter(ratios))])
    times = [[str(B), str(T), *(f"{r[n][0] * 1e3:.1f}" for n in names), *(f"{ratios[B, T][k]:.2f}" for k in keys)]
             for (B, T), r in rows.items()]
    times.append(["median", "", *[""] * len(names),
                  *(f"{statistics.median(r[k] for r in ratios.values()):.2f}" for k in keys)])
    memory = [[str(B), str(T), *(f"{r[n][1] / MiB:.1f}" for n in names)] for (B, T), r in rows.items()]
    what = "peak allocated on the device" if device.type == "cuda" else "peak of autograd's saved tensors"
    lines = [*header(device, skipped, args), ("Gradient check (float64) before timing, max relative difference to "
             "bilevel: ") + ", ".join(f"{n} {d:.1e}" for n, d in diffs.items()) + ".", "",
             *([] if bf16 else [f"bilevel-bf16 not timed: this {device.type} has no native bfloat16 (AVX512-BF16, "
                                "AMX or a bf16 GPU); the floor's bf16 line in the last table shows what emulation "
                                "costs.", ""]),
             *table(["B", "T", *(f"{n} (ms)" for n in names), *keys], times), "",
             f"Memory (MiB, {what}):", "", *table(["B", "T", *names], memory), "",
             "The floor (B=16) with the backbone run each way it could be:", "",
             *table(["backbone", "floor (ms)", "float32/this"],
                    [[n, f"{v * 1e3:.1f}", f"{variants['float32'] / v:.2f}"] if isinstance(v, float) else [n, v, ""]
                     for n, v in variants.items()]), "",
             *goals(ratios, rate, consumption, device), "", f"Wall time: {time.perf_counter() - wall:.0f} s."]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        append_section(args.out, text)


if __name__ == "__main__":
    main()
