"""Raw HTTP/1.x over a plain socket, for requests no client library will send (bad bytes, huge
lines, pipelining), and a small parser for what comes back. Every exchange is bounded in time."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Response:
    """One parsed response."""

    version: str
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Exchange:
    """What one connection answered: the responses in order, and how the connection ended."""

    responses: list[Response] = field(default_factory=list)
    reset: bool = False  # the server reset the connection (e.g. while we were still sending)
    closed: bool = False  # the server closed the connection
    elapsed: float = 0.0

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.responses]


def exchange(
    host: str,
    port: int,
    data: bytes,
    *,
    expect: int = 1,
    head: bool = False,
    timeout: float = 5.0,
) -> Exchange:
    """Send `data` at once, then read until `expect` final responses are parsed, the server
    closes or resets, or `timeout` passes (an AssertionError: the server hung)."""
    started = time.monotonic()
    deadline = started + timeout
    out = Exchange()
    buf = b""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            out.reset = True
        while len(out.responses) < expect:
            parsed, buf = _parse(buf, head=head, final=False)
            out.responses.extend(parsed)
            if len(out.responses) >= expect:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"no complete answer within {timeout}s; got {out.statuses} and {buf[:200]!r}"
                )
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                out.reset = True
                break
            if not chunk:
                out.closed = True
                break
            buf += chunk
        if out.closed or out.reset:
            parsed, buf = _parse(buf, head=head, final=True)
            out.responses.extend(parsed)
    out.elapsed = time.monotonic() - started
    return out


def _parse(buf: bytes, *, head: bool, final: bool) -> tuple[list[Response], bytes]:
    """Complete responses at the start of `buf` (1xx skipped) and the rest. `final`: the
    connection ended, so a response without a length ends with the buffer."""
    out: list[Response] = []
    while True:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return out, buf
        lines = buf[:end].decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        status = int(rest.split(" ", 1)[0])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        start = end + 4
        if 100 <= status < 200:
            buf = buf[start:]
            continue
        if head or status in (204, 304):
            body, buf = b"", buf[start:]
        elif "content-length" in headers:
            length = int(headers["content-length"])
            if len(buf) - start < length:
                return out, buf
            body, buf = buf[start : start + length], buf[start + length :]
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            decoded = _dechunk(buf[start:])
            if decoded is None:
                return out, buf
            body, buf = decoded
        elif final:
            body, buf = buf[start:], b""
        else:
            return out, buf
        out.append(Response(version=version, status=status, headers=headers, body=body))


def _dechunk(data: bytes) -> tuple[bytes, bytes] | None:
    body = b""
    pos = 0
    while True:
        line_end = data.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(data[pos:line_end].split(b";")[0], 16)
        pos = line_end + 2
        if size == 0:
            trailer_end = data.find(b"\r\n", pos)
            if trailer_end < 0:
                return None
            return body, data[trailer_end + 2 :]
        if len(data) < pos + size + 2:
            return None
        body += data[pos : pos + size]
        pos += size + 2


def get(host: str, port: int, path: str, headers: dict[str, str] | None = None) -> Response:
    """A well-formed GET on a fresh connection (closed after the answer)."""
    return request(host, port, path, headers=headers)


def request(
    host: str,
    port: int,
    path: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> Response:
    """A well-formed request with `method` on a fresh connection (closed after the answer);
    `Host: sidecar` unless `headers` has its own."""
    headers = headers or {}
    lines = [f"{method} {path} HTTP/1.1", "Connection: close"]
    if not any(k.lower() == "host" for k in headers):
        lines.append("Host: sidecar")
    lines += [f"{k}: {v}" for k, v in headers.items()]
    answer = exchange(host, port, ("\r\n".join(lines) + "\r\n\r\n").encode(), head=method == "HEAD")
    assert answer.responses, f"{method} {path}: no answer"
    return answer.responses[0]


def batch_main() -> None:
    """`python -m tests.support.rawhttp HOST PORT` (e.g. inside a network namespace): reads a
    JSON list of `{"method", "path", "headers"}` on stdin, writes a JSON list of
    `{"status", "headers", "body"}` on stdout."""
    import sys

    host, port = sys.argv[1], int(sys.argv[2])
    answers = []
    for item in json.load(sys.stdin):
        resp = request(
            host,
            port,
            item["path"],
            method=item.get("method", "GET"),
            headers=item.get("headers") or {},
        )
        answers.append(
            {
                "status": resp.status,
                "headers": resp.headers,
                "body": resp.body.decode("utf-8", errors="replace"),
            }
        )
    json.dump(answers, sys.stdout)


if __name__ == "__main__":
    batch_main()
