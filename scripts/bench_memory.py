"""Peak memory and time of one hypergradient call: reverse vs checkpointed (segment ⌈√T⌉) vs forward vs reversible.

Problem: ridge regression, T steps of heavy-ball momentum (μ = 0.9, the dynamics reversible learning undoes) on
w ∈ R^dim (float32) from a random w0, with λ = (weight decay c, learning rate η) as hyperparameters and
E = ½‖X_v w_T − y_v‖² as the outer loss. Each (method, T) runs in a fresh subprocess (`--one METHOD T`) that builds
the problem, warms up on T = 2 and measures during the call:
  - peak memory: on CPU the rise of the peak RSS (ru_maxrss, reset first through /proc/self/clear_refs)
    over the RSS just before the call. The subprocess runs with MALLOC_MMAP_THRESHOLD_=65536, so that
    glibc maps every tensor on its own and unmaps it when freed: its heap would otherwise keep freed
    memory and inflate the peak ~2.5x over the live bytes. On CUDA: max_memory_allocated − memory_allocated;
  - saved-tensor peak: peak bytes of the distinct storages held by autograd's saved tensors and by the
    states `step` returns (checkpoints included), the problem's data excluded. Reversible learning's state and
    buffer are integers outside autograd: for it this counts one step's graph only, and the peak memory is the
    measure that holds them;
  - wall time, in a second subprocess with glibc's default settings: the mapping above costs a page fault per page
    of every fresh tensor, which would charge the methods that allocate many small temporaries (reversible
    learning's integer arithmetic: 3.5× its own time) for the measurement;
  - the hypergradient, compared with reverse's (max relative difference over λ).

Run:  python scripts/bench_memory.py [--T 100 1000] [--dim 100000] [--device cpu|cuda|auto] [--threads 1]
                                     [--out BENCHMARKS.md]
"""

import argparse
import dataclasses
import gc
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from bilevel_cli.core import hypergradient, momentum
from bilevel_cli.core.saved_bytes import SavedBytes

METHODS = ("reverse", "checkpointed", "forward", "reversible")
HEADING = "### Hypergradient memory:"
MiB = 2 ** 20


def problem(dim: int, device: str, n: int = 16):
    """(step, outer_loss, w0, hparams, data tensors); X has entries N(0, 1/dim), so ‖XᵀX‖ ≈ 1."""
    gen = torch.Generator().manual_seed(0)
    X, Xv = (torch.randn(n, dim, generator=gen) / dim ** 0.5 for _ in range(2))
    w_true, w0 = torch.randn(dim, generator=gen), torch.randn(dim, generator=gen)
    y, yv = X @ w_true + 0.1 * torch.randn(n, generator=gen), Xv @ w_true
    data = X, Xv, y, yv, w0 = [t.to(device) for t in (X, Xv, y, yv, w0)]
    inner = momentum(lambda p, h: 0.5 * (X @ p["w"] - y).square().sum(), lr="lr", momentum=0.9, weight_decay="c")
    hparams = {k: torch.tensor(v, device=device, requires_grad=True) for k, v in (("c", 1e-2), ("lr", 0.05))}
    return inner.step, lambda w, h: 0.5 * (Xv @ w["w"] - yv).square().sum(), inner.init({"w": w0}), hparams, data


def measure_one(method: str, T: int, args) -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    step, outer, w0, hparams, data = problem(args.dim, args.device)
    hypergradient(step, outer, w0, hparams, 2, method=method)  # warm-up: allocator, threads, kernels
    meter = SavedBytes(t.untyped_storage().data_ptr() for t in data)
    # The step object keeps its parts (reversible learning reads them); only the map is metered.
    metered = dataclasses.replace(step, update=lambda w, h, t: {k: meter.track(v) for k, v in step(w, h, t).items()})
    gc.collect()
    before = start_peak_memory(args.device)
    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(meter.track, lambda x: x):
        _, grads = hypergradient(metered, outer, w0, hparams, T, method=method)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"peak": peak_memory_since(before, args.device), "saved": meter.peak, "time": seconds,
            "grads": {k: g.item() for k, g in grads.items()}}


def start_peak_memory(device: str) -> int:
    """Resets the peak and returns the memory in use: the RSS on CPU, the allocated bytes on CUDA."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    with open("/proc/self/clear_refs", "w") as f:  # peak RSS := current RSS (Linux >= 4.0)
        f.write("5")
    with open("/proc/self/status") as f:
        return 1024 * next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def peak_memory_since(before: int, device: str) -> int:
    """The rise of the peak over `before`, from `start_peak_memory`."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() - before
    return 1024 * resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before  # KiB on Linux


def run_one(method: str, T: int, args) -> dict:
    """The memory run with glibc mapping every tensor on its own, and the time of a run with its defaults."""
    cmd = [sys.executable, os.path.abspath(__file__), "--one", method, str(T), "--dim", str(args.dim),
           "--device", args.device, "--threads", str(args.threads)]
    mapped, default = ({**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"},
                       {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"})
    return {**run_json(cmd, mapped), "time": run_json(cmd, default)["time"]}


def run_json(cmd: list[str], env: dict) -> dict:
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode:
        sys.exit(f"{shlex.join(cmd)} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, nargs="+", default=[100, 1000], help="horizons")
    parser.add_argument("--dim", type=int, default=100_000, help="number of inner parameters")
    args = parse_arguments(parser, "T")
    if args.one:
        print(json.dumps(measure_one(args.one[0], int(args.one[1]), args)))
        return

    memory = "peak alloc (MiB, CUDA)" if args.device.startswith("cuda") else "peak memory (MiB, RSS delta)"
    lines = [f"### Hypergradient memory: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
             f"{args.threads} thread(s), device {args.device}, dim {args.dim}, float32, heavy-ball momentum 0.9",
             "", f"`python {shlex.join(sys.argv)}`", "",
             f"| T | method | {memory} | saved-tensor peak (MiB) | time (s) | memory ratio vs reverse "
             "| max rel. diff vs reverse |", "|---:|---|---:|---:|---:|---:|---:|"]
    checks = []
    for T in args.T:
        rows = {m: run_one(m, T, args) for m in METHODS}
        ref = rows["reverse"]
        for m, r in rows.items():
            diff = max(abs(r["grads"][k] - g) / max(abs(g), 1e-30) for k, g in ref["grads"].items())
            lines.append(f"| {T} | {m} | {r['peak'] / MiB:.1f} | {r['saved'] / MiB:.1f} | {r['time']:.2f} "
                         f"| {r['peak'] / ref['peak']:.3f} | {diff:.1e} |")
        ratio, saved = (rows["checkpointed"][k] / ref[k] for k in ("peak", "saved"))
        checks.append(f"T={T}: checkpointed / reverse memory = {ratio:.3f} (saved tensors {saved:.3f}), "
                      f"≤ 1/5: {'yes' if max(ratio, saved) <= 0.2 else 'no'}")
        reversible = rows["reversible"]["peak"]
        checks.append(f"T={T}: reversible / reverse memory = {reversible / ref['peak']:.3f}, reversible / checkpointed "
                      f"= {reversible / rows['checkpointed']['peak']:.3f}, time reversible / reverse = "
                      f"{rows['reversible']['time'] / ref['time']:.2f}")
    text = "\n".join(lines + [""] + checks) + "\n"
    print(text, end="")
    if args.out:
        write_section(args.out, HEADING, text)


def parse_arguments(parser: argparse.ArgumentParser, setting: str) -> argparse.Namespace:
    """Adds the options this script and bench_evograd.py share, parses, and resolves `--device auto`. `--one
    METHOD <setting>` is how the parent asks a fresh child process for one measurement."""
    parser.add_argument("--device", default="cpu", help="cpu, cuda, or auto (cuda when available)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", help="also write the markdown into this file (replacing this script's section)")
    parser.add_argument("--one", nargs=2, metavar=("METHOD", setting), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def write_section(path: str, heading: str, text: str) -> None:
    """Replaces the section of the markdown file at `path` that starts with `heading` (up to the next "### "
    heading) by `text`, or appends `text` when there is none: a rerun updates its figures in place."""
    file = Path(path)
    document = file.read_text() if file.exists() else ""
    start = document.find(heading)
    if start < 0:
        append_section(path, text)
        return
    end = document.find("\n### ", start + len(heading))
    file.write_text(document[:start] + text + (document[end:] if end >= 0 else ""))


def append_section(path: str, text: str) -> None:
    """Appends `text` to the markdown file at `path` (made when missing), one blank line after what is there."""
    file = Path(path)
    document = file.read_text().rstrip("\n") if file.exists() else ""
    file.write_text(document + "\n\n" + text if document else text)


if __name__ == "__main__":
    main()
