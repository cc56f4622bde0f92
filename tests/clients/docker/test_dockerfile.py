"""The Dockerfile read as text: what the image promises, checked without building it (the
real build and run are test_image.py's, on a Docker engine).

Parse the Dockerfile (instructions, line continuations, comments, exec and shell forms, ENV
expansion) and check: two stages from slim Python, a fixed non-root USER created without
`--system`, only /opt/venv copied into the final stage, the version label from the VERSION
build argument, no parser directive (`# syntax=` would fetch a frontend image), EXPOSE 8099,
STOPSIGNAL SIGTERM, a HEALTHCHECK that asks liveness (never readiness) without curl, CMD that
runs the daemon. And `.dockerignore`, with Docker's own matching rules (last match wins, a
matched directory excludes what is under it).
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support import procs

ROOT = procs.ROOT
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
VENV = "/opt/venv"
PORT = "8099"
# The environment the official python:*-slim images set before the Dockerfile's own ENV.
BASE_ENV = {
    "PATH": "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}


# A small Dockerfile parser ------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    """One instruction: its keyword (upper case), its arguments as written (continuations
    joined) and the line it starts on."""

    keyword: str
    args: str
    line: int

    def flags(self) -> tuple[dict[str, str], str]:
        """The leading `--name=value` flags and the rest of the arguments."""
        flags: dict[str, str] = {}
        rest = self.args
        while match := re.match(r"--([\w-]+)(?:=(\S*))?\s+", rest):
            flags[match.group(1)] = match.group(2) or ""
            rest = rest[match.end() :]
        return flags, rest

    def words(self) -> list[str]:
        """The arguments after the flags: a JSON array's items, else shell-style words."""
        _, rest = self.flags()
        if rest.lstrip().startswith("["):
            items = json.loads(rest)
            assert all(isinstance(i, str) for i in items), f"line {self.line}: {rest}"
            return list(items)
        return shlex.split(rest)


@dataclass
class Stage:
    """The instructions from one FROM up to the next."""

    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


def parse(text: str) -> list[Instruction]:
    """Instructions in order. As Docker does: a trailing backslash continues the line, comment
    lines (parser directives too) are dropped, also inside a continuation, and so are empty
    continuation lines."""
    out: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (parts and not stripped):
            continue
        if not parts:
            if not stripped:
                continue
            start = number
        line = raw.rstrip()
        if line.endswith("\\"):
            parts.append(line[:-1])
            continue
        parts.append(line)
        keyword, _, args = "".join(parts).strip().partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
        parts = []
    assert not parts, "the Dockerfile ends inside a line continuation"
    return out


def expand(value: str, env: Mapping[str, str]) -> str:
    """Docker's `$VAR`, `${VAR}` and `${VAR:-default}` substitution."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        default = match.group(2)
        found = env.get(name, "")
        return found if found or default is None else default

    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)", one, value)


def pairs(instruction: Instruction) -> list[tuple[str, str]]:
    """The `KEY=value` pairs of ENV, LABEL or ARG (and the old `ENV KEY value` form)."""
    words = shlex.split(instruction.args)
    if instruction.keyword == "ENV" and words and "=" not in words[0]:
        return [(words[0], instruction.args.split(None, 1)[1].strip())]
    out = []
    for word in words:
        key, eq, value = word.partition("=")
        out.append((key, value if eq else ""))
    return out


def apply_env(env: dict[str, str], instruction: Instruction) -> None:
    """Apply one ENV: every value expands against the environment before the instruction
    (Docker's rule)."""
    before = dict(env)
    for key, value in pairs(instruction):
        env[key] = expand(value, before)


def stages(instructions: Sequence[Instruction]) -> list[Stage]:
    """Split by FROM; global ARG defaults expand the FROM lines."""
    args: dict[str, str] = {}
    out: list[Stage] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            words = instruction.words()
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else None
            out.append(Stage(base=expand(words[0], args), name=name))
        elif out:
            out[-1].instructions.append(instruction)
        elif instruction.keyword == "ARG":
            args.update(pairs(instruction))
        else:
            raise AssertionError(f"line {instruction.line}: {instruction.keyword} before FROM")
    return out


def command(stage: Stage) -> list[str]:
    """What the container runs: ENTRYPOINT + CMD (exec form), or CMD alone."""
    entry, cmd = stage.last("ENTRYPOINT"), stage.last("CMD")
    argv = entry.words() if entry else []
    return argv + (cmd.words() if cmd else [])


@dataclass(frozen=True)
class Healthcheck:
    options: dict[str, str]
    argv: list[str]
    exec_form: bool


def healthcheck(stage: Stage) -> Healthcheck:
    instruction = stage.last("HEALTHCHECK")
    assert instruction is not None, "the final stage has no HEALTHCHECK"
    options, rest = instruction.flags()
    keyword, _, cmd = rest.partition(" ")
    assert keyword.upper() == "CMD", f"HEALTHCHECK {rest}"
    cmd = cmd.strip()
    if cmd.startswith("["):
        return Healthcheck(options, json.loads(cmd), exec_form=True)
    return Healthcheck(options, ["/bin/sh", "-c", cmd], exec_form=False)


# .dockerignore, with Docker's matching rules ------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            body = "^" + body[1:] if body.startswith("!") else body
            out, i = out + f"[{body}]", end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


@dataclass(frozen=True)
class DockerIgnore:
    rules: tuple[tuple[bool, re.Pattern[str]], ...]

    @classmethod
    def load(cls, path: Path) -> DockerIgnore:
        rules = []
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            keep = line.startswith("!")
            pattern = os.path.normpath(line.removeprefix("!").strip()).lstrip("/")
            rules.append((keep, _pattern_regex(pattern)))
        return cls(tuple(rules))

    def ignored(self, relpath: str) -> bool:
        """Whether `relpath` (relative to the context, with `/`) stays out of the context:
        the last pattern that matches it or one of its parent directories decides."""
        parts = relpath.split("/")
        candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        result = False
        for keep, regex in self.rules:
            if any(regex.fullmatch(c) for c in candidates):
                result = not keep
        return result


def runtime_env(stage: Stage) -> dict[str, str]:
    """The final stage's environment: the base image's, then its ENV lines."""
    env = dict(BASE_ENV)
    for instruction in stage.all("ENV"):
        apply_env(env, instruction)
    return env


# Fixtures -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dockerfile:
    build: Stage
    final: Stage


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    """The parsed Dockerfile: the final stage and the stage it copies /opt/venv from."""
    all_stages = stages(parse(DOCKERFILE.read_text()))
    assert len(all_stages) >= 2, "expected a multi-stage build"
    final = all_stages[-1]
    sources = [i.flags()[0]["from"] for i in final.all("COPY") if "from" in i.flags()[0]]
    assert len(sources) == 1, f"the final stage should copy from one stage, got {sources}"
    build = next((s for s in all_stages[:-1] if s.name == sources[0]), None)
    assert build is not None, f"no stage named {sources[0]!r}"
    return Dockerfile(build=build, final=final)


# Static tests -------------------------------------------------------------------------------


def test_multi_stage_build_from_slim_python(dockerfile: Dockerfile) -> None:
    """Scenario: the image is built in two stages from the same slim Python base, and the
    final stage takes from the build stage nothing but the venv at /opt/venv."""
    for stage in (dockerfile.build, dockerfile.final):
        assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?(@sha256:\w+)?", stage.base), stage.base
    assert dockerfile.build.base == dockerfile.final.base, "the venv's python must be the same"
    copies = dockerfile.final.all("COPY") + dockerfile.final.all("ADD")
    assert len(copies) == 1, [c.args for c in copies]
    assert copies[0].keyword == "COPY"
    assert copies[0].words() == [VENV, VENV]


def shell_commands(stage: Stage) -> list[list[str]]:
    """The commands of the stage's shell-form RUN lines, split at `&&`, `;`, `then`, `fi`."""
    out: list[list[str]] = []
    for run in stage.all("RUN"):
        _, text = run.flags()
        current: list[str] = []
        for word in shlex.split(text, posix=True):
            if word in ("&&", ";", "||", "then", "fi", "if") or word.endswith(";"):
                if word.endswith(";") and word != ";":
                    current.append(word[:-1])
                if current:
                    out.append(current)
                current = []
            else:
                current.append(word)
        if current:
            out.append(current)
    return out


def test_build_stage_installs_the_package_without_dev_extras(dockerfile: Dockerfile) -> None:
    """Scenario: the build stage creates a venv at /opt/venv, pip-installs the project itself
    (`.`), with no `[dev]` extras and no pip cache left in the layer, then removes pip and
    setuptools from the venv (nothing at run time uses them)."""
    commands = shell_commands(dockerfile.build)
    assert ["python", "-m", "venv", VENV] in commands, commands
    installs = [c for c in commands if c[:2] == [f"{VENV}/bin/pip", "install"]]
    assert len(installs) == 1, commands
    assert "--no-cache-dir" in installs[0]
    assert installs[0][-1] == ".", "install the project itself, no extras"
    assert not any("[dev]" in w or w == "-e" for w in installs[0])
    uninstall = [c for c in commands if c[-5:-2] == ["pip", "uninstall", "--yes"]]
    assert uninstall, commands
    assert uninstall[-1][-2:] == ["pip", "setuptools"], uninstall
    assert commands.index(uninstall[-1]) > commands.index(installs[0])


def test_no_parser_directive(dockerfile: Dockerfile) -> None:
    """Scenario: the Dockerfile starts with no `# syntax=` (or other) parser directive:
    BuildKit would fetch that frontend image from a registry, which fails offline."""
    for line in DOCKERFILE.read_text().splitlines():
        if not line.startswith("#"):
            break
        assert not re.match(r"#\s*\w+\s*=", line), line


def test_version_label_comes_from_the_version_argument(dockerfile: Dockerfile) -> None:
    """Scenario: the final stage's version label is the VERSION build argument, and the build
    stage checks that argument against the installed package (sidecar.__version__), after
    the install: one source for the version."""
    labels = dict(p for i in dockerfile.final.all("LABEL") for p in pairs(i))
    assert labels["org.opencontainers.image.version"] in ("${VERSION}", "$VERSION"), labels
    assert ("VERSION", "") in [p for i in dockerfile.final.all("ARG") for p in pairs(i)]
    arg = next((i for i in dockerfile.build.all("ARG") if pairs(i)[0][0] == "VERSION"), None)
    assert arg is not None, "the build stage has no ARG VERSION"
    check = next((i for i in dockerfile.build.all("RUN") if "sidecar.__version__" in i.args), None)
    assert check is not None, "the build stage does not check VERSION against the package"
    assert "$VERSION" in check.args
    order = dockerfile.build.instructions
    assert order.index(arg) < order.index(check)


def test_user_is_not_a_system_user(dockerfile: Dockerfile) -> None:
    """Scenario: groupadd and useradd create 10001 without `--system` (system ids end at
    SYS_UID_MAX, 999 by default: useradd warns for 10001) and without a lastlog entry."""
    commands = shell_commands(dockerfile.final)
    for tool in ("groupadd", "useradd"):
        found = [c for c in commands if c[0] == tool]
        assert len(found) == 1, commands
        assert not {"--system", "-r"} & set(found[0]), found
    useradd = next(c for c in commands if c[0] == "useradd")
    assert useradd[useradd.index("--uid") + 1] == "10001"
    assert "--no-log-init" in useradd


def test_final_stage_runs_as_a_fixed_non_root_user(dockerfile: Dockerfile) -> None:
    """Scenario: the container runs as a fixed numeric uid/gid that is not root, created in
    the image, so Kubernetes' runAsNonRoot can verify it."""
    user = dockerfile.final.last("USER")
    assert user is not None, "the final stage has no USER"
    uid, _, gid = user.args.partition(":")
    assert uid not in ("root", "0"), user.args
    assert gid not in ("root", "0"), user.args
    assert uid.isdigit(), f"USER {user.args}: use a fixed numeric uid"
    assert int(uid) >= 1000, user.args
    runs = " ".join(r.args for r in dockerfile.final.all("RUN"))
    assert f"--uid {uid}" in runs, "the image should create the user it runs as"
    last_keywords = [i.keyword for i in dockerfile.final.instructions]
    assert "RUN" not in last_keywords[last_keywords.index("USER") :], "RUN after USER"


def test_runtime_environment(dockerfile: Dockerfile) -> None:
    """Scenario: the final stage's environment writes no bytecode, does not buffer stdout
    (JSON logs reach `docker logs` at once), finds the venv's commands first and sets the
    default port."""
    env = runtime_env(dockerfile.final)
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1", env
    assert env.get("PYTHONUNBUFFERED") == "1", env
    assert env["PATH"] == f"{VENV}/bin:{BASE_ENV['PATH']}"
    assert env.get("SIDECAR_PORT") == PORT, env


def test_exposes_the_port_and_stops_with_sigterm(dockerfile: Dockerfile) -> None:
    """Scenario: the image documents port 8099 (the daemon's default) and Docker stops it
    with SIGTERM, the signal that starts the drain."""
    expose = dockerfile.final.last("EXPOSE")
    assert expose is not None
    assert expose.words() in ([PORT], [f"{PORT}/tcp"])
    stop = dockerfile.final.last("STOPSIGNAL")
    assert stop is not None
    assert stop.args == "SIGTERM"


def test_healthcheck_is_liveness_without_curl(dockerfile: Dockerfile) -> None:
    """Scenario: Docker's HEALTHCHECK runs `health-sidecar check` (liveness, `/live`), never
    `--ready`: Docker restarts unhealthy containers, so a shared dependency's outage must not
    restart the fleet. Exec form, the agreed timings, and no curl or wget in the image."""
    check = healthcheck(dockerfile.final)
    assert check.exec_form
    assert check.argv == ["health-sidecar", "check"]
    assert "--ready" not in check.argv
    assert check.options == {
        "interval": "10s",
        "timeout": "3s",
        "start-period": "5s",
        "retries": "3",
    }
    everything = " ".join(
        i.args for s in (dockerfile.build, dockerfile.final) for i in s.instructions
    )
    assert not re.search(r"\b(curl|wget)\b", everything)


def test_cmd_runs_the_daemon_as_pid_1(dockerfile: Dockerfile) -> None:
    """Scenario: the container runs `health-sidecar run` in exec form, so the daemon itself
    is PID 1 and receives Docker's SIGTERM (a shell form would put /bin/sh in between, which
    does not forward it)."""
    cmd = dockerfile.final.last("CMD")
    assert cmd is not None
    assert cmd.args.startswith("[")
    entry = dockerfile.final.last("ENTRYPOINT")
    assert entry is None or entry.args.startswith("[")
    assert command(dockerfile.final) == ["health-sidecar", "run"]


@pytest.mark.parametrize(
    ("path", "ignored"),
    [
        (".venv/bin/python", True),
        ("node_modules/convex/package.json", True),
        ("dev/mastra/node_modules/x/index.js", True),
        ("tests/conftest.py", True),
        ("dev/convex-local/server.ts", True),
        (".git/HEAD", True),
        (".pytest_cache/README.md", True),
        (".mypy_cache/3.11/x.json", True),
        (".ruff_cache/CACHEDIR.TAG", True),
        ("sidecar/__pycache__/main.cpython-311.pyc", True),
        ("sidecar/probes/__pycache__/http.cpython-311.pyc", True),
        ("health_sidecar.egg-info/PKG-INFO", True),
        ("build/lib/sidecar/main.py", True),
        (".env", True),
        ("pyproject.toml", False),
        ("README.md", False),
        ("sidecar/main.py", False),
        ("sidecar/py.typed", False),
        ("sidecar/probes/http.py", False),
    ],
)
def test_dockerignore(path: str, ignored: bool) -> None:
    """Scenario: the build context leaves out virtual environments, Node packages, tests,
    the dev stand-ins, git and every cache, and keeps what the image installs."""
    assert DockerIgnore.load(DOCKERIGNORE).ignored(path) is ignored


def test_dockerignore_matching_rules() -> None:
    """Scenario: the test's .dockerignore matcher follows Docker's rules: `**` spans
    directories, `*` does not, a matched directory excludes its contents, and the last
    matching pattern wins (so `!` re-includes)."""
    rules = DockerIgnore(
        tuple(
            (keep, _pattern_regex(p))
            for keep, p in [(False, "*.md"), (True, "README.md"), (False, "**/cache"), (False, "a")]
        )
    )
    assert rules.ignored("NOTES.md")
    assert not rules.ignored("README.md")
    assert not rules.ignored("docs/NOTES.md")
    assert rules.ignored("x/y/cache/z")
    assert rules.ignored("cache")
    assert rules.ignored("a/b/c")
    assert not rules.ignored("ab")


def test_parser_joins_continuations_and_drops_comments() -> None:
    """Scenario: the test's parser reads a Dockerfile as Docker does: continuations joined,
    comment lines dropped (inside a continuation too), exec and shell forms, ENV expanded
    against the environment before the instruction."""
    text = (
        "# syntax=docker/dockerfile:1\n"
        "ARG IMG=python:3.11-slim\n"
        "FROM ${IMG} AS build\n"
        "RUN a \\\n"
        "    # a comment\n"
        "\n"
        "    && b\n"
        "FROM ${IMG}\n"
        'ENV A=1 B="two words" \\\n'
        "    C=$A\n"
        'CMD ["x", "run"]\n'
    )
    build, final = stages(parse(text))
    assert (build.base, build.name, final.name) == ("python:3.11-slim", "build", None)
    assert build.instructions[0].args == "a     && b"
    env: dict[str, str] = {"A": "0"}
    apply_env(env, final.all("ENV")[0])
    assert env == {"A": "1", "B": "two words", "C": "0"}
    assert command(final) == ["x", "run"]
