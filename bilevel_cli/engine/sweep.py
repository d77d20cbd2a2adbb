"""A sweep on this machine (the basic launcher, or `hydra/launcher=parallel`: joblib's worker processes) stops on
Ctrl-C or SIGTERM without losing a job, and one job's error does not end the others.

Left to themselves, a Ctrl-C or a SIGTERM (`docker stop`, a scheduler's preemption) to the launching process of a
parallel sweep ends it with its workers SIGKILLed mid-step, and a Ctrl-C at the terminal kills any idle worker,
which makes joblib SIGKILL the rest; a job's error (sys.exit in a worker) does the same. So, for the sweep's
duration, the launching process blocks SIGINT and SIGTERM, which its workers inherit, and hears them itself: the
first writes the signal's name to a stop file, which the training loop of every job reads at each step (it finishes
the step, saves `last.pt` and says how to continue) and which a job about to start reads too (it does not start). A
second Ctrl-C stops at once. The jobs return, stopped or failed; the launching process then prints the command that
continues the sweep and exits non-zero. The basic launcher's jobs, in the launching process, go the same way.
"""

import _thread
import os
import shutil
import signal
import sys
import tempfile
import threading
from multiprocessing import resource_tracker
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from bilevel_cli.engine.rerun import continue_sweep_command

CONTROL = "BILEVEL_SWEEP_CONTROL"  # the directory of the stop file and the failed jobs' marks; set for the workers
SIGNALS = {signal.SIGINT, signal.SIGTERM}
LOCAL_LAUNCHERS = ("hydra._internal.core_plugins.basic_launcher.", "hydra_plugins.hydra_joblib_launcher.")


class SweepControl(Callback):
    """Hydra calls `on_multirun_start` in the launching process before any job starts (conf/train.yaml). Launchers
    that run the jobs elsewhere (SLURM) are left alone: there the scheduler signals each job."""

    def __init__(self):
        self._stop_file: Path | None = None
        self._previous = {}  # the handlers to put back when the sweep ends
        self._ended = threading.Event()

    def __reduce__(self):  # joblib sends the callbacks to the workers: a fresh one, the signals' state staying here
        return SweepControl, ()

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        if not str(config.hydra.launcher.get("_target_", "")).startswith(LOCAL_LAUNCHERS):
            return
        control = Path(tempfile.mkdtemp(prefix="bilevel-sweep-"))
        (control / "failed").mkdir()
        self._stop_file = control / "stop"
        (control / "command").write_text(continue_sweep_command(config.hydra))
        os.environ[CONTROL] = str(control)  # before joblib starts its workers, which inherit it
        # A signal lands on any thread that does not block it, e.g. one of torch's, and Python then runs the handler
        # in the main thread; on none, the listening thread takes it.
        self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        # Started later, as joblib starts its workers, multiprocessing's resource tracker would unblock them.
        resource_tracker.ensure_running()
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)  # the main thread's mask, which workers inherit
        threading.Thread(target=self._listen, name="bilevel-sweep-signals", daemon=True).start()

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if self._previous:  # as it was, for a caller that goes on in this process (the launching one exits)
            self._ended.set()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
            for s, handler in self._previous.items():
                signal.signal(s, handler)

    def _handle(self, signum: int, frame) -> None:
        if self._hear(signum):
            raise KeyboardInterrupt

    def _listen(self) -> None:
        while not self._ended.is_set():
            signum = signal.sigtimedwait(SIGNALS, 0.5)
            if signum and self._hear(signum.si_signo):
                _thread.interrupt_main()  # a KeyboardInterrupt in the main thread, where joblib waits
                return

    def _hear(self, signum: int) -> bool:
        """Stops the sweep; whether to stop at once (a second Ctrl-C), in which case joblib kills the workers."""
        if self._stop_file.exists():
            return signum == signal.SIGINT
        written = self._stop_file.with_suffix(".tmp")
        written.write_text(signal.Signals(signum).name)
        written.replace(self._stop_file)  # whole or absent: the jobs read it while it is written
        sys.stderr.write(f"bilevel: {signal.Signals(signum).name}: stopping the sweep; each running job finishes its "
                         "hyper-iteration and saves a checkpoint, the others do not start (Ctrl-C again stops at "
                         "once, losing their steps since the last validation)\n")
        return False


def in_local_sweep() -> bool:
    """Whether this process runs a job of a sweep under SweepControl (or launches it)."""
    return CONTROL in os.environ


def stop_file() -> Path | None:
    """The file whose presence means: stop. None outside a sweep under SweepControl."""
    return Path(os.environ[CONTROL]) / "stop" if in_local_sweep() else None


def stop_signal(path: Path | None) -> int | None:
    """The signal that stopped the sweep, read from its stop file, or None while it runs on."""
    if path is None or not path.exists():
        return None
    return signal.Signals[path.read_text()].value


def mark_failed(job: int) -> None:
    (Path(os.environ[CONTROL]) / "failed" / str(job)).touch()


def finish() -> tuple[str, int] | None:
    """In the launching process, once the sweep has returned: what to say and the exit code, or None when every
    job ran to its end. Removes the control directory."""
    if not in_local_sweep():
        return None
    control = Path(os.environ.pop(CONTROL))
    failed = sorted(int(p.name) for p in (control / "failed").iterdir())
    stopped = stop_signal(control / "stop")
    command = (control / "command").read_text()
    shutil.rmtree(control, ignore_errors=True)
    if stopped:
        return (f"bilevel: the sweep stopped on {signal.Signals(stopped).name}; continue it (the finished jobs kept, "
                f"the stopped ones from their checkpoints, the others started) with: {command}", 128 + stopped)
    if failed:
        jobs = ", ".join(f"#{job}" for job in failed)
        said = "its error is" if len(failed) == 1 else "their errors are"
        return f"bilevel: sweep job {jobs} failed ({said} above); the other jobs ran to their end", 2
    return None
