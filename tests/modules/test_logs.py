"""Logs: one JSON object per line with the scaling guide's field names, stdlib records too."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from sidecar import logs


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    logs.configure(level="info", instance="web-7", stream=out)
    yield out
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def lines(out: io.StringIO) -> list[dict[str, object]]:
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
    assert stream.getvalue() == ""
