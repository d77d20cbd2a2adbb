"""The benchmark scripts' helpers, without a benchmark run: how paths are timed side by side, so that their ratios
are fair on a shared machine, and how sections land in BENCHMARKS.md."""

import importlib
import time
from pathlib import Path

import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def script(name: str, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    return importlib.import_module(name)


def test_a_round_calls_every_path_in_turn_and_warm_up_rounds_are_not_timed(monkeypatch):
    bench = script("bench_hyperiteration", monkeypatch)
    calls, zeroed = [], []

    def path(name):
        def call(episodes):
            if calls.count(name) < 2:  # the warm-up rounds are the slow ones, as a first call that allocates
                time.sleep(0.05)
            calls.append(name)
        return call

    names = ["floor", "bilevel", "naive"]
    seconds = bench.median_times({n: path(n) for n in names}, None, lambda: zeroed.append(None), torch.device("cpu"),
                                 repeats=3, warmup=2)
    assert calls == names * 5 and len(zeroed) == 15
    assert list(seconds) == names and all(0 <= s < 0.04 for s in seconds.values())


def test_sections_are_appended_one_blank_line_apart_and_rewritten_in_place(tmp_path, monkeypatch):
    bench = script("bench_memory", monkeypatch)
    out = tmp_path / "BENCHMARKS.md"
    bench.append_section(str(out), "### A\n\n| a |\n")  # a section ending in one newline, as the scripts' do
    bench.write_section(str(out), "### B", "### B\n\nold\n")
    bench.append_section(str(out), "### C\n\nc\n")
    bench.write_section(str(out), "### B", "### B\n\nnew\n")
    assert out.read_text() == "### A\n\n| a |\n\n### B\n\nnew\n\n### C\n\nc\n"
