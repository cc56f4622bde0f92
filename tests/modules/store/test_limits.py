"""The sidecar's copies of the store protocol's bounds (sidecar/limits.py) are the bounds the
Convex functions enforce (convex/healthProtocol.ts): a sidecar that sent more than they take
would see every sync refused."""

from __future__ import annotations

import re

from sidecar import limits
from tests.support.procs import ROOT

PROTOCOL = ROOT / "convex" / "healthProtocol.ts"


def typescript_limits() -> dict[str, int]:
    """Every `NAME: number` inside LIMITS and FIELD_LIMITS."""
    text = PROTOCOL.read_text(encoding="utf-8")
    found: dict[str, int] = {}
    for block in ("LIMITS", "FIELD_LIMITS"):
        body = re.search(rf"export const {block} = \{{(.*?)\}} as const;", text, re.S)
        assert body, block
        for name, expr in re.findall(r"^\s*(\w+):\s*([0-9_ *]+),", body.group(1), re.M):
            found[name] = eval(expr.replace("_", ""))
    return found


def test_every_python_bound_is_the_functions_bound() -> None:
    """Each constant of sidecar/limits.py has the value of its namesake in the functions."""
    ours = {name: value for name, value in vars(limits).items() if name.isupper()}
    theirs = typescript_limits()
    assert len(ours) >= 10
    assert {name: theirs.get(name) for name in ours} == ours
