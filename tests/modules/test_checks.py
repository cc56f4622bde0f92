"""sidecar/checks.py: the default of `panic` and the kinds of the check union."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter

from sidecar.checks import KINDS, Check, TcpCheck, default_panic

CHECK: TypeAdapter[Check] = TypeAdapter(Check)


def tcp(name: str, interval: float = 10.0) -> TcpCheck:
    return TcpCheck(name=name, target="h:1", interval=interval, timeout=min(1.0, interval))


@pytest.mark.parametrize(
    ("name", "kind", "shared", "expected"),
    [
        ("convex", "convex", False, True),
        ("mastra", "mastra", False, True),
        ("payments", "http", False, False),
        ("payments", "http", True, True),
        ("db", "tcp", True, True),
        ("app", "http", False, False),
        ("app", "mastra", False, False),
    ],
)
def test_default_panic(name: str, kind: str, shared: bool, expected: bool) -> None:
    """True for convex, mastra and shared checks, false otherwise and always for `app`."""
    target = "h:1" if kind == "tcp" else "http://h"
    check = CHECK.validate_python({"name": name, "kind": kind, "target": target, "shared": shared})
    assert default_panic(check) is expected


def test_kinds_follow_the_check_union() -> None:
    """KINDS lists the union's kinds, in its order."""
    assert KINDS == ("convex", "mastra", "http", "tcp")
