"""One `bilevel train` writes a run directory at a time."""

import os
import socket
from contextlib import contextmanager
from pathlib import Path

from bilevel_cli.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no flock, and no lock
    fcntl = None


@contextmanager
def claim_run_dir(run_dir: Path):
    """Holds `run_dir/.lock` while the body runs. A second run started in the same directory (the same
    hydra.run.dir twice, a requeued job whose first attempt is still alive) would interleave the two runs'
    checkpoints and metrics, or continue a checkpoint that is still being written; it stops with one line instead.
    The lock is the kernel's (flock): a killed run leaves none behind, and the next one in its directory continues."""
    if fcntl is None:
        yield
        return
    with open(run_dir / ".lock", "a+") as lock:  # a+: the holder's line stays readable until the lock is ours
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise UserError(f"{run_dir} is in use by another bilevel train ({holder}); wait for it to end, or give "
                            "this run another directory with hydra.run.dir=...") from None
        lock.truncate(0)
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}")
        lock.flush()
        yield
