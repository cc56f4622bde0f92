"""The Dockerfile, tested without a Docker engine (none runs here, and hadolint is not
installed).

Two kinds of test:

- Static: parse the Dockerfile (instructions, line continuations, comments, exec and shell
  forms, ENV expansion) and check what the image promises: two stages from slim Python, a
  fixed non-root USER, only /opt/venv copied into the final stage, EXPOSE 8099, STOPSIGNAL
  SIGTERM, a HEALTHCHECK that asks liveness (never readiness) without curl, CMD that runs the
  daemon. And `.dockerignore`, with Docker's own matching rules (last match wins, a matched
  directory excludes what is under it).
- Replay: copy the build context as the build stage's COPY lines and `.dockerignore` would,
  run the build stage's RUN lines (parsed from the Dockerfile, never restated here) with
  /opt/venv and WORKDIR mapped to temporary directories, then run the final stage's CMD and
  HEALTHCHECK from that venv with the final stage's ENV, against dev/convex-local and a Mastra
  URL that refuses connections.

What this cannot show: that the base image pulls, that `groupadd`/`useradd` work in it, that
the kernel really enforces `--read-only` (here the daemon's cwd, HOME, TMPDIR and the venv are
watched for writes instead), or Docker's own scheduling of HEALTHCHECK.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support import faults, procs
from tests.support.daemon import log_lines, start_daemon
from tests.support.procs import SECRET

pytestmark = pytest.mark.serial

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


def apply_env(env: dict[str, str], instruction: Instruction, paths: Mapping[str, Path]) -> None:
    """Apply one ENV: every value expands against the environment before the instruction
    (Docker's rule), with container paths mapped to local ones."""
    before = dict(env)
    for key, value in pairs(instruction):
        env[key] = expand(map_paths(value, paths), before)


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


def seconds(duration: str) -> float:
    """A Docker duration (`3s`, `500ms`, `1m30s`) in seconds."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts, duration
    assert "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def map_paths(text: str, paths: Mapping[str, Path]) -> str:
    """`text` with each container path (as a whole path, or a prefix of one) made local."""
    for container, local in paths.items():
        text = re.sub(rf"(?<![\w./-]){re.escape(container)}(?![\w.-])", str(local), text)
    return text


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


# Replaying the build stage ------------------------------------------------------------------


def copy_from_context(
    instruction: Instruction,
    cwd: Path,
    paths: Mapping[str, Path],
    ignore: DockerIgnore,
) -> list[str]:
    """Emulate `COPY src... dest` from the build context (the repo root), skipping what
    `.dockerignore` excludes; a directory's contents go under dest. Returns the files copied,
    relative to the context."""
    flags, _ = instruction.flags()
    assert "from" not in flags, f"line {instruction.line}: COPY --from in the build stage"
    *sources, dest = instruction.words()
    target = Path(map_paths(dest, paths)) if dest.startswith("/") else cwd / dest
    into_dir = dest.endswith("/") or len(sources) > 1
    copied: list[str] = []

    def put(src: Path, dst: Path) -> None:
        rel = src.relative_to(ROOT).as_posix()
        if ignore.ignored(rel):
            return
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        copied.append(rel)

    for source in sources:
        matches = sorted(ROOT.glob(source)) if re.search(r"[*?\[]", source) else [ROOT / source]
        for match in matches:
            if not match.exists() or ignore.ignored(match.relative_to(ROOT).as_posix()):
                continue
            if match.is_dir():
                for file in sorted(p for p in match.rglob("*") if p.is_file()):
                    put(file, target / file.relative_to(match))
            else:
                put(match, target / match.name if into_dir else target)
    assert copied, f"line {instruction.line}: COPY {instruction.args} matched no file"
    return copied


def python_shims(directory: Path) -> Path:
    """`python` and `python3` that run the interpreter running these tests (3.11 as the
    image's), for the build stage's `python -m venv`."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("python", "python3"):
        shim = directory / name
        shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
        shim.chmod(0o755)
    return directory


def replay_build(stage: Stage, paths: Mapping[str, Path], shims: Path, fs_root: Path) -> list[str]:
    """Run the build stage's instructions in order (ARG, ENV, WORKDIR, COPY, RUN) with
    container paths mapped to local ones; any other instruction fails the test, so the replay
    never silently skips a step; `fs_root` stands for `/` (the cwd before any WORKDIR).
    Returns the context files COPY took."""
    ignore = DockerIgnore.load(DOCKERIGNORE)
    env = {"PATH": f"{shims}:{os.environ['PATH']}"}
    cwd = fs_root
    copied: list[str] = []
    for instruction in stage.instructions:
        keyword = instruction.keyword
        if keyword == "LABEL":
            continue
        if keyword == "ARG":
            env.update((k, v) for k, v in pairs(instruction) if k not in env)
        elif keyword == "ENV":
            apply_env(env, instruction, paths)
        elif keyword == "WORKDIR":
            cwd = Path(map_paths(expand(instruction.args, env), paths))
            assert cwd.is_absolute(), f"line {instruction.line}: map WORKDIR {instruction.args}"
            cwd.mkdir(parents=True, exist_ok=True)
        elif keyword == "COPY":
            copied += copy_from_context(instruction, cwd, paths, ignore)
        elif keyword == "RUN":
            flags, text = instruction.flags()
            assert not flags, f"line {instruction.line}: RUN flags {flags} are not replayed"
            argv = (
                [map_paths(w, paths) for w in instruction.words()]
                if text.startswith("[")
                else ["/bin/sh", "-c", map_paths(text, paths)]
            )
            run = subprocess.run(
                argv,
                cwd=cwd,
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            assert run.returncode == 0, (
                f"Dockerfile line {instruction.line}: RUN {text}\n"
                f"exit {run.returncode}\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
            )
        else:
            raise AssertionError(
                f"line {instruction.line}: {keyword} in the build stage is not replayed here"
            )
    return copied


def runtime_env(stage: Stage, paths: Mapping[str, Path]) -> dict[str, str]:
    """The final stage's environment: the base image's, then its ENV lines."""
    env = dict(BASE_ENV)
    for instruction in stage.all("ENV"):
        apply_env(env, instruction, paths)
    return env


def tree(root: Path) -> dict[str, int]:
    """Every path under `root` with its modification time (a directory's changes when an
    entry is added or removed)."""
    return {p.relative_to(root).as_posix(): p.lstat().st_mtime_ns for p in root.rglob("*")}


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


@dataclass(frozen=True)
class Image:
    """The build stage replayed into a temporary directory."""

    venv: Path
    env: dict[str, str]
    cmd: list[str]
    healthcheck: Healthcheck
    copied: list[str]
    seconds: float


@pytest.fixture(scope="module")
def image(dockerfile: Dockerfile, tmp_path_factory: pytest.TempPathFactory) -> Image:
    """Install into a clean venv exactly as the Dockerfile does (once per module: pip
    fetches the runtime dependencies, 15-40 s)."""
    root = tmp_path_factory.mktemp("image")
    workdir = dockerfile.build.last("WORKDIR")
    paths = {VENV: root / "venv"}
    if workdir is not None and workdir.args != "/":
        paths[workdir.args] = root / "build"
    (root / "fs").mkdir()
    started = time.monotonic()
    copied = replay_build(dockerfile.build, paths, python_shims(root / "shims"), root / "fs")
    took = time.monotonic() - started
    return Image(
        venv=root / "venv",
        env=runtime_env(dockerfile.final, {VENV: root / "venv"}),
        cmd=command(dockerfile.final),
        healthcheck=healthcheck(dockerfile.final),
        copied=copied,
        seconds=took,
    )


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


def test_build_stage_installs_the_package_without_dev_extras(dockerfile: Dockerfile) -> None:
    """Scenario: the build stage creates a venv at /opt/venv and pip-installs the project
    itself (`.`), with no `[dev]` extras and no pip cache left in the layer."""
    runs = [r.args for r in dockerfile.build.all("RUN")]
    assert any(re.search(rf"-m venv {re.escape(VENV)}\b", r) for r in runs), runs
    installs = [r for r in runs if re.search(r"\bpip install\b", r)]
    assert len(installs) == 1, installs
    words = shlex.split(installs[0])
    assert "--no-cache-dir" in words
    assert words[-1] == ".", "install the project itself, no extras"
    assert not any("[dev]" in w or w == "-e" for w in words)


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
    env = runtime_env(dockerfile.final, {})
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
    apply_env(env, final.all("ENV")[0], {})
    assert env == {"A": "1", "B": "two words", "C": "0"}
    assert command(final) == ["x", "run"]


# Replay: a clean venv built as the Dockerfile builds it ---------------------------------------


def run_in_image(
    argv: Sequence[str], env: Mapping[str, str], cwd: Path, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    """Run a command as `docker exec` would: the image's environment, not the repo's cwd."""
    return subprocess.run(
        list(argv),
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def http_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@pytest.fixture
def outside(tmp_path: Path) -> dict[str, Path]:
    """Empty directories for the daemon's cwd, HOME and TMPDIR (not the repo)."""
    dirs = {name: tmp_path / name for name in ("cwd", "home", "tmp")}
    for path in dirs.values():
        path.mkdir()
    return dirs


@pytest.mark.timeout(300)
def test_clean_install_has_the_package_and_no_dev_tools(
    image: Image, outside: dict[str, Path]
) -> None:
    """Scenario: after replaying the build stage into an empty venv, the image's PATH finds
    `health-sidecar` in that venv, `import sidecar` resolves inside it (not the repo), the
    package data (py.typed) is installed, and no dev tool (pytest, ruff, mypy) came along."""
    env = {**image.env, "HOME": str(outside["home"]), "PYTHONPATH": ""}
    found = shutil.which(image.cmd[0], path=env["PATH"])
    assert found == str(image.venv / "bin" / image.cmd[0])
    probe = (
        "import importlib.metadata as m, json, sidecar\n"
        "print(json.dumps({'file': sidecar.__file__,"
        " 'dists': [d.metadata['Name'] for d in m.distributions()]}))"
    )
    run = run_in_image([str(image.venv / "bin" / "python"), "-c", probe], env, outside["cwd"])
    assert run.returncode == 0, run.stderr
    info = json.loads(run.stdout)
    dists = {re.sub(r"[-_.]+", "-", name).lower() for name in info["dists"]}  # PEP 503
    package = Path(info["file"]).parent
    assert package.is_relative_to(image.venv), info["file"]
    assert (package / "py.typed").is_file()
    assert {"health-sidecar", "aiohttp", "prometheus-client", "pydantic-settings"} <= dists
    assert not {"pytest", "ruff", "mypy", "pytest-aiohttp"} & dists
    assert "sidecar/main.py" in image.copied
    assert not any("__pycache__" in p for p in image.copied)
    assert not list(outside["cwd"].iterdir())


@pytest.mark.timeout(300)
def test_daemon_from_the_clean_venv_liveness_ignores_mastra(
    image: Image, convex_local: procs.Proc, outside: dict[str, Path], tmp_path: Path
) -> None:
    """Scenario: the Dockerfile's CMD, run from the clean venv with the image's ENV (Convex
    up, Mastra refusing connections, cwd/HOME/TMPDIR empty directories outside the repo):
    the HEALTHCHECK command exits 0 within its timeout while the daemon is live although
    `check --ready` exits 1 because Mastra is down; during the SIGTERM drain the HEALTHCHECK
    still passes; the daemon exits 0 and the HEALTHCHECK then exits 1. The daemon wrote
    nothing to disk (cwd, HOME, TMPDIR and the venv unchanged) and only JSON to stdout."""
    port = procs.free_port()
    env = {
        **image.env,
        "SIDECAR_HOST": "127.0.0.1",
        "SIDECAR_PORT": str(port),
        "CONVEX_URL": convex_local.url,
        "MASTRA_URL": faults.refused_url(),
        "HEALTH_SIDECAR_SECRET": SECRET,
        "SIDECAR_INSTANCE": f"docker-{uuid.uuid4().hex[:8]}",
        "SIDECAR_INTERVAL": "1",
        "SIDECAR_TIMEOUT": "0.5",
        "SIDECAR_DRAIN_SECONDS": "3",
        "HOME": str(outside["home"]),
        "TMPDIR": str(outside["tmp"]),
        "PYTHONPATH": "",
    }
    check_timeout = seconds(image.healthcheck.options["timeout"])
    venv_before = tree(image.venv)
    daemon = start_daemon(
        env, tmp_path / "daemon.log", port=port, command=image.cmd, cwd=outside["cwd"]
    )
    try:
        cmdline = Path(f"/proc/{daemon.popen.pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[1].decode() == str(image.venv / "bin" / image.cmd[0]), cmdline

        deadline = time.monotonic() + 15
        ready: tuple[int, Any] = (0, None)
        while time.monotonic() < deadline:
            ready = http_json(f"{daemon.url}/ready")
            if ready[0] == 503 and ready[1].get("reasons") == ["mastra is fail"]:
                break
            time.sleep(0.1)
        assert ready == (503, {"ready": False, "reasons": ["mastra is fail"]}), ready
        status, health = http_json(f"{daemon.url}/health")
        assert (status, health["services"]["convex"]) == (503, "ok"), health

        started = time.monotonic()
        live = run_in_image(image.healthcheck.argv, env, outside["cwd"])
        took = time.monotonic() - started
        assert live.returncode == 0, live.stderr
        assert took < check_timeout, f"HEALTHCHECK took {took:.2f}s (timeout {check_timeout}s)"
        not_ready = run_in_image([*image.healthcheck.argv, "--ready"], env, outside["cwd"])
        assert not_ready.returncode == 1, not_ready.stderr

        os.kill(daemon.popen.pid, signal.SIGTERM)  # what `docker stop` sends to PID 1
        draining = run_in_image(image.healthcheck.argv, env, outside["cwd"])
        assert daemon.popen.poll() is None, "the daemon should still be draining"
        assert draining.returncode == 0, draining.stderr
        assert daemon.popen.wait(timeout=15) == 0
        after = run_in_image(image.healthcheck.argv, env, outside["cwd"])
        assert after.returncode == 1
    finally:
        daemon.stop()

    for name, path in outside.items():
        assert not list(path.rglob("*")), f"the daemon wrote into its {name}"
    assert tree(image.venv) == venv_before, "something wrote into the venv at runtime"
    messages = [line["message"] for line in log_lines(daemon)]  # every line is JSON
    assert "listening" in messages
    assert messages[-1] == "stopped"
