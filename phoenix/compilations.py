"""Every XLA compilation in the process, counted from JAX's own monitoring events.

A counter kept by one jitted function misses the others (an eager `jnp` op, a helper jitted
elsewhere, a new shape of some small function): each of those compiles too, and on the request
path each costs a second or more. JAX records `BACKEND_COMPILE_EVENT` around every executable it
builds (a persistent-cache hit included), so listening to it counts them all.

    from phoenix import compilations
    before = compilations.count()
    ...
    assert compilations.count() == before  # nothing compiled in between
"""

from __future__ import annotations

import threading

import jax.monitoring

# The event name JAX records around each backend compilation (jax._src.dispatch).
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class _Counter:
    def __init__(self) -> None:
        self._lock = threading.Lock()  # compilations happen on executor threads too
        self.count = 0
        self.seconds = 0.0
        self.last_function = ""

    def __call__(self, event: str, duration_s: float, **kwargs: object) -> None:
        if event != BACKEND_COMPILE_EVENT:
            return
        with self._lock:
            self.count += 1
            self.seconds += duration_s
            self.last_function = str(kwargs.get("fun_name", ""))


_COUNTER = _Counter()
jax.monitoring.register_event_duration_secs_listener(_COUNTER)


def count() -> int:
    """Compilations in this process so far (from import of this module on)."""
    return _COUNTER.count


def seconds() -> float:
    """Wall time spent in those compilations."""
    return _COUNTER.seconds


def last_function() -> str:
    """The name JAX gave the most recently compiled function, e.g. `jit(add)`."""
    return _COUNTER.last_function
