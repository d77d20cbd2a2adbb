"""The benchmark scripts as a user runs them, at the smallest sizes: every path runs, gives the gradient of the
others, and lands in the markdown with its ratios."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bilevel_cli.engine.config import native_bf16

pytestmark = pytest.mark.slow

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def test_one_hyper_iteration_benchmark_times_every_path_and_every_backbone_variant(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    done = subprocess.run([sys.executable, str(SCRIPTS / "bench_hyperiteration.py"), "--B", "2", "--T", "1",
                           "--repeats", "1", "--warmup", "0", "--threads", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = out.read_text().splitlines()
    check = next(line for line in lines if line.startswith("Gradient check"))
    differences = dict(part.split() for part in check.split(": ")[1].rstrip(".").split(", "))
    assert "naive" in differences and all(float(d) < 1e-10 for d in differences.values())
    header = next(line for line in lines if line.startswith("| B | T |")).split(" | ")
    if native_bf16(torch.device("cpu")):
        assert header[2:5] == ["floor (ms)", "bilevel (ms)", "bilevel-bf16 (ms)"]
        assert "naive/bilevel-bf16 |" in header[-1]
    else:  # emulated bf16 is not timed on the grid, and the output says why
        assert header[2:5] == ["floor (ms)", "bilevel (ms)", "naive (ms)"] and "bilevel-bf16" not in "".join(header)
        assert any(line.startswith("bilevel-bf16 not timed: this cpu has no native bfloat16") for line in lines)
    row = next(line for line in lines if line.startswith("| 2 | 1 |"))
    assert all(float(cell) > 0 for cell in row.strip("| ").split(" | ")[2:])
    variants = [line.split(" | ")[0] for line in lines if line.startswith("| ") and "(ms)" not in line][-4:]
    assert variants == ["| float32", "| bf16 autocast", "| channels-last", "| torch.compile"]
    assert any(line.startswith("- CPU B=16, T=5: naive/bilevel-bf16 ≥ 1.3") for line in lines)


def _table(text: str, header_start: str) -> list[list[str]]:
    """The body rows (as lists of cells) of the markdown table whose header line starts with `header_start`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start)) + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("| "):
            break
        rows.append(line.strip("| ").split(" | "))
    return rows


def test_memory_and_evograd_benchmarks_agree_with_reverse_and_rewrite_only_their_own_sections(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\n### Hypergradient memory: stale\n\nold figures\n\n### Another section\n\nkept\n")
    for script, arguments in [("bench_memory.py", ["--T", "3", "--dim", "1000"]),
                              ("bench_evograd.py", ["--steps", "2", "--copies", "2"])]:
        done = subprocess.run([sys.executable, str(SCRIPTS / script), *arguments, "--out", str(out)],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert "old figures" not in text and text.count("### Hypergradient memory:") == 1
    assert "### Another section\n\nkept\n" in text and text.index("kept") < text.index("### EvoGrad")
    memory = _table(text, "| T | method |")
    assert [row[:2] for row in memory] == [["3", "reverse"], ["3", "checkpointed"], ["3", "forward"],
                                           ["3", "reversible"]]
    assert all(float(row[-1]) < 1e-4 for row in memory)  # max rel. diff of the hypergradient vs reverse
    evograd = _table(text, "| method | test acc (%) |")
    assert [row[0] for row in evograd] == ["reverse", "evograd K=2"]
    assert all(50 < float(row[1]) <= 100 for row in evograd)  # test accuracy %
