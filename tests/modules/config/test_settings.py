"""`load_settings()` in process: which names are read, precedence, defaults and the built-in
checks, the example file, and how errors read."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from pydantic import AliasChoices

from sidecar.checks import ConvexCheck, HttpCheck, MastraCheck, TcpCheck
from sidecar.config import Settings, effective, load_settings
from sidecar.config_errors import ConfigError
from tests.support.configs import BASE_ENV, EXAMPLE, SECRET


def seed_env(env: pytest.MonkeyPatch) -> None:
    """The seed's minimal environment: CONVEX_URL, MASTRA_URL and the secret."""
    for key, value in BASE_ENV.items():
        env.setenv(key, value)


def with_file(env: pytest.MonkeyPatch, tmp_path: Path, text: str) -> None:
    """Point SIDECAR_CONFIG at a file holding `text`."""
    path = tmp_path / "sidecar.toml"
    path.write_text(text, encoding="utf-8")
    env.setenv("SIDECAR_CONFIG", str(path))


def problems() -> list[str]:
    """The problems load_settings() is refused with: its ConfigError's lines after the first."""
    with pytest.raises(ConfigError) as caught:
        load_settings()
    return str(caught.value).splitlines()[1:]


def by_name(settings: Settings) -> dict[str, ConvexCheck | MastraCheck | HttpCheck | TcpCheck]:
    """The resolved checks by name."""
    return {check.name: check for check in settings.resolved_checks}


def test_seed_env_gives_the_two_seed_checks(clean_env: pytest.MonkeyPatch) -> None:
    """With only CONVEX_URL, MASTRA_URL and HEALTH_SIDECAR_SECRET the daemon runs exactly the
    seed's `convex` and `mastra` checks, both critical, every 10s with a 2s timeout, and
    listens on 0.0.0.0:8099."""
    seed_env(clean_env)
    settings = load_settings()
    checks = settings.resolved_checks
    assert [(c.name, c.kind) for c in checks] == [("convex", "convex"), ("mastra", "mastra")]
    assert all(c.critical for c in checks)
    assert [(c.interval, c.timeout) for c in checks] == [(10.0, 2.0), (10.0, 2.0)]
    assert [c.target for c in checks] == [BASE_ENV["CONVEX_URL"], BASE_ENV["MASTRA_URL"]]
    assert (settings.host, settings.port, settings.log_level) == ("0.0.0.0", 8099, "info")
    assert settings.secret.get_secret_value() == SECRET


def test_next_public_names_are_accepted(clean_env: pytest.MonkeyPatch) -> None:
    """A Next.js app's NEXT_PUBLIC_CONVEX_URL and NEXT_PUBLIC_MASTRA_URL are read when the
    plain names are not set."""
    clean_env.setenv("NEXT_PUBLIC_CONVEX_URL", "https://convex.internal:3210/")
    clean_env.setenv("NEXT_PUBLIC_MASTRA_URL", "http://mastra.internal:4111")
    clean_env.setenv("HEALTH_SIDECAR_SECRET", SECRET)
    settings = load_settings()
    assert settings.convex_url == "https://convex.internal:3210"  # trailing slash dropped
    assert settings.mastra_url == "http://mastra.internal:4111"


def test_plain_names_win_over_next_public(clean_env: pytest.MonkeyPatch) -> None:
    """With both set, CONVEX_URL beats NEXT_PUBLIC_CONVEX_URL and MASTRA_URL beats
    NEXT_PUBLIC_MASTRA_URL (the first name of each AliasChoices is tried first)."""
    seed_env(clean_env)
    clean_env.setenv("NEXT_PUBLIC_CONVEX_URL", "http://public-convex:1")
    clean_env.setenv("NEXT_PUBLIC_MASTRA_URL", "http://public-mastra:1")
    settings = load_settings()
    assert settings.convex_url == BASE_ENV["CONVEX_URL"]
    assert settings.mastra_url == BASE_ENV["MASTRA_URL"]


def test_environment_beats_the_file(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """SIDECAR_PORT=9001 beats `port = 9000` in the file; a file key the environment does not
    set (interval) still applies."""
    seed_env(clean_env)
    with_file(clean_env, tmp_path, "port = 9000\ninterval = 20\n")
    clean_env.setenv("SIDECAR_PORT", "9001")
    settings = load_settings()
    assert (settings.port, settings.interval) == (9001, 20.0)


def test_next_public_env_beats_the_file(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The environment wins over the file under its alternate name too:
    NEXT_PUBLIC_CONVEX_URL in the environment beats `convex_url` in the file."""
    clean_env.setenv("HEALTH_SIDECAR_SECRET", SECRET)
    clean_env.setenv("NEXT_PUBLIC_CONVEX_URL", "https://from-env:3210")
    with_file(clean_env, tmp_path, 'convex_url = "https://from-file:3210"\n')
    assert load_settings().convex_url == "https://from-env:3210"


def test_app_url_adds_a_critical_app_check(clean_env: pytest.MonkeyPatch) -> None:
    """SIDECAR_APP_URL adds a critical http check named `app` of the container beside,
    after the dependency checks."""
    seed_env(clean_env)
    clean_env.setenv("SIDECAR_APP_URL", "http://127.0.0.1:3000/api/health")
    checks = load_settings().resolved_checks
    assert [c.name for c in checks] == ["convex", "mastra", "app"]
    app = checks[-1]
    assert isinstance(app, HttpCheck)
    assert app.critical
    assert (app.target, app.method, app.expect_status) == (
        "http://127.0.0.1:3000/api/health",
        "GET",
        (),
    )


def test_file_check_named_mastra_replaces_the_builtin(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A [[checks]] table named `mastra` replaces the built-in one (no duplicate), keeping
    its own options such as expect_agents."""
    seed_env(clean_env)
    with_file(
        clean_env,
        tmp_path,
        '[[checks]]\nname = "mastra"\nkind = "mastra"\ntarget = "http://127.0.0.1:4112"\n'
        'expect_agents = ["assistant"]\ncritical = false\n',
    )
    checks = by_name(load_settings())
    assert list(checks) == ["convex", "mastra"]
    mastra = checks["mastra"]
    assert isinstance(mastra, MastraCheck)
    assert (mastra.target, mastra.expect_agents, mastra.critical) == (
        "http://127.0.0.1:4112",
        ("assistant",),
        False,
    )


def test_builtin_name_with_another_kind_is_allowed(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Valid, not an error: a file check may take a built-in's name with another kind (here
    `mastra` as a plain http check and `app` as tcp); it replaces the built-in."""
    seed_env(clean_env)
    clean_env.setenv("SIDECAR_APP_URL", "http://127.0.0.1:3000/api/health")
    with_file(
        clean_env,
        tmp_path,
        '[[checks]]\nname = "mastra"\nkind = "http"\ntarget = "http://127.0.0.1:4111/health"\n'
        '[[checks]]\nname = "app"\nkind = "tcp"\ntarget = "127.0.0.1:3000"\n',
    )
    checks = by_name(load_settings())
    assert [(name, c.kind) for name, c in checks.items()] == [
        ("convex", "convex"),
        ("mastra", "http"),
        ("app", "tcp"),
    ]
    app = checks["app"]
    assert isinstance(app, TcpCheck)
    assert (app.host, app.port) == ("127.0.0.1", 3000)


def test_generic_port_and_hostname_are_not_the_sidecars(clean_env: pytest.MonkeyPatch) -> None:
    """PORT=3000 (the app's) and HOST are not read as the sidecar's port and host; HOSTNAME
    is only the default instance name."""
    seed_env(clean_env)
    clean_env.setenv("PORT", "3000")
    clean_env.setenv("HOST", "127.0.0.1")
    clean_env.setenv("HOSTNAME", "web-7f9c")
    clean_env.setenv("INSTANCE", "not-read")
    settings = load_settings()
    assert (settings.port, settings.host, settings.instance) == (8099, "0.0.0.0", "web-7f9c")
    clean_env.setenv("SIDECAR_INSTANCE", "web-1")
    assert load_settings().instance == "web-1"


@pytest.mark.parametrize("given", ["INFO", "Info", "info"])
def test_log_level_is_case_insensitive(clean_env: pytest.MonkeyPatch, given: str) -> None:
    """SIDECAR_LOG_LEVEL=INFO (any case) is accepted and stored lower case."""
    seed_env(clean_env)
    clean_env.setenv("SIDECAR_LOG_LEVEL", given)
    assert load_settings().log_level == "info"


def test_empty_variable_counts_as_unset(clean_env: pytest.MonkeyPatch) -> None:
    """`SIDECAR_PORT=` and `SIDECAR_DETAILS_TOKEN=` (compose's `${VAR:-}`) mean unset: the
    defaults apply, no error."""
    seed_env(clean_env)
    clean_env.setenv("SIDECAR_PORT", "")
    clean_env.setenv("SIDECAR_DETAILS_TOKEN", "")
    clean_env.setenv("SIDECAR_APP_URL", "")
    settings = load_settings()
    assert (settings.port, settings.details_token, settings.app_url) == (8099, None, None)


def test_checks_from_the_environment_as_json(clean_env: pytest.MonkeyPatch) -> None:
    """SIDECAR_CHECKS takes the [[checks]] list as JSON; a check's own timeout and interval
    win over SIDECAR_TIMEOUT/SIDECAR_INTERVAL, and an inherited timeout is capped at the
    check's interval."""
    seed_env(clean_env)
    clean_env.setenv(
        "SIDECAR_CHECKS",
        '[{"name": "db", "kind": "tcp", "target": "[::1]:5432", "interval": 1},'
        ' {"name": "slow", "kind": "http", "target": "http://x:1", "interval": 30,'
        ' "timeout": 9}]',
    )
    checks = by_name(load_settings())
    db, slow = checks["db"], checks["slow"]
    assert isinstance(db, TcpCheck)
    assert isinstance(slow, HttpCheck)
    assert (db.host, db.port, db.interval, db.timeout) == ("::1", 5432, 1.0, 1.0)
    assert (slow.interval, slow.timeout) == (30.0, 9.0)


def test_example_file_loads(clean_env: pytest.MonkeyPatch) -> None:
    """config/sidecar.toml loads with the required environment set and gives the built-in
    convex check, the file's app URL, the file's mastra check (replacing the built-in) and
    the http and tcp examples with their options."""
    clean_env.setenv("CONVEX_URL", "https://convex.internal:3210")
    clean_env.setenv("HEALTH_SIDECAR_SECRET", SECRET)
    clean_env.setenv("SIDECAR_CONFIG", str(EXAMPLE))
    settings = load_settings()
    checks = by_name(settings)
    assert [(name, c.kind) for name, c in checks.items()] == [
        ("convex", "convex"),
        ("app", "http"),
        ("mastra", "mastra"),
        ("payments", "http"),
        ("postgres", "tcp"),
    ]
    assert settings.convex_url == "https://convex.internal:3210"  # env over the file
    mastra, payments, postgres = checks["mastra"], checks["payments"], checks["postgres"]
    assert isinstance(mastra, MastraCheck)
    assert mastra.expect_agents == ("assistant",)
    assert isinstance(payments, HttpCheck)
    assert payments.expect_status == (200, 204)
    assert payments.body_regex is not None
    assert re.search(payments.body_regex, '{"status": "ok"}')
    assert payments.headers == {"Accept": "application/json"}
    assert (payments.interval, payments.timeout, payments.jitter, payments.critical) == (
        30.0,
        5.0,
        0.2,
        False,
    )
    assert (payments.failures_before_fail, payments.successes_before_pass) == (3, 2)
    assert isinstance(postgres, TcpCheck)
    assert (postgres.host, postgres.port, postgres.critical) == ("db.internal", 5432, False)


def test_example_file_explains_every_option() -> None:
    """Every setting appears in config/sidecar.toml as a key (set or commented out) with its
    environment variable and a default, and every check option of every kind is named."""
    text = EXAMPLE.read_text(encoding="utf-8")
    tomllib.loads(text)
    for name, field in Settings.model_fields.items():
        if name in ("config_file", "checks"):
            continue
        assert re.search(rf"^#? ?{name} = ", text, re.MULTILINE), name
        alias = field.validation_alias
        assert isinstance(alias, AliasChoices)
        assert all(str(env) in text for env in alias.choices), name
    assert "SIDECAR_CONFIG" in text
    assert "SIDECAR_CHECKS" in text
    assert text.count("Default:") >= len(Settings.model_fields) - 2
    for model in (HttpCheck, MastraCheck, TcpCheck):
        for option in model.model_fields:
            assert re.search(rf"\b{option}\b", text), f"{model.__name__}.{option}"


def test_errors_name_the_env_variable_and_the_check(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Every problem is reported at once, one line each: a top-level field by its
    environment name and field name, a check by the file it came from, its index, name and
    kind (no discriminator tag or dotted index in the path)."""
    seed_env(clean_env)
    clean_env.setenv("SIDECAR_PORT", "0")
    clean_env.setenv("SIDECAR_LOG_LEVEL", "loud")
    with_file(
        clean_env,
        tmp_path,
        '[[checks]]\nname = "ok"\nkind = "tcp"\ntarget = "db:5432"\n'
        '[[checks]]\nname = "payments"\nkind = "http"\ntarget = "http://x:1"\n'
        'body_regex = "("\n',
    )
    with pytest.raises(ConfigError) as caught:
        load_settings()
    lines = str(caught.value).splitlines()
    assert lines[0] == "invalid configuration:"
    assert len(lines) == 4, lines
    assert any(line.startswith("  SIDECAR_PORT (port): ") for line in lines)
    assert any(line.startswith("  SIDECAR_LOG_LEVEL (log_level): ") for line in lines)
    file = tmp_path / "sidecar.toml"
    assert any(
        line.startswith(f"  {file}: checks[1] (payments, http).body_regex: is not a valid regular")
        for line in lines
    ), lines


def test_a_bad_value_in_the_file_names_the_file_and_its_key(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`interval = "fast"` in the file is reported as the file's `interval`, not under the
    environment name the file never used."""
    seed_env(clean_env)
    with_file(clean_env, tmp_path, 'interval = "fast"\n')
    file = tmp_path / "sidecar.toml"
    assert problems() == [
        f"  {file}: interval: Input should be a valid number, unable to parse string as a number"
    ]


def test_a_bad_value_in_the_file_is_an_error_though_the_environment_sets_it(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The environment wins over the file, but does not hide a broken file: the next deploy
    without the variable would fail. The variable's own value is judged too."""
    seed_env(clean_env)
    with_file(clean_env, tmp_path, 'interval = "fast"\nport = 8080\n')
    clean_env.setenv("SIDECAR_INTERVAL", "5")
    clean_env.setenv("SIDECAR_PORT", "0")
    file = tmp_path / "sidecar.toml"
    assert problems() == [
        f"  {file}: interval: Input should be a valid number, unable to parse string as a number",
        "  SIDECAR_PORT (port): Input should be greater than or equal to 1",
    ]
    with_file(clean_env, tmp_path, "interval = 20\nport = 8080\n")
    clean_env.setenv("SIDECAR_PORT", "9000")
    assert (load_settings().interval, load_settings().port) == (5.0, 9000)


def test_a_problem_across_sources_names_each_setting_where_it_was_set(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A timeout from the environment over an interval from the file: the line is the
    variable's, and it names the file's key for the interval (and the other way round)."""
    seed_env(clean_env)
    with_file(clean_env, tmp_path, "interval = 5\n")
    clean_env.setenv("SIDECAR_TIMEOUT", "6")
    assert problems() == ["  SIDECAR_TIMEOUT (timeout): 6s exceeds interval (5s)"]
    with_file(clean_env, tmp_path, "timeout = 6\n")
    clean_env.delenv("SIDECAR_TIMEOUT")
    clean_env.setenv("SIDECAR_INTERVAL", "5")
    file = tmp_path / "sidecar.toml"
    assert problems() == [f"  {file}: timeout: 6s exceeds SIDECAR_INTERVAL (5s)"]


def test_a_relative_check_timeout_counts_against_the_default_interval(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A check with its own timeout but no interval runs every SIDECAR_INTERVAL; raising
    SIDECAR_INTERVAL above the timeout makes the same file valid."""
    seed_env(clean_env)
    with_file(
        clean_env,
        tmp_path,
        '[[checks]]\nname = "slow"\nkind = "http"\ntarget = "http://x:1"\ntimeout = 15\n',
    )
    with pytest.raises(ConfigError, match=r"checks\[0\] \(slow, http\)\.timeout"):
        load_settings()
    clean_env.setenv("SIDECAR_INTERVAL", "20")
    assert by_name(load_settings())["slow"].timeout == 15.0


def test_store_defaults_and_ttl_follows_the_store_interval(clean_env: pytest.MonkeyPatch) -> None:
    """One sync a minute by default; an instance's documents live five store periods after its
    last sync unless SIDECAR_STORE_TTL says otherwise, and never more than 15 minutes (the
    deployment's clamp)."""
    seed_env(clean_env)
    settings = load_settings()
    assert (settings.store_interval, settings.ttl) == (60.0, 300.0)
    clean_env.setenv("SIDECAR_STORE_INTERVAL", "120")
    assert load_settings().ttl == 600.0
    clean_env.setenv("SIDECAR_STORE_INTERVAL", "300")
    assert load_settings().ttl == 900.0
    clean_env.setenv("SIDECAR_STORE_TTL", "900")
    assert load_settings().ttl == 900.0


def test_config_prints_the_value_in_effect_of_every_setting(
    clean_env: pytest.MonkeyPatch,
) -> None:
    """`health-sidecar config` (`effective`) prints the TTL the daemon uses, not `null` when
    it is derived; null is left only for what is unset (an optional URL, the token, the file),
    and every setting is there."""
    seed_env(clean_env)
    doc = effective(load_settings())
    assert set(doc) == set(Settings.model_fields)
    assert doc["store_ttl"] == 300.0
    assert {key for key, value in doc.items() if value is None} == {
        "app_url",
        "config_file",
        "details_token",
    }
    clean_env.setenv("SIDECAR_STORE_INTERVAL", "100")
    assert effective(load_settings())["store_ttl"] == 500.0
    clean_env.setenv("SIDECAR_STORE_INTERVAL", "300")
    assert effective(load_settings())["store_ttl"] == 900.0  # the deployment's clamp
    clean_env.setenv("SIDECAR_STORE_TTL", "800")
    assert effective(load_settings())["store_ttl"] == 800.0


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://happy-otter-123.convex.cloud", True),
        ("http://127.0.0.1:3210", True),
        ("http://127.8.9.10:3210", True),
        ("http://localhost:3210", True),
        ("http://[::1]:3210", True),
        ("http://convex.internal:3210", False),
        ("http://10.0.0.5:3210", False),
    ],
)
def test_clear_text_convex_url_needs_an_explicit_opt_in(
    clean_env: pytest.MonkeyPatch, url: str, allowed: bool
) -> None:
    """The store's calls are signed, not encrypted: http:// is refused unless it stays on this
    machine or SIDECAR_CONVEX_ALLOW_HTTP is set."""
    seed_env(clean_env)
    clean_env.setenv("CONVEX_URL", url)
    if allowed:
        assert load_settings().convex_url == url
    else:
        with pytest.raises(ConfigError, match=r"CONVEX_URL \(convex_url\): http:// to a host"):
            load_settings()
        clean_env.setenv("SIDECAR_CONVEX_ALLOW_HTTP", "1")
        assert load_settings().convex_url == url


def test_at_most_200_checks(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """200 checks in all (the built-in convex one included) are accepted; 201 are refused,
    naming the count and the maximum."""
    seed_env(clean_env)
    clean_env.delenv("MASTRA_URL")
    table = '[[checks]]\nname = "c{}"\nkind = "tcp"\ntarget = "127.0.0.1:9"\n'
    with_file(clean_env, tmp_path, "".join(table.format(i) for i in range(199)))
    assert len(load_settings().resolved_checks) == 200
    with_file(clean_env, tmp_path, "".join(table.format(i) for i in range(200)))
    with pytest.raises(ConfigError, match=r"201 checks; at most 200 are allowed"):
        load_settings()


def test_fast_interval_defaults_and_sources(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Unset, a check's fast interval is SIDECAR_FAST_INTERVAL's default (1 s), capped at its
    interval; the file's top-level `fast_interval` sets it for every check, a check's own wins,
    and SIDECAR_FAST_INTERVAL beats the file."""
    seed_env(clean_env)
    with_file(
        clean_env,
        tmp_path,
        'fast_interval = 2\n[[checks]]\nname = "db"\nkind = "tcp"\ntarget = "h:1"\n'
        "interval = 0.5\n"
        '[[checks]]\nname = "api"\nkind = "tcp"\ntarget = "h:2"\nfast_interval = 0.3\n',
    )
    checks = by_name(load_settings())
    fast = {name: c.fast_interval for name, c in checks.items()}
    assert fast == {"convex": 2, "mastra": 2, "db": 0.5, "api": 0.3}
    clean_env.setenv("SIDECAR_FAST_INTERVAL", "0.25")
    assert by_name(load_settings())["convex"].fast_interval == 0.25
    clean_env.delenv("SIDECAR_CONFIG")
    clean_env.delenv("SIDECAR_FAST_INTERVAL")
    clean_env.setenv("SIDECAR_INTERVAL", "0.4")
    clean_env.setenv("SIDECAR_TIMEOUT", "0.1")
    assert by_name(load_settings())["convex"].fast_interval == 0.4


def test_the_probe_rate_bound_counts_fast_intervals(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A check in transition runs at its fast interval: 150 checks every 10 s with a fast
    interval of 0.1 s could run 1,500 probes a second and are refused; at 0.2 s (750 a
    second, with the two built-ins') they are accepted."""
    seed_env(clean_env)
    table = '[[checks]]\nname = "c{}"\nkind = "tcp"\ntarget = "127.0.0.1:9"\n'
    with_file(clean_env, tmp_path, "".join(table.format(i) for i in range(150)))
    clean_env.setenv("SIDECAR_FAST_INTERVAL", "0.2")
    assert len(load_settings().resolved_checks) == 152
    clean_env.setenv("SIDECAR_FAST_INTERVAL", "0.1")
    with pytest.raises(ConfigError, match=r"1,520.0 probes a second; at most 1,000"):
        load_settings()


PASSWORD = "Hunter2pass"
MISTYPED = [
    f"https://user:{PASSWORD}#x@host.example",
    f"https://user:{PASSWORD}/x@host.example",
    f"https://user:{PASSWORD}?x@host.example",
    f"https://user:{PASSWORD}@host.example",
    "https://user:4430#@host.example",
    "https://user:4430?@host.example",
]
URL_SETTINGS = [
    "CONVEX_URL",
    "NEXT_PUBLIC_CONVEX_URL",
    "MASTRA_URL",
    "NEXT_PUBLIC_MASTRA_URL",
    "SIDECAR_APP_URL",
    "SIDECAR_CHECKS",
]


@pytest.mark.parametrize("name", URL_SETTINGS)
@pytest.mark.parametrize("url", MISTYPED)
def test_a_url_with_credentials_is_refused_without_quoting_it(
    clean_env: pytest.MonkeyPatch, name: str, url: str
) -> None:
    """A URL carrying user:password@ - also where the password holds #, / or ? so that the
    URL parses as another host and port - is refused, and the error never shows the
    password (nor any part of the URL)."""
    seed_env(clean_env)
    if name.startswith("NEXT_PUBLIC_"):
        clean_env.delenv(name.removeprefix("NEXT_PUBLIC_"))
    if name == "SIDECAR_CHECKS":
        clean_env.setenv(name, f'[{{"name": "x", "kind": "http", "target": "{url}"}}]')
    else:
        clean_env.setenv(name, url)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "must not contain @" in message
    assert PASSWORD not in message
    assert "4430" not in message
    assert "host.example" not in message


def test_panic_defaults(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`panic` resolves to true for convex, mastra and shared checks, false for the others
    and for `app` whatever its kind; an explicit value wins; the threshold defaults to 0.5."""
    seed_env(clean_env)
    clean_env.setenv("SIDECAR_APP_URL", "http://127.0.0.1:3000/api/health")
    with_file(
        clean_env,
        tmp_path,
        '[[checks]]\nname = "agent"\nkind = "http"\ntarget = "http://x:1"\nshared = true\n'
        '[[checks]]\nname = "db"\nkind = "tcp"\ntarget = "db:5432"\n'
        '[[checks]]\nname = "quiet"\nkind = "mastra"\ntarget = "http://m:1"\npanic = false\n',
    )
    settings = load_settings()
    panics = {c.name: c.panic for c in settings.resolved_checks}
    assert panics == {
        "convex": True,
        "mastra": True,
        "app": False,
        "agent": True,
        "db": False,
        "quiet": False,
    }
    assert settings.panic_threshold == 0.5
