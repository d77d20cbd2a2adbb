import os
import subprocess
import sys

import pytest
import torch

from bilevel_cli.data.glyphs import load_glyphs


@pytest.fixture(autouse=True)
def one_thread():
    """The tests' tensors are small: one intra-op thread is as fast as two, and it does not stall when other
    processes hold the cores (a thread pool then waits for a busy core at every product; a digits run took 75 s
    with two threads on a busy 2-core machine, 4 s with one). The `bilevel` runs below get the same."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def glyph_root(tmp_path_factory):
    """One rendered glyph cache for the whole session; runs point BILEVEL_DATA_DIR at it."""
    root = tmp_path_factory.mktemp("data")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as one_thread does, which a session fixture sets up before
    load_glyphs(root, seed=0)
    torch.set_num_threads(threads)
    return root


@pytest.fixture
def python_env(glyph_root):
    """The environment of the `python` processes the tests start: the session's glyphs as the data, one thread."""
    return {**os.environ, "BILEVEL_DATA_DIR": str(glyph_root), "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0",
            "OMP_NUM_THREADS": "1"}


@pytest.fixture
def run_python(python_env, tmp_path):
    """Runs `python <args>` in a fresh directory, with the session's glyphs as the data; returns the CompletedProcess."""
    def run(*args):
        return subprocess.run([sys.executable, *args], cwd=tmp_path, env=python_env, capture_output=True, text=True,
                              timeout=300)
    return run


@pytest.fixture
def bilevel(run_python):
    """Runs the `bilevel` command in a fresh directory, as a user would; returns the CompletedProcess."""
    def run(*args, check=True):
        done = run_python("-m", "bilevel_cli", *args)
        if check and done.returncode != 0:
            raise AssertionError(f"bilevel {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}")
        return done
    return run
