"""The image on a real Docker engine, run as docs/deploy/docker.md says.

The image is built from the checkout (tests/clients/docker/conftest.py); the engine has no
bridge, so the "app" container runs in the host's network namespace (`python -m http.server`
on 127.0.0.1) and the sidecar joins it with `--network container:<app>`, the documented
topology; dev/convex-local and the real Mastra server run on 127.0.0.1 beside them.
"""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import sidecar
from tests.support import dockerengine, procs
from tests.support.dockerengine import Build, Engine
from tests.support.procs import SECRET

# The first run builds the base and the image (about 90 s of setup): more than the default 120 s
# per test on a loaded machine.
pytestmark = [pytest.mark.serial, pytest.mark.slow, pytest.mark.timeout(300)]

RUN_FLAGS = (
    "--read-only",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
    "--stop-timeout",
    "30",
)
UID = "10001"


def http(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:  # not listening (yet, or any more)
        return 0, str(exc)


def wait_for(what: str, probe: Callable[[], bool], timeout: float, why: Callable[[], str]) -> None:
    """Poll `probe` every 0.2 s until it holds; fail after `timeout` with `why()`."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {timeout:.0f}s: {why()}")
        time.sleep(0.2)


def inspect(eng: Engine, ref: str, template: str) -> Any:
    return json.loads(eng.docker("inspect", "--format", "{{json " + template + "}}", ref).stdout)


# The image ------------------------------------------------------------------------------------


def test_version_label_is_the_package_version(docker_engine: Engine, built_image: Build) -> None:
    """Scenario: the built image's org.opencontainers.image.version label, the version
    installed in it (`health-sidecar --version`) and sidecar.__version__ of the checkout are
    one and the same."""
    labels = inspect(docker_engine, built_image.tag, ".Config.Labels")
    assert labels["org.opencontainers.image.version"] == sidecar.__version__, labels
    run = docker_engine.docker(
        "run",
        "--rm",
        "--network",
        "none",
        *RUN_FLAGS,
        built_image.tag,
        "health-sidecar",
        "--version",
    )
    assert run.stdout.split() == ["health-sidecar", sidecar.__version__], run.stdout


def test_a_version_argument_other_than_the_package_stops_the_build(
    docker_engine: Engine, built_image: Build
) -> None:
    """Scenario: a VERSION build argument that differs from the package stops the build with
    a message naming the argument and the package's version (the build stages before it come
    from the cache)."""
    run = docker_engine.docker(
        "build",
        "--progress=plain",
        "--network",
        "host",
        "--build-arg",
        f"PYTHON_IMAGE={built_image.base}",
        "--build-arg",
        "VERSION=9.9.9",
        "--target",
        "build",
        str(procs.ROOT),
        timeout=300,
        check=False,
    )
    assert run.returncode != 0
    assert f"build argument VERSION='9.9.9', but the package is {sidecar.__version__}" in (
        run.stderr
    ), run.stderr[-3000:]


def test_without_a_version_argument_the_label_is_empty(
    docker_engine: Engine, built_image: Build, tmp_path: Path
) -> None:
    """Scenario: a plain `docker build` (no VERSION, as docker compose builds it) succeeds
    and its version label is empty: never a version other than the package's."""
    iidfile = tmp_path / "iid"
    docker_engine.docker(
        "build",
        "--network",
        "host",
        "--build-arg",
        f"PYTHON_IMAGE={built_image.base}",
        "--iidfile",
        str(iidfile),
        str(procs.ROOT),
        timeout=300,
    )
    image = iidfile.read_text().strip()
    try:
        labels = inspect(docker_engine, image, ".Config.Labels")
        assert labels["org.opencontainers.image.version"] == "", labels
    finally:
        if image != inspect(docker_engine, built_image.tag, ".Id"):
            docker_engine.docker("image", "rm", image, check=False)


PROBE = """
import importlib.metadata, importlib.util, json, re, shutil, sys
print(json.dumps({
    "python": sys.executable,
    "modules": [m for m in ("pip", "setuptools", "wheel", "pkg_resources")
                if importlib.util.find_spec(m)],
    "tools": [t for t in ("pip", "pip3", "easy_install") if shutil.which(t)],
    "dists": sorted(re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower()
                    for d in importlib.metadata.distributions()),
}))
"""


def probe_pythons(eng: Engine, image: str) -> list[dict[str, Any]]:
    """PROBE's answer from each python the image has: the venv's first, then the base's."""
    pythons = ("/opt/venv/bin/python", "/usr/local/bin/python3", "/usr/bin/python3")
    script = "for p in " + " ".join(pythons) + '; do [ ! -x "$p" ] || "$p" -c "$0"; done'
    run = eng.docker(
        "run", "--rm", "--network", "none", *RUN_FLAGS, image, "sh", "-c", script, PROBE
    )
    return [json.loads(line) for line in run.stdout.splitlines()]


def test_runtime_has_no_packaging_tools_and_no_build_secrets(
    docker_engine: Engine, built_image: Build
) -> None:
    """Scenario: neither the venv's python nor the base's finds pip, setuptools, wheel or
    pkg_resources, no pip executable is on PATH; the venv holds the package and its runtime
    dependencies, no dev tool; the build's pip settings and CA bundle (build secrets) left
    nothing behind: no PIP_ variable, nothing under /run/secrets, not in the history."""
    found = probe_pythons(docker_engine, built_image.tag)
    assert found[0]["python"] == "/opt/venv/bin/python", found
    assert len(found) >= 2, "the base's python was not found"
    for each in found:
        assert (each["modules"], each["tools"]) == ([], []), each
    dists = set(found[0]["dists"])
    assert {"health-sidecar", "aiohttp", "prometheus-client", "pydantic-settings"} <= dists
    assert not {"pytest", "ruff", "mypy", "pytest-aiohttp", "pip", "setuptools"} & dists
    env = inspect(docker_engine, built_image.tag, ".Config.Env")
    assert not [e for e in env if e.startswith(("PIP_CERT", "PIP_CONFIG_FILE"))], env
    secrets = docker_engine.docker(
        "run", "--rm", "--network", "none", built_image.tag, "ls", "-A", "/run/secrets", check=False
    )
    assert secrets.stdout.strip() == "", secrets.stdout
    history = docker_engine.docker("history", "--no-trunc", built_image.tag).stdout
    for line in built_image.pip_conf.splitlines():
        key, eq, value = line.partition(" = ")
        if eq:
            assert f"{key}={value}" not in history.replace(" = ", "="), line


def test_a_base_that_ships_pip_loses_it(
    docker_engine: Engine, built_image: Build, tmp_path: Path
) -> None:
    """Scenario: built on a base that has pip and setuptools on PATH outside the venv (as
    python:3.11-slim has), the image keeps neither: no python finds them, no pip on PATH, and
    removing them printed no warning."""
    try:
        base = dockerengine.base_with_pip(docker_engine, built_image.base, tmp_path)
        build = dockerengine.build_image(
            docker_engine,
            tag="health-sidecar:test-base-with-pip",
            base=base,
            version=sidecar.__version__,
            work=tmp_path,
        )
    except dockerengine.EngineError as exc:
        pytest.fail(str(exc), pytrace=False)
    assert not re.search(r"(?i)\bwarning\b", build.output), build.output[-3000:]
    found = probe_pythons(docker_engine, build.tag)
    assert "/usr/local/bin/python3" in [f["python"] for f in found], found
    for each in found:
        assert (each["modules"], each["tools"]) == ([], []), each


def test_user_is_created_without_a_warning(docker_engine: Engine, built_image: Build) -> None:
    """Scenario: the image runs as 10001:10001, a uid that the base's login.defs puts in the
    range `useradd` gives without `--system` (above SYS_UID_MAX a `--system` user warns), and
    the build printed no warning."""
    assert inspect(docker_engine, built_image.tag, ".Config.User") == f"{UID}:{UID}"
    defs = docker_engine.docker(
        "run", "--rm", "--network", "none", built_image.base, "cat", "/etc/login.defs"
    ).stdout
    values = dict(re.findall(r"^\s*((?:SYS_)?UID_M(?:IN|AX))\s+(\d+)", defs, re.MULTILINE))
    uid_min, uid_max = int(values.get("UID_MIN", 1000)), int(values.get("UID_MAX", 60000))
    dockerfile = (procs.ROOT / "Dockerfile").read_text()
    useradd = re.search(r"(?:RUN|&&)\s+useradd\b[^\n]*(?:\\\n[^\n]*)*", dockerfile)
    assert useradd is not None
    assert "--system" not in useradd.group(0)
    assert f"--uid {UID}" in useradd.group(0)
    assert uid_min <= int(UID) <= uid_max, values
    assert not re.search(r"(?i)\bwarning\b", built_image.output), built_image.output[-3000:]


# The sidecar beside an app --------------------------------------------------------------------


@dataclass
class Deployment:
    app: str
    sidecar: str
    url: str
    mastra: procs.Proc


@pytest.fixture
def deployment(
    docker_engine: Engine,
    built_image: Build,
    convex_local: procs.Proc,
    tmp_path: Path,
) -> Iterator[Deployment]:
    """An app container on the host's network (http.server on 127.0.0.1) and the sidecar in
    its network namespace, as docs/deploy/docker.md runs it; a Mastra server of its own
    (this test stops it)."""
    app_port, port = procs.free_port(), procs.free_port()
    with procs.mastra(tmp_path / "mastra.log") as mastra:
        try:
            app = docker_engine.run_detached(
                "--network",
                "host",
                *RUN_FLAGS,
                "--user",
                UID,
                built_image.base,
                "python",
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                "--directory",
                "/srv",
                str(app_port),
            )
            procs.wait_http(f"http://127.0.0.1:{app_port}/", timeout=30)
            settings = {
                "CONVEX_URL": convex_local.url,
                "MASTRA_URL": mastra.url,
                "SIDECAR_APP_URL": f"http://127.0.0.1:{app_port}/",
                "SIDECAR_HOST": "127.0.0.1",
                "SIDECAR_PORT": str(port),
                "SIDECAR_INSTANCE": f"docker-{uuid.uuid4().hex[:8]}",
                "SIDECAR_INTERVAL": "1",
                "SIDECAR_TIMEOUT": "0.5",
                "SIDECAR_DRAIN_SECONDS": "3",
            }
            env_args = [a for k, v in settings.items() for a in ("--env", f"{k}={v}")]
            sidecar_id = docker_engine.run_detached(
                *RUN_FLAGS,
                "--network",
                f"container:{app}",
                *env_args,
                "--env",
                "HEALTH_SIDECAR_SECRET",  # its value from the CLI's environment, not argv
                built_image.tag,
                env={"HEALTH_SIDECAR_SECRET": SECRET},
            )
            yield Deployment(app, sidecar_id, f"http://127.0.0.1:{port}", mastra)
        finally:
            docker_engine.remove_created()


def test_sidecar_beside_an_app(docker_engine: Engine, deployment: Deployment) -> None:
    """Scenario: the sidecar container runs as uid 10001 (PID 1); `/live`, `/ready`,
    `/health` and `/metrics` answer as docs/endpoints.md says; `check` and `check --ready`
    through `docker exec`; HEALTHCHECK turns `healthy` and stays healthy while Mastra hangs
    (SIGSTOP) and `/health` reports it; nothing is written to the file system (`docker diff`
    empty); `docker stop` drains (the log shows `draining` and `stopped`) and exits 0."""
    eng, cid, url = docker_engine, deployment.sidecar, deployment.url

    def logs() -> str:
        run = eng.docker("logs", cid, check=False)
        return run.stdout[-3000:] + run.stderr[-3000:]

    wait_for("/ready 200", lambda: http(url + "/ready")[0] == 200, 30, logs)
    status = eng.docker("exec", cid, "cat", "/proc/1/status").stdout
    assert re.search(rf"^Uid:\s+{UID}\s+{UID}\s+{UID}\s+{UID}$", status, re.MULTILINE), status
    assert re.search(rf"^Gid:\s+{UID}\s", status, re.MULTILINE), status
    assert re.search(r"^CapEff:\s+0+$", status, re.MULTILINE), status

    assert http(url + "/live")[0] == 200
    assert json.loads(http(url + "/ready")[1]) == {"ready": True}
    code, body = http(url + "/health")
    health = json.loads(body)
    assert (code, health["status"]) == (200, "ok"), body
    assert {"convex", "mastra", "app", "store"} <= set(health["services"]), body
    assert set(health["services"].values()) == {"ok"}, body
    code, metrics = http(url + "/metrics")
    assert code == 200
    assert re.search(r"^sidecar_ready 1\.0$", metrics, re.MULTILINE), metrics
    assert eng.docker("exec", cid, "health-sidecar", "check").returncode == 0
    assert eng.docker("exec", cid, "health-sidecar", "check", "--ready").returncode == 0

    def health_status() -> dict[str, Any]:
        state: dict[str, Any] = inspect(eng, cid, ".State.Health")
        return state

    wait_for("healthy", lambda: health_status()["Status"] == "healthy", 40, logs)

    deployment.mastra.popen.send_signal(signal.SIGSTOP)  # Mastra accepts, never answers
    try:
        wait_for(
            "/health to show mastra failing",
            lambda: json.loads(http(url + "/health")[1])["services"]["mastra"] == "error",
            20,
            logs,
        )
        outage = time.time()

        def checked_since_outage() -> bool:
            runs = health_status()["Log"]
            return any(_timestamp(r["Start"]) > outage for r in runs)

        wait_for("a HEALTHCHECK run during the outage", checked_since_outage, 25, logs)
        state = health_status()
        assert state["Status"] == "healthy", state
        assert state["FailingStreak"] == 0, state
        assert http(url + "/live")[0] == 200
    finally:
        deployment.mastra.popen.send_signal(signal.SIGCONT)

    diff = eng.docker("diff", cid).stdout
    assert diff.strip() == "", diff

    stop = eng.docker("stop", cid, timeout=60)
    assert stop.returncode == 0
    state = inspect(eng, cid, ".State")
    assert (state["Status"], state["ExitCode"], state["OOMKilled"]) == ("exited", 0, False), state
    messages = [json.loads(line)["message"] for line in eng.docker("logs", cid).stdout.splitlines()]
    assert "draining" in messages, messages
    assert messages[-1] == "stopped", messages


def _timestamp(text: str) -> float:
    """Docker's RFC 3339 time (nanoseconds, `Z`) as epoch seconds."""
    micro = re.sub(r"(\.\d{1,6})\d*", r"\1", text).replace("Z", "+00:00")
    return datetime.fromisoformat(micro).timestamp()


def test_config_and_check_through_docker_run(
    docker_engine: Engine, built_image: Build, convex_local: procs.Proc
) -> None:
    """Scenario: `health-sidecar config` through `docker run --read-only` prints the effective
    settings as JSON with the secret masked (its value given by name, never in argv); `check`
    with no daemon running exits 1; a bad setting exits 2 naming the variable."""
    base = ["run", "--rm", "--network", "none", *RUN_FLAGS]
    secret_env = {"HEALTH_SIDECAR_SECRET": SECRET}
    config = docker_engine.docker(
        *base,
        "--env",
        f"CONVEX_URL={convex_local.url}",
        "--env",
        "HEALTH_SIDECAR_SECRET",
        built_image.tag,
        "health-sidecar",
        "config",
        env=secret_env,
    )
    assert SECRET not in config.stdout + config.stderr
    settings = json.loads(config.stdout)
    assert convex_local.url in json.dumps(settings), settings
    check = docker_engine.docker(*base, built_image.tag, "health-sidecar", "check", check=False)
    assert check.returncode == 1, check
    bad = docker_engine.docker(
        *base,
        "--env",
        f"CONVEX_URL={convex_local.url}",
        "--env",
        "HEALTH_SIDECAR_SECRET",
        "--env",
        "SIDECAR_INTERVAL=fast",
        built_image.tag,
        "health-sidecar",
        "config",
        env=secret_env,
        check=False,
    )
    assert bad.returncode == 2, bad
    assert "SIDECAR_INTERVAL" in bad.stderr + bad.stdout
