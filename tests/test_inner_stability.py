"""scripts/inner_stability.py: its curvature is the Hessian's, and it measures a checkpoint as a user runs it."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "inner_stability.py"
TINY = ["backbone.channels=8", "task.meta_batch=2", "trainer.steps=2", "trainer.log_every=1", "trainer.val_every=2",
        "trainer.val_episodes=4", "trainer.test_episodes=4", "trainer.eval_batch=4", "device=cpu"]


def _script():
    spec = importlib.util.spec_from_file_location("inner_stability", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_support_curvature_is_the_largest_eigenvalue_of_the_heads_hessian_at_zero():
    torch.manual_seed(0)
    ways, shots, dim = 4, 2, 6
    support = torch.rand(3, ways * shots, dim, dtype=torch.float64) * 5  # non-negative, as after a ReLU
    labels = torch.arange(ways).repeat_interleave(shots)
    expected = []
    for features in support:
        hessian = torch.autograd.functional.hessian(
            lambda W: F.cross_entropy(features @ W, labels), torch.zeros(dim, ways, dtype=torch.float64))
        expected.append(torch.linalg.eigvalsh(hessian.reshape(dim * ways, dim * ways))[-1])
    torch.testing.assert_close(_script().support_curvature(support, ways), torch.stack(expected))


def _measure(bilevel, glyph_root, tmp_path, *overrides):
    """Trains a tiny run with `overrides` and runs the script on its best.pt; returns (stdout, env)."""
    bilevel("train", *TINY, *overrides)
    (run,) = (tmp_path / "outputs" / "train").iterdir()
    env = {**os.environ, "BILEVEL_DATA_DIR": str(glyph_root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT), str(run / "best.pt"), "--episodes", "6"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout, env


def test_it_measures_a_trained_checkpoint_and_names_a_missing_one(bilevel, glyph_root, tmp_path):
    out, env = _measure(bilevel, glyph_root, tmp_path)
    found = re.search(r"step 2, inner rate ([\d.]+), rate·λmax median ([\d.]+) max ([\d.]+), .* \(6 training episodes\)",
                      out)
    assert found, out
    rate, median, largest = map(float, found.groups())
    assert rate == 0.03 and 0 < median <= largest

    missing = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "none.pt")], env=env,
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1
    assert "none.pt" in missing.stderr and "Traceback" not in missing.stderr


def test_under_a_curvature_scaled_rate_rate_times_curvature_stays_below_the_configured_rate(bilevel, glyph_root,
                                                                                             tmp_path):
    out, _ = _measure(bilevel, glyph_root, tmp_path, "task.curvature_scaled_rate=true", "inner.lr=1.5")
    found = re.search(r"inner rate 1.5/κ, rate·λmax median ([\d.]+) max ([\d.]+)", out)
    assert found, out
    median, largest = map(float, found.groups())
    assert 0.1 < median <= largest <= 1.5
