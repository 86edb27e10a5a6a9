"""The one way tests wait: poll a condition against a deadline instead of sleeping a fixed time.

A fixed sleep is either too short on a loaded machine (a flaky test) or too long everywhere (a slow
one); polling returns as soon as the condition holds and fails, with a message naming what never
happened, only when it still does not after the timeout. Waiting for "nothing happened" is not a
condition: wait for a later event that proves the system went past the point instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, what: str | Callable[[], object] = "the condition",
               interval: float = 0.05) -> T:
    """The first truthy value of `predicate()`, polled every `interval` seconds.

    Raises AssertionError "timed out after <timeout>s waiting for <what>" if it is still falsy after
    `timeout` seconds; `what` may be a callable, evaluated only then (to add a log to the message).
    An exception from `predicate` ends the wait at once (a process that died need not be waited for).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:g}s waiting for {described}")
        time.sleep(interval)
