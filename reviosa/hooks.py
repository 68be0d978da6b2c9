"""Module hooks that act only for the thread that registered them.

Hooks live on shared modules: while one request captures attention rows or prompts SAM2 through a
hook, another thread running the same (shared, read-only) model would trigger that hook too, mixing
the two requests. Wrapping each hook with `this_thread_only` keeps a request's hooks to its own
forward passes, so one model instance can serve concurrent requests.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any


def this_thread_only(hook: Callable[..., Any]) -> Callable[..., Any]:
    """``hook`` for calls from the current thread; a no-op (returns None) for any other thread."""
    owner = threading.get_ident()

    @functools.wraps(hook)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() != owner:
            return None
        return hook(*args, **kwargs)

    return wrapped
