"""Ctrl-C and SIGTERM (a cluster's preemption notice) during training: the hyper-iteration in flight finishes, a
checkpoint is written, and the run exits; `resume=true` continues it. A second Ctrl-C stops at once. A job of a
sweep on this machine hears of them from the sweep's stop file instead (see engine/sweep.py)."""

import signal
import threading

from bilevel_cli.engine.sweep import stop_file, stop_signal


class StopRequests:
    """Within `with StopRequests() as stop:`, `stop.requested()` is the number of the first stop signal received,
    or None."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signal: int | None = None
        self._previous = {}
        self._sweep_stop = stop_file()

    def requested(self) -> int | None:
        if self.signal is None:
            self.signal = stop_signal(self._sweep_stop)
        return self.signal

    def __enter__(self) -> "StopRequests":
        # Python delivers signals to the main thread only. A sweep's jobs read the stop file instead, which the
        # sweep's launching process writes when it hears one.
        if threading.current_thread() is threading.main_thread() and self._sweep_stop is None:
            self._previous = {s: signal.signal(s, self._receive) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _receive(self, signum: int, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum
