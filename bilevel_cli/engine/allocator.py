"""Host memory allocation for the training loop."""

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters, from glibc's malloc.h


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the system.

    A hyper-iteration allocates and frees the same large activation tensors every time. By default glibc
    serves each from its own mmap and unmaps it when freed, so the next hyper-iteration faults every page
    in again: on a 2-core CPU that was more than half the time of a conv4 meta-batch of 16 episodes at T=5
    (520 ms → 219 ms: `scripts/bench_hyperiteration.py --quick` with and without `--default-malloc`). The
    process then holds on to its peak memory, which a training run reaches every hyper-iteration anyway.
    A trim threshold of -1 disables trimming; the largest positive one, 2 GiB, still handed back the memory of
    an evaluation pass that freed more than that at once (Omniglot 20-way 5-shot evaluated twice as slowly).
    Returns whether glibc took the settings (other C libraries: nothing is changed)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, -1))
