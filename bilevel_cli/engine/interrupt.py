"""Ctrl-C and SIGTERM (a cluster's preemption notice) during training: the hyper-iteration in flight finishes, a
checkpoint is written, and the run exits; `resume=true` continues it. A second Ctrl-C stops at once."""

import signal
import threading


class StopRequests:
    """Within `with StopRequests() as stop:`, `stop.signal` is the number of the first stop signal received."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signal: int | None = None
        self._previous = {}

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():  # Python delivers signals to the main thread only
            self._previous = {s: signal.signal(s, self._receive) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _receive(self, signum: int, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum
