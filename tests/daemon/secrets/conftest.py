"""The secret tests' own dev/convex-local, holding a random secret."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import procs
from tests.support.leaks import CONVEX_SECRET


@pytest.fixture(scope="package")
def own_convex(tmp_path_factory: pytest.TempPathFactory) -> Iterator[procs.Proc]:
    """dev/convex-local holding CONVEX_SECRET (random per run), on a free port."""
    log = tmp_path_factory.mktemp("secrets-convex") / "out.log"
    with procs.convex_local(log, CONVEX_SECRET) as proc:
        yield proc
