"""The fleet commands' parsing, pure: durations need a unit and stay in bounds, `--help`
shows the required options as required, and what counts as an instance's acknowledgement."""

from __future__ import annotations

import pytest

from sidecar.fleetcli import MAX_TIMEOUT, MIN_TIMEOUT, UsageError, acknowledged, parse_duration
from sidecar.limits import REASON
from sidecar.main import main
from sidecar.result import clip
from sidecar.store.messages import DrainAnswer, Member


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("2h", 7200), ("1d", 86400), ("1.5h", 5400), ("30d", 2592000)],
)
def test_durations_with_a_unit(text: str, seconds: float) -> None:
    """Seconds, minutes, hours and days, up to 30 days."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("90", "needs a unit"),
        ("0.5", "needs a unit"),
        ("31d", "not between 1 s and 30 days"),
        ("721h", "not between 1 s and 30 days"),
        ("0s", "not between 1 s and 30 days"),
        ("soon", "not a duration"),
        ("-5m", "not a duration"),
        ("5 m", "not a duration"),
        ("", "not a duration"),
    ],
)
def test_a_duration_without_a_unit_or_out_of_bounds_is_refused(text: str, error: str) -> None:
    """A bare number (seconds or minutes?), over 30 days, zero, or not a number: refused,
    naming the option."""
    with pytest.raises(UsageError, match=error) as caught:
        parse_duration(text)
    assert str(caught.value).startswith("--for: ")


def test_a_timeout_has_its_own_option_and_bounds() -> None:
    """--timeout takes the same syntax within its own bounds (0.1 s to 1 h), and its errors
    name --timeout."""

    def timeout(text: str) -> float:
        return parse_duration(text, option="--timeout", low=MIN_TIMEOUT, high=MAX_TIMEOUT)

    assert timeout("10s") == 10
    assert timeout("0.5s") == 0.5
    for text in ("10", "2h", "0s", "x"):
        with pytest.raises(UsageError, match=r"^--timeout: "):
            timeout(text)


@pytest.mark.parametrize("command", ["drain", "undrain"])
def test_help_shows_the_required_options_as_required(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`drain --help` and `undrain --help`: the target (--instance or --all) and, for drain,
    --reason appear unbracketed in the usage line and under "required arguments"; --timeout
    and --no-wait are offered."""
    with pytest.raises(SystemExit) as ended:
        main([command, "--help"])
    assert ended.value.code == 0
    text = capsys.readouterr().out
    usage, _, rest = text.partition("\n\n")
    assert "(--instance INSTANCE | --all)" in usage
    assert ("--reason REASON" in usage and "[--reason" not in usage) == (command == "drain")
    required = rest.split("required arguments:", 1)[1]
    assert "--instance" in required
    assert ("--reason" in required) == (command == "drain")
    assert "[--timeout TIMEOUT]" in usage
    assert "[--no-wait]" in usage


def member(*reasons: str, drain: DrainAnswer | None = None) -> Member:
    return Member(
        instance="web-2",
        version="0",
        ready=not reasons,
        reasons=reasons,
        failing=(),
        seen_age_ms=0.0,
        drain=drain,
    )


def test_an_instance_acknowledges_by_its_own_ready_reasons() -> None:
    """A drain is taken when the instance's reasons name it as the daemon words (and clips)
    it - Convex's record of the drain on the member is not an acknowledgement; an undrain
    when no reason names a drain any more."""
    recorded = DrainAnswer(reason="kernel upgrade", by="ops", age_ms=0.0, remaining_ms=None)
    assert not acknowledged(member(drain=recorded), "kernel upgrade")
    assert acknowledged(member("drained: kernel upgrade", "mastra is fail"), "kernel upgrade")
    assert not acknowledged(member("drained: other"), "kernel upgrade")
    long = "x" * REASON
    assert acknowledged(member(clip(f"drained: {long}", REASON)), long)
    assert acknowledged(member(), None)
    assert acknowledged(member("mastra is fail"), None)
    assert not acknowledged(member("drained: kernel upgrade"), None)
