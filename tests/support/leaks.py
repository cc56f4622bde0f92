"""Finding a secret in collected text, in the forms it could take on the way out: as is, URL-
or JSON-escaped, hex, base64 (at any alignment), or a 12-character piece of it (a truncation);
and a recording HTTP server on 127.0.0.1 that keeps the request heads it received."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
from collections.abc import Mapping
from urllib.parse import quote, quote_plus


def make_secret(prefix: str) -> str:
    """A distinctive random secret (24+ characters) with characters that URL-encoding changes."""
    return f"{prefix}+{secrets.token_urlsafe(18)}/Z"


def forms(secret: str) -> dict[str, str]:
    """Every form of `secret` to look for, by name."""
    raw = secret.encode()
    out = {
        "raw": secret,
        "url-encoded": quote(secret, safe=""),
        "form-encoded": quote_plus(secret),
        "json-escaped": json.dumps(secret)[1:-1],
        "hex": raw.hex(),
        "first 12": secret[:12],
        "middle 12": secret[len(secret) // 2 - 6 : len(secret) // 2 + 6],
        "last 12": secret[-12:],
    }
    for shift in range(3):
        # The groups of 3 bytes wholly inside the secret encode the same wherever it sits,
        # once its start is aligned: try each of the three alignments.
        part = raw[shift:]
        whole = part[: len(part) - len(part) % 3]
        out[f"base64+{shift}"] = base64.b64encode(whole).decode()
        out[f"base64url+{shift}"] = base64.urlsafe_b64encode(whole).decode()
    return out


def find(collected: Mapping[str, str], secret: str) -> list[str]:
    """Where `secret` occurs in `collected` (source -> text): one line per source, naming the
    forms found, with the context of the first."""
    found = []
    for source, text in collected.items():
        hits = [(name, text.find(form), form) for name, form in forms(secret).items()]
        hits = [hit for hit in hits if hit[1] >= 0]
        if hits:
            _, at, form = hits[0]
            context = text[max(0, at - 80) : at + len(form) + 40].replace("\n", "\\n")
            names = ", ".join(name for name, _, _ in hits)
            found.append(f"{source} [{names}]: ...{context}...")
    return found


CONVEX_SECRET = make_secret("cvx")  # what the secret tests' own dev/convex-local holds


class Recorder:
    """Answers every request with `status` (and `location`, for a redirect) and keeps its head;
    runs in the test's event loop."""

    def __init__(self, status: int = 200, body: bytes = b'{"ok":true}') -> None:
        self.status = status
        self.body = body
        self.location: str | None = None
        self.heads: list[str] = []
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> Recorder:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        """Stop listening: from now on connections are refused."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            self.heads.append(head.decode("latin-1"))
            extra = f"Location: {self.location}\r\n" if self.location else ""
            writer.write(
                f"HTTP/1.1 {self.status} Recorded\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(self.body)}\r\n{extra}Connection: close\r\n\r\n".encode()
                + self.body
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
