"""Turn SIGINT/SIGTERM into a stop the training loop takes between steps (it saves, then stops).

In a multi-process run a signal reaches one process; `StopSignal` makes every process agree on it,
so all stop after the same step and save the same checkpoint together.
"""

from __future__ import annotations

import itertools
import signal
import threading

import jax
from jax._src import distributed  # the coordination service's client (orbax reads it too)


class StopRequested(Exception):
    """Raised by the loop after it has saved a checkpoint in answer to a signal."""


class StopSignal:
    """While active, SIGINT and SIGTERM on any process stop every process at the same step.

    `raised` is this process's own signal. Call `should_stop()` once after dispatching each
    train step and `should_stop(now=True)` at the end of an epoch, on every process in the same
    order: both answer the same on all processes, and `agreed` then holds the signal they stop on.
    A single process reads its own flag. With several, the processes agree through jax's
    coordination service (host to host, off the devices): each per-step call posts this
    process's flag and answers with the flags every process posted at the previous call, which
    are normally there already, so the device pipeline never stalls; `now=True` waits for this
    call's flags. A second signal on a process raises KeyboardInterrupt there, without waiting
    for the save.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    _instances = itertools.count()  # every process makes its StopSignals in the same order

    def __init__(self):
        self.raised: int | None = None
        self.agreed: int | None = None
        self._previous = {}
        self._board = _FlagBoard(next(self._instances)) if jax.process_count() > 1 else None

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame):
        if self.raised is not None:  # a second signal: give up waiting for the save
            raise KeyboardInterrupt
        self.raised = signum

    def should_stop(self, now: bool = False) -> bool:
        """Whether every process stops after this step (see the class docstring)."""
        self.agreed = self.raised if self._board is None else self._board.post(self.raised or 0, now)
        return self.agreed is not None

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        return False


class _FlagBoard:
    """Per-call flags of every process in the coordination service's key-value store."""

    TIMEOUT_MS = 30 * 60 * 1000  # how long a call may wait for the slowest process's flag

    def __init__(self, instance: int):
        self._client = distributed.global_state.client
        self._dir = f"pml_jax/stop/{instance}"
        self._me, self._processes = jax.process_index(), jax.process_count()
        self._calls = 0

    def post(self, flag: int, now: bool) -> int | None:
        """Post this call's flag; the max signal over every process's flags of this call (`now`)
        or of the previous call (None at the first)."""
        call, self._calls = self._calls, self._calls + 1
        self._client.key_value_set(self._key(call, self._me), str(flag))
        read = call if now else call - 1
        if read < 0:
            return None
        flags = self._flags(read)
        if call >= 3:  # every process has read call-3 by now (each posted call-1 after reading it)
            self._client.key_value_delete(self._key(call - 3, self._me))
        return max(flags) or None

    def _flags(self, call: int) -> list[int]:
        posted = dict(self._client.key_value_dir_get(f"{self._dir}/{call}/"))
        return [int(posted.get(key) or self._client.blocking_key_value_get(key, self.TIMEOUT_MS))
                for key in (self._key(call, p) for p in range(self._processes))]

    def _key(self, call: int, process: int) -> str:
        return f"{self._dir}/{call}/{process}"
