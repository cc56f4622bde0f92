"""JSON logs on stdout with the scaling guide's field names; stdlib logs share the renderer."""

from __future__ import annotations

import logging
import sys
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


def configure(*, level: str, instance: str, stream: TextIO | None = None) -> None:
    """Route structlog and stdlib logging (aiohttp's too) to one JSON line per event."""
    out = stream or sys.stdout
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
        processors=[*shared, *final],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(out)
    handler.addFilter(_quiet_bad_requests)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, _component_from_stdlib],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def get(component: str) -> Any:
    """A logger whose lines carry `component`."""
    return structlog.get_logger().bind(component=component)
