"""When Convex's function runtime last answered a store call: the `convex` check of the store's
own deployment takes that as proof the runtime runs, instead of a call of its own."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class RuntimeEvidence:
    """Fed by the store sync, read by the `convex` probe of the deployment at `url`.

    An answer counts for `window` seconds (two store periods plus the store timeout); a
    refusal is an answer too: auth problems are the `store` status's business.
    """

    def __init__(
        self, *, url: str, window: float, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.url = url
        self.window = window
        self._monotonic = monotonic
        self._answered_at: float | None = None
        self._first_at: float | None = None
        self._settled = asyncio.Event()

    def answered(self) -> None:
        """The runtime answered a store call just now."""
        self._answered_at = self._monotonic()
        self._settle()

    def missed(self) -> None:
        """A store call got no answer from the runtime (unreachable, 5xx, garbage)."""
        self._settle()

    def _settle(self) -> None:
        if self._first_at is None:
            self._first_at = self._monotonic()
        self._settled.set()

    async def settled(self) -> None:
        """Wait until the first store call has ended, one way or the other."""
        await self._settled.wait()

    def fresh(self) -> bool:
        """True when the runtime answered within the window."""
        at = self._answered_at
        return at is not None and self._monotonic() - at <= self.window

    def since_first(self) -> float | None:
        """At start, the silence so far: seconds since the first store call ended, while no
        call has answered yet and the window has not passed since (None otherwise)."""
        if self._answered_at is not None or self._first_at is None:
            return None
        elapsed = self._monotonic() - self._first_at
        return elapsed if elapsed < self.window else None
