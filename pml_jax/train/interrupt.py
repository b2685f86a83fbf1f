"""Turn SIGINT/SIGTERM into a flag the training loop checks between steps (then it saves and stops)."""

from __future__ import annotations

import signal
import threading


class StopRequested(Exception):
    """Raised by the loop after it has saved a checkpoint in answer to a signal."""


class SignalFlag:
    """While active, SIGINT and SIGTERM set `.raised` instead of killing the process."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.raised: int | None = None
        self._previous = {}

    def __enter__(self) -> "SignalFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame):
        if self.raised is not None:  # a second signal: give up waiting for the save
            raise KeyboardInterrupt
        self.raised = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        return False
