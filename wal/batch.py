"""A group-commit batch: the records written and fsynced together, and the threads waiting for them.

An appending thread that waits arms its own reusable lock, adds it to the batch it joined and
blocks on it; whoever writes the batch releases it once, and the wake-up is passed down the line.
"""

from __future__ import annotations

import _thread
import threading
from _thread import LockType

from .errors import WalError


class Batch:
    """The records queued between two writes, and the locks of the threads waiting for them.

    Each waiting thread arms its own reusable lock and blocks on it. Releasing the batch wakes
    only the first waiter; each woken waiter wakes the next. The writer thus pays one wake-up per
    batch and goes straight on to the next write and fsync, while the wake-ups (which the GIL
    serialises anyway) run alongside it. No woken thread takes a shared lock on its way out.
    """

    __slots__ = ("error", "last_seq", "released", "waiters")

    def __init__(self) -> None:
        self.waiters: list[LockType] = []  # frozen once the writer has taken the batch
        self.error: WalError | None = None
        self.last_seq = 0
        self.released = False

    def release(self, error: WalError | None = None) -> None:
        if self.released:
            return
        self.error = error
        self.released = True
        if self.waiters:
            self.waiters[0].release()

    def pass_on(self, index: int) -> None:
        """Wake the waiter after `index`."""
        following = index + 1
        if following < len(self.waiters):
            self.waiters[following].release()


_thread_state = threading.local()


def waiter_lock() -> LockType:
    """This thread's reusable wake-up lock."""
    try:
        return _thread_state.lock
    except AttributeError:
        lock = _thread_state.lock = _thread.allocate_lock()
        return lock


def wait_for_release(batch: Batch, waiter: LockType, index: int) -> None:
    """Block until the batch is released, then wake the next waiter in line."""
    try:
        waiter.acquire()
    except BaseException:
        # A signal interrupted the wait (main thread only). The chain of wake-ups runs through this
        # thread, so still take our turn before leaving, or every later waiter would hang.
        while not waiter.acquire(timeout=0.05):
            pass
        waiter.release()
        batch.pass_on(index)
        raise
    waiter.release()
    batch.pass_on(index)
    if batch.error is not None:
        raise batch.error
