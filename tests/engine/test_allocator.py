"""keep_freed_memory: a freed tensor's pages stay with the process for the next hyper-iteration to reuse."""

import subprocess
import sys

import pytest

# Allocates, touches and frees 256 MiB, then prints how much of it the process still holds (resident MiB).
PROBE = """
import sys, torch
from bilevel_cli.engine.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
before = resident()
x = torch.ones(64 * 2**20)
del x
print(kept, resident() - before)
"""

# The same with one block of argv[2] MiB from malloc itself: nothing else is allocated between its malloc and its
# free, so it is the top of the heap when freed, the memory glibc trims.
TOP_OF_HEAP_PROBE = """
import ctypes, sys
from bilevel_cli.engine.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
libc = ctypes.CDLL("libc.so.6")
libc.malloc.argtypes, libc.malloc.restype, libc.free.argtypes = [ctypes.c_size_t], ctypes.c_void_p, [ctypes.c_void_p]
def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
before = resident()
size = int(sys.argv[2]) * 2**20
block = libc.malloc(size)
ctypes.memset(block, 1, size)
libc.free(block)
print(kept, resident() - before)
"""


def _held_after_free(mode: str, probe: str = PROBE, *args: str) -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", probe, mode, *args], capture_output=True, text=True,
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
    kept, held = _held_after_free("keep", TOP_OF_HEAP_PROBE, "2560")
    assert kept == "True" and held > 2500
