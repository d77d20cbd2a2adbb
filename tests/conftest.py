import os
import subprocess
import sys

import pytest

from bilevel_cli.data.glyphs import load_glyphs

@pytest.fixture(scope="session")
def glyph_root(tmp_path_factory):
    """One rendered glyph cache for the whole session; runs point BILEVEL_DATA_DIR at it."""
    root = tmp_path_factory.mktemp("data")
    load_glyphs(root, seed=0)
    return root


@pytest.fixture
def bilevel(glyph_root, tmp_path):
    """Runs the `bilevel` command in a fresh directory, as a user would; returns the CompletedProcess."""
    def run(*args, check=True):
        env = {**os.environ, "BILEVEL_DATA_DIR": str(glyph_root), "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}
        done = subprocess.run([sys.executable, "-m", "bilevel_cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        if check and done.returncode != 0:
            raise AssertionError(f"bilevel {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}")
        return done
    return run
