"""Logs: one JSON object per line with the scaling guide's field names, stdlib records too."""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import threading
from collections.abc import Iterator

import pytest
import structlog

from sidecar import logs
from sidecar.metrics import Metrics

PAGE = 4096  # the smallest pipe Linux makes


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    logs.configure(level="info", instance="web-7", stream=out)
    yield out
    logs.shutdown()
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def lines(out: io.StringIO) -> list[dict[str, object]]:
    """What the writer thread wrote, once it has written everything (it is stopped)."""
    assert logs.shutdown()
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_structlog_line_has_the_guide_fields(stream: io.StringIO) -> None:
    """A sidecar log line carries timestamp, level, component, message, containerId."""
    logs.get("scheduler").warning("check app is fail", check="app", duration=12.5)
    (line,) = lines(stream)
    assert line["message"] == "check app is fail"
    assert line["level"] == "warning"
    assert line["component"] == "scheduler"
    assert line["containerId"] == "web-7"
    assert line["duration"] == 12.5
    assert line["check"] == "app"
    assert str(line["timestamp"]).endswith("Z")


def test_stdlib_records_share_the_renderer(stream: io.StringIO) -> None:
    """aiohttp's own records (stdlib logging) come out as the same JSON, exceptions as dicts."""
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("aiohttp.server").exception("Error handling request")
    (line,) = lines(stream)
    assert line["message"] == "Error handling request"
    assert line["component"] == "aiohttp.server"
    assert line["level"] == "error"
    assert line["containerId"] == "web-7"
    assert "ValueError" in json.dumps(line["exception"])


def test_level_filters(stream: io.StringIO) -> None:
    """Below the configured level nothing is written, from structlog or stdlib."""
    logs.get("x").debug("hidden")
    logging.getLogger("aiohttp.access").info("GET /ready 200")
    assert lines(stream) == []


@pytest.fixture
def report() -> Iterator[tuple[int, int]]:
    """A pipe for the first-drop report (stderr's stand-in): (read end, write end)."""
    read, write = os.pipe()
    yield read, write
    os.close(read)
    os.close(write)


def reported(read: int) -> list[str]:
    """The report lines written so far (the reporter has ended: `shutdown` joined it)."""
    os.set_blocking(read, False)
    try:
        return os.read(read, 65536).decode().splitlines()
    except BlockingIOError:
        return []


@pytest.fixture
def teardown() -> Iterator[None]:
    yield
    logs.shutdown()
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


@pytest.mark.usefixtures("teardown")
def test_a_closed_pipe_drops_and_counts_every_line(report: tuple[int, int]) -> None:
    """stdout a pipe whose reader is gone (`| head -1`): every line is dropped and counted,
    no call raises, and the first drop is reported once."""
    read, write = os.pipe()
    os.close(read)
    try:
        logs.configure(level="info", instance="web-7", stream=write, report_fd=report[1])
        for n in range(5):
            logs.get("scheduler").info("line", n=n)
        logging.getLogger("aiohttp.server").warning("stdlib line")
        assert logs.shutdown()
    finally:
        os.close(write)
    assert logs.dropped() == 6
    (line,) = reported(report[0])
    assert "dropped (stdout is closed)" in line
    assert "sidecar_log_lines_dropped_total" in line


@pytest.mark.usefixtures("teardown")
def test_a_closed_stream_drops_and_counts(report: tuple[int, int]) -> None:
    """A text stream that was closed (ValueError on write) counts as a drop too."""
    out = io.StringIO()
    logs.configure(level="info", instance="web-7", stream=out, report_fd=report[1])
    out.close()
    logs.get("x").warning("one")
    logs.get("x").warning("two")
    assert logs.shutdown()
    assert logs.dropped() == 2
    (line,) = reported(report[0])
    assert "stdout is a closed file" in line


@pytest.mark.usefixtures("teardown")
def test_a_pipe_nobody_reads_never_blocks_and_every_line_is_accounted_for(
    report: tuple[int, int],
) -> None:
    """A pipe nobody reads: logging calls still return at once; once the pipe and the queue
    are full, lines are dropped and counted; the writer stuck in its write does not hold up
    `shutdown` past its bound; once the pipe is read again, every line was either written or
    counted, none lost and none twice."""
    read, write = os.pipe()
    fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, PAGE)
    logs.configure(level="info", instance="web-7", stream=write, report_fd=report[1])
    # The writer takes whatever waits in the queue at once, so how many lines fit before the
    # first drop varies with the thread's timing: log until lines drop (at most ten queues).
    total = 0
    while total < 10 * logs.QUEUE_LINES and (total <= logs.QUEUE_LINES or not logs.dropped()):
        logs.get("scheduler").info("line", n=total)
        total += 1
    dropped = logs.dropped()
    assert dropped > 0
    assert not logs.shutdown(timeout=0.2), "the writer should be stuck in its write"
    chunks: list[bytes] = []
    reader = threading.Thread(target=read_all, args=(read, chunks))
    reader.start()
    try:
        assert logs.shutdown(timeout=10)
    finally:
        os.close(write)
        reader.join(10)
        os.close(read)
    written = [json.loads(line)["n"] for line in b"".join(chunks).splitlines()]
    assert logs.dropped() == dropped
    assert len(written) + dropped == total
    assert written == sorted(written)
    (line,) = reported(report[0])
    assert f"the queue of {logs.QUEUE_LINES} lines is full" in line


def read_all(fd: int, into: list[bytes]) -> None:
    """Read `fd` until end of file (every write end closed)."""
    while chunk := os.read(fd, 65536):
        into.append(chunk)


@pytest.mark.usefixtures("teardown")
def test_the_count_is_on_the_metrics_page(report: tuple[int, int]) -> None:
    """`sidecar_log_lines_dropped_total` on an app's registry reads the logs module's count."""
    logs.configure(level="info", instance="web-7", stream=io.StringIO(), report_fd=report[1])
    metrics = Metrics(checks=["app"], version="test", dropped_lines=logs.dropped)
    assert metrics.registry.get_sample_value("sidecar_log_lines_dropped_total") == 0
    read, write = os.pipe()
    os.close(read)
    try:
        logs.configure(level="info", instance="web-7", stream=write, report_fd=report[1])
        logs.get("x").warning("into a pipe without a reader")
        assert logs.shutdown()
    finally:
        os.close(write)
    assert metrics.registry.get_sample_value("sidecar_log_lines_dropped_total") == 1
