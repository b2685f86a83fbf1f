"""Work that process 0 of a multi-process run finishes before the others start it: fetching into a cache."""

from __future__ import annotations

import itertools
from typing import Callable, TypeVar

from jax._src import distributed  # the coordination service's client (interrupt.py and orbax use it too)

from pml_jax.errors import PmlError

T = TypeVar("T")
TIMEOUT_MS = 2 * 60 * 60 * 1000  # how long the others wait for process 0: a dataset on a slow link
_calls = itertools.count()  # every process makes its calls in the same order


def process_0_first(what: str, fetch: Callable[[], T]) -> T:
    """`fetch()` on process 0, then on every other process once it has succeeded there.

    For downloads into a cache folder: where the hosts share a disk, the others then find the
    file complete instead of writing the same file at once; on disks of their own, each fetches
    its own copy. A failure on process 0 raises there as usual and, on the others, PmlError
    "process 0 could not <what>: <its message>", so every process stops with the same error.
    One process: just `fetch()`. Never starts a JAX backend (`jax.distributed.initialize` may
    still follow).
    """
    state = distributed.global_state
    if state.client is None or state.num_processes == 1:
        return fetch()
    client = state.client
    key = f"pml_jax/process_0_first/{next(_calls)}"
    if state.process_id == 0:
        try:
            result = fetch()
        except Exception as e:
            client.key_value_set(key, f"error:{e}")
            raise
        client.key_value_set(key, "ok")
        return result
    outcome = client.blocking_key_value_get(key, TIMEOUT_MS)
    if outcome != "ok":
        raise PmlError(f"process 0 could not {what}: {outcome.removeprefix('error:')}")
    return fetch()
