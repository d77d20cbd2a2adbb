"""keep_freed_memory: a freed tensor's pages stay with the process for the next hyper-iteration to reuse."""

import subprocess
import sys

import pytest

# Allocates, touches and frees argv[3] MiB, then prints how much of it the process still holds (resident MiB). The
# memory is a tensor, or with argv[2] == "malloc" one block from malloc itself: nothing else is allocated between
# that block's malloc and its free, so it is the top of the heap when freed, the memory glibc trims.
PROBE = """
import ctypes, sys, torch
from bilevel_cli.engine.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
before = resident()
size = int(sys.argv[3]) * 2**20
if sys.argv[2] == "malloc":
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.argtypes, libc.malloc.restype = [ctypes.c_size_t], ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
else:
    x = torch.ones(size // 4)
    del x
print(kept, resident() - before)
"""


def _held_after_free(mode: str, source: str = "tensor", mib: int = 256) -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode, source, str(mib)], capture_output=True, text=True,
                         check=True).stdout
    kept, held = out.split()
    return kept, float(held)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt, /proc")
def test_freed_memory_stays_with_the_process_for_reuse():
    kept, held = _held_after_free("keep")
    assert kept == "True" and held > 200  # the 256 MiB stay mapped, ready for the next allocation
    _, default_held = _held_after_free("default")
    assert default_held < 50  # glibc's default: a large block is unmapped as soon as it is freed


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt, /proc")
def test_freed_memory_stays_with_the_process_beyond_2_gib():
    # An evaluation pass can free gigabytes at once. With 2 GiB as the trim threshold, the largest positive int
    # mallopt takes, glibc handed such memory back and the next pass faulted every page of it in again.
    kept, held = _held_after_free("keep", "malloc", mib=2560)
    assert kept == "True" and held > 2500
