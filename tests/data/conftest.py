"""The real data sets, unpacked once per session from shared/data where this checkout has a copy."""

import subprocess
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="session")
def unpack_shared(tmp_path_factory):
    """unpack_shared(name) -> the root its layout is unpacked under; skips the test when there is no copy."""
    roots = {}

    def unpack(name: str) -> Path:
        if not (SHARED_DATA / "unpack.sh").is_file():
            pytest.skip(f"no real {name} copy at {SHARED_DATA}")
        if name not in roots:
            roots[name] = tmp_path_factory.mktemp(f"real-{name}")
            subprocess.run(["bash", str(SHARED_DATA / "unpack.sh"), str(roots[name]), name], check=True,
                           capture_output=True)
        return roots[name]
    return unpack
