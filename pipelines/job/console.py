"""The job's console (docs/job.md): by default its own lines (the plan, a line per written part, the summary);
Ray's and Ray Data's internal logging goes to Ray's session log folder (``<temp dir>/session_*/logs``).
``--verbose`` leaves Ray's logging on the console as Ray sets it up.

Quiet (:class:`QuietRay`, the default):

- Ray's Python logger ``ray`` (the token-authentication notice, "Started a local Ray instance") writes to
  ``<session logs>/raywhisper-driver.log``; its records from before the session folder exists (while ``ray.init``
  runs) are held and written there once it does.
- Ray Data's logger ``ray.data`` keeps its own file (``<session logs>/ray-data/``) and loses its console handler;
  the job turns Ray Data's progress bars off. Workers' and actors' output stays in their files (``worker-*``):
  the job starts or joins Ray with ``log_to_driver=False``.
- Native (C++) messages of the driver's Ray core worker go to file descriptor 2, which points at
  ``raywhisper-driver.log`` for the run while Python's ``sys.stderr`` (this job's own lines) keeps the console.
  In Ray 2.60 every Ray Data actor pool makes the core worker print an error-level "Actor ... has constructor
  arguments in the object store and max_restarts > 0" (ray-project/ray#57733): Ray Data itself passes its
  DataContext and its transform to each pool actor as object-store references, whatever the job's own
  arguments, and the job keeps actor restarts on (fault tolerance, docs/resume.md). The references live as long as
  the dataset runs, so the restarts it warns about work; the same line is in ``python-core-driver-*.log``.
"""

from __future__ import annotations

import io
import logging
import logging.handlers
import os
import sys
from typing import Optional, TextIO

from pipelines.redact import ScrubbingFormatter, install_log_scrubber

#: The file, in Ray's session log folder, that takes Ray's driver-side messages in a quiet run.
DRIVER_LOG = "raywhisper-driver.log"
#: The job's own console lines.
CONSOLE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Ray's own format, kept in the file.
RAY_FORMAT = "%(asctime)s\t%(levelname)s %(filename)s:%(lineno)s -- %(message)s"
#: The job's loggers, at INFO on a quiet console (everything else at WARNING).
JOB_LOGGERS = ("raywhisper", "pipelines")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (so a quiet run can move it)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def configure_console(verbose: bool) -> None:
    """The CLI's logging: the job's loggers at INFO on stderr; others at INFO when ``verbose``, else WARNING. Like
    ``logging.basicConfig``, adds no handler where the root logger has one (a caller's, pytest's)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format=CONSOLE_FORMAT,
                        handlers=[_StderrHandler()])
    for name in JOB_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    install_log_scrubber()  # a URI's user:password@ never reaches the log (pipelines.redact)


def _is_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)


def _on_fd2(stream: TextIO) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False


class QuietRay:
    """Keeps Ray's and Ray Data's internal logging off the console for one run (see the module doc): call
    :meth:`hold` before ``ray.init``, :meth:`route` once Ray runs, :meth:`restore` at the end (always; it is safe
    in any state and puts every handler, ``sys.stderr`` and file descriptor 2 back)."""

    def __init__(self):
        self._held = logging.handlers.MemoryHandler(100_000, flushLevel=logging.CRITICAL + 1, flushOnClose=False)
        self._saved: dict[str, list[logging.Handler]] = {}
        self._file: Optional[logging.FileHandler] = None
        self._fd2: Optional[int] = None
        self._stderr: Optional[TextIO] = None
        self._moved: list[logging.StreamHandler] = []
        self.log_path: Optional[str] = None

    def hold(self) -> None:
        """Take the console handlers off ``ray`` and ``ray.data``; ``ray``'s records wait in memory."""
        import ray.data  # noqa: F401 - configures the ray.data logger now, not over what follows

        if self._saved:
            return
        for name in ("ray", "ray.data"):
            logger = logging.getLogger(name)
            self._saved[name] = list(logger.handlers)
            logger.handlers = [h for h in logger.handlers if not _is_console(h)]
        logging.getLogger("ray").handlers.append(self._held)

    def route(self, logs_dir: Optional[str]) -> Optional[str]:
        """Send Ray's records and the driver's native stderr to ``logs_dir/raywhisper-driver.log``; returns that
        path (None, and everything back on the console, where ``logs_dir`` is unknown or missing)."""
        self.hold()
        if not logs_dir or not os.path.isdir(logs_dir):
            self.restore()
            return None
        self.log_path = os.path.join(logs_dir, DRIVER_LOG)
        self._file = logging.FileHandler(self.log_path, encoding="utf-8")
        self._file.setFormatter(ScrubbingFormatter(logging.Formatter(RAY_FORMAT)))
        self._held.setTarget(self._file)
        self._held.flush()
        logging.getLogger("ray").handlers = [h for h in logging.getLogger("ray").handlers if h is not self._held]
        logging.getLogger("ray").addHandler(self._file)
        self._redirect_fd2(self.log_path)
        return self.log_path

    def _redirect_fd2(self, path: str) -> None:
        sys.stderr.flush()
        self._fd2 = os.dup(2)
        if _on_fd2(sys.stderr):  # Python's own stderr keeps the console through a copy of the descriptor
            self._stderr = sys.stderr
            sys.stderr = os.fdopen(os.dup(self._fd2), "w", buffering=1, encoding=self._stderr.encoding,
                                   errors="backslashreplace")
            for handler in logging.getLogger().handlers:
                if isinstance(handler, logging.StreamHandler) and handler.stream is self._stderr:
                    handler.setStream(sys.stderr)
                    self._moved.append(handler)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(fd, 2)
        os.close(fd)

    def restore(self) -> None:
        """Put the console back as it was (records still held go to Ray's own console handler)."""
        if self._fd2 is not None:
            sys.stderr.flush()
            os.dup2(self._fd2, 2)
            os.close(self._fd2)
            self._fd2 = None
        if self._stderr is not None:
            copy, sys.stderr = sys.stderr, self._stderr
            for handler in self._moved:
                handler.setStream(self._stderr)
            copy.close()
            self._stderr, self._moved = None, []
        saved, self._saved = self._saved, {}
        for name, handlers in saved.items():
            logging.getLogger(name).handlers = handlers
        console = [h for h in saved.get("ray", []) if _is_console(h)]
        if self._file is None and console:
            self._held.setTarget(console[0])
        self._held.flush()
        self._held.setTarget(None)
        if self._file is not None:
            self._file.close()
            self._file = None


def session_logs_dir() -> Optional[str]:
    """Ray's session log folder on this node (``<temp dir>/<session name>/logs``); None before Ray runs."""
    import ray

    if not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    return os.path.join(context.get_temp_dir(), context.get_session_name(), "logs")
