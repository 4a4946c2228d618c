"""One background chore: a daemon thread that calls a function every ``interval_s`` seconds until stopped.

The driver runs three of them while it writes an output folder: the output lock's heartbeat
(:class:`pipelines.io.lock.OutputLock`), the part writer's flush timer (:class:`pipelines.io.output.PartWriter`)
and the progress object's writer (:class:`pipelines.io.progress.ProgressWriter`). The first call comes one
interval after :meth:`Periodic.start`; a stop is seen at once, not at the end of the interval.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional


class Periodic:
    """Calls ``fn()`` every ``interval_s`` seconds on a daemon thread named ``name``, from :meth:`start` to
    :meth:`stop`. ``fn`` handles its own errors: one it raises ends the thread (as an uncaught error does)."""

    def __init__(self, fn: Callable[[], object], interval_s: float, name: str):
        self.fn = fn
        self.interval_s = interval_s
        self.name = name
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        """Start the thread (again after a :meth:`stop`)."""
        def loop() -> None:
            while not self._stop.wait(self.interval_s):
                self.fn()
        self._stop.clear()
        self._thread = threading.Thread(target=loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        """Stop the thread, waiting at most ``timeout_s`` seconds for a call under way to end; no-op when not
        running."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None
