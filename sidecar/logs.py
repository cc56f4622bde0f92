"""JSON logs on stdout with the scaling guide's field names; stdlib logs share the renderer.

The event loop never writes. structlog hands each event to stdlib logging (its stdlib bridge);
the root logger's one handler, a `QueueHandler`, renders the record to its JSON line where it
was logged (structlog's `ProcessorFormatter`: the event's own time and context) and puts the
line on a bounded queue; one writer thread, a `QueueListener`, writes the lines to stdout.
A full queue (stdout not read), a closed stdout or a failing write drops the line and counts
it (`dropped()`, served as `sidecar_log_lines_dropped_total`); the first drop is said once on
stderr, from a thread of its own, since stderr may be as stuck as stdout.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import logging.handlers
import os
import queue
import sys
import threading
import time
from typing import Any, TextIO

import structlog
from aiohttp.http_exceptions import HttpProcessingError
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import EventDict, Processor, WrappedLogger

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
QUEUE_LINES = 1000  # lines waiting for the writer: bursts fit; full, they hold ~0.5 MB
FLUSH_SECONDS = 1.0  # how long `shutdown` waits for the writer before leaving it behind
STDERR = 2


class Drops:
    """Log lines that were not written, counted from any thread; the first one is reported
    once on `report_fd` by a thread of its own (a stuck stderr then holds only that thread)."""

    def __init__(self, *, report_fd: int = STDERR) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._report_fd = report_fd
        self.reporter: threading.Thread | None = None

    @property
    def count(self) -> int:
        """Lines dropped so far."""
        with self._lock:
            return self._count

    def add(self, why: str, lines: int = 1) -> None:
        """Count dropped lines; `why` goes into the report if they are the first."""
        if lines <= 0:
            return
        with self._lock:
            first = self._count == 0
            self._count += lines
        if first:
            self.reporter = threading.Thread(
                target=self._report, args=(why,), name="log-drop-report", daemon=True
            )
            self.reporter.start()

    def _report(self, why: str) -> None:
        line = (
            f"health-sidecar: a log line was dropped ({why}); further drops are counted in"
            " sidecar_log_lines_dropped_total, not reported\n"
        )
        with contextlib.suppress(OSError):  # stderr closed too: the counter still says it
            os.write(self._report_fd, line.encode())


def _why(exc: BaseException) -> str:
    if isinstance(exc, BrokenPipeError):
        return "stdout is closed"
    if isinstance(exc, ValueError):
        return "stdout is a closed file"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"writing to stdout failed: {errno.errorcode.get(exc.errno, exc.errno)}"
    return f"writing to stdout failed: {type(exc).__name__}"


class _Line(logging.LogRecord):
    """A rendered line on its way to the writer: a LogRecord with nothing but `msg` (the
    default `prepare` queues a full copy of the record: five times the memory, and time)."""

    def __init__(self, text: str) -> None:  # LogRecord's own fields left out on purpose
        self.msg = text


class _Enqueue(logging.handlers.QueueHandler):
    """On the logging thread (the event loop): render, then enqueue or drop; never blocks."""

    def __init__(self, lines: queue.Queue[Any], drops: Drops) -> None:
        super().__init__(lines)
        self._drops = drops

    def prepare(self, record: logging.LogRecord) -> _Line:
        return _Line(self.format(record))

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self._drops.add(
                f"the queue of {QUEUE_LINES} lines is full: stdout is not read, or too slowly"
            )

    def handleError(self, record: logging.LogRecord) -> None:
        # Instead of a traceback on stderr, written here on the loop (stderr may be stuck).
        self._drops.add(f"a record could not be rendered: {type(sys.exc_info()[1]).__name__}")


class _Writer(logging.handlers.QueueListener):
    """The one thread that writes: the queued lines to `sink` (a file descriptor, written
    without Python's buffers and their locks, or a text stream), as many at a time as are
    waiting (one write each time it gets the GIL back from a busy loop, not one line: it
    keeps up with any burst the loop can make); a line that could not be written is a drop."""

    def __init__(self, lines: queue.Queue[Any], sink: TextIO | int | None, drops: Drops) -> None:
        super().__init__(lines)
        self._lines = lines
        self._sink = sink
        self._drops = drops
        self._stopping = False

    def start(self) -> None:
        super().start()
        if self._thread is not None:
            self._thread.name = "log-writer"

    def dequeue(self, block: bool) -> Any:
        # After `handle` took the stop sentinel along with lines, the loop still gets it.
        return None if self._stopping else self._lines.get(block)

    def handle(self, record: logging.LogRecord) -> None:
        batch = [f"{record.msg}\n"]
        while len(batch) < QUEUE_LINES:
            try:
                more = self._lines.get_nowait()
            except queue.Empty:
                break
            if more is None:  # QueueListener's stop sentinel: `dequeue` returns it next
                self._stopping = True
                break
            self._lines.task_done()
            batch.append(f"{more.msg}\n")
        self._write(batch)

    def _write(self, batch: list[str]) -> None:
        if self._sink is None:
            self._drops.add("the process has no stdout", len(batch))
            return
        if not isinstance(self._sink, int):
            try:
                self._sink.write("".join(batch))
                self._sink.flush()
            except (OSError, ValueError) as exc:
                self._drops.add(_why(exc), len(batch))
            return
        data = memoryview("".join(batch).encode("utf-8", "replace"))
        written = 0
        try:
            while written < len(data):
                written += os.write(self._sink, data[written:])
        except OSError as exc:
            self._drops.add(_why(exc), len(batch) - data[:written].tobytes().count(b"\n"))

    def stop_within(self, timeout: float) -> bool:
        """Write what is queued and end the thread, waiting at most `timeout`; False if the
        thread is still stuck in a write (it is a daemon thread: it never holds up exit)."""
        deadline = time.monotonic() + timeout
        thread = self._thread
        if thread is None:
            return True
        try:
            self._lines.put(None, timeout=timeout)  # None: QueueListener's "stop" sentinel
        except queue.Full:
            return False
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            return False
        self._thread = None
        return True


def _stdout() -> TextIO | int | None:
    """stdout's file descriptor; None when the process started without one (Python then has
    no sys.stdout, and the descriptor may be a socket's by now: every line is dropped)."""
    if sys.stdout is None:
        return None
    try:
        return sys.stdout.fileno()
    except (OSError, ValueError):  # a stream without a descriptor (a test's capture)
        return sys.stdout


class _Pipeline:
    """What `configure` set up: the queue's two ends and the count of drops."""

    def __init__(self, sink: TextIO | int | None, drops: Drops) -> None:
        lines: queue.Queue[Any] = queue.Queue(QUEUE_LINES)
        self.drops = drops
        self.handler = _Enqueue(lines, drops)
        self.writer = _Writer(lines, sink, drops)
        self.writer.start()

    def stop(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        done = self.writer.stop_within(timeout)
        reporter = self.drops.reporter
        if reporter is not None:
            reporter.join(max(0.0, deadline - time.monotonic()))
        return done


_current: list[_Pipeline] = []  # the last `configure`'s (logging is per process): one or none


def _container(instance: str) -> Processor:
    def add(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
        event.setdefault("containerId", instance)
        return event

    return add


def _component_from_stdlib(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    record = event.get("_record")
    if record is not None and "component" not in event:
        event["component"] = record.name
    return event


def _quiet_bad_requests(record: logging.LogRecord) -> bool:
    """A malformed request from a client is the client's problem: aiohttp already answered
    400, so it is at most a debug line, without traceback (anyone could flood the logs)."""
    error = record.exc_info[1] if record.exc_info else None
    if record.name != "aiohttp.server" or not isinstance(error, HttpProcessingError):
        return True
    record.exc_info = None
    record.levelno, record.levelname = logging.DEBUG, "DEBUG"
    return logging.getLogger().isEnabledFor(logging.DEBUG)


def configure(
    *, level: str, instance: str, stream: TextIO | int | None = None, report_fd: int = STDERR
) -> None:
    """Route structlog and stdlib logging (aiohttp's too) to one JSON line per event, written
    to `stream` (stdout's file descriptor unless given) by the writer thread; a first drop is
    reported on `report_fd`."""
    shutdown()
    sink = stream if stream is not None else _stdout()
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        _container(instance),
    ]
    final: list[Processor] = [
        # Tracebacks as dicts, without local variables: frames can hold request bytes or
        # call arguments (the Convex secret), which must never reach a log line.
        structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
        structlog.processors.EventRenamer("message"),
        structlog.processors.JSONRenderer(sort_keys=False),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    pipeline = _Pipeline(sink, Drops(report_fd=report_fd))
    pipeline.handler.addFilter(_quiet_bad_requests)
    pipeline.handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, _component_from_stdlib],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
        )
    )
    _current[:] = [pipeline]
    root = logging.getLogger()
    root.handlers[:] = [pipeline.handler]
    root.setLevel(LEVELS[level])
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def dropped() -> int:
    """Log lines dropped since the last `configure` (0 before it)."""
    return _current[0].drops.count if _current else 0


def shutdown(*, timeout: float = FLUSH_SECONDS) -> bool:
    """Write what is queued and stop the writer thread, waiting at most `timeout`; False if
    the writer is stuck (stdout not read): it is left behind (a daemon thread, which never
    holds up exit), and a later call tries again."""
    return _current[0].stop(timeout) if _current else True


def get(component: str) -> Any:
    """A logger whose lines carry `component`."""
    return structlog.get_logger().bind(component=component)
