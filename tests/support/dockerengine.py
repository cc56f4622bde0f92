"""A real Docker engine for the tests, kept on loopback: the engine that answers, or Debian's
`dockerd` started here (and stopped by its PID); the image's base, pulled or built from Debian
packages when no registry answers; the image built from the checkout.

The engine started here has no bridge (`--bridge=none`, no iptables rules, no forwarding): every
build and container uses the host's network namespace or another container's, so all traffic
stays on 127.0.0.1. `make test` installs `docker.io` and `mmdebstrap` (Makefile, `docker-debs`).
"""

from __future__ import annotations

import configparser
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import procs

SLIM = "python:3.11-slim"
# The stand-in for python:3.11-slim when no registry answers: Debian bookworm's Python 3.11.
STANDIN_PACKAGES = ("python3", "python3-venv", "python-is-python3", "passwd", "ca-certificates")
STANDIN_SUITE = "bookworm"
_STANDIN_RECIPE = f"{STANDIN_SUITE} minbase {' '.join(STANDIN_PACKAGES)} nodoc"
# Tagged by its recipe, so a second run reuses it and a changed recipe builds a new one.
STANDIN_TAG = (
    f"health-sidecar-test/python:3.11-{STANDIN_SUITE}-"
    + hashlib.sha256(_STANDIN_RECIPE.encode()).hexdigest()[:8]
)
DOCKERD_FLAGS = (
    "--bridge=none",
    "--iptables=false",
    "--ip6tables=false",
    "--ip-forward=false",
    "--ip-masq=false",
)
LOCK = Path(tempfile.gettempdir()) / "health-sidecar-dockerd.lock"
DEBS_HINT = "`make test` installs them (Makefile target docker-debs: docker.io, mmdebstrap)"


class EngineError(RuntimeError):
    """The engine, the base image or the build could not be had; the message says why."""


@dataclass
class Engine:
    """A docker CLI that builds with BuildKit and the engine it talks to."""

    cli: str
    env: dict[str, str]
    version: str
    dockerd: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    created: list[str] = field(default_factory=list)

    def docker(
        self,
        *args: str,
        timeout: float = 60,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `docker ARGS`; with `check`, a non-zero exit raises with its output."""
        run = subprocess.run(
            [self.cli, *args],
            env={**self.env, **(env or {})},
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and run.returncode != 0:
            raise EngineError(
                f"docker {' '.join(args[:3])}... exited {run.returncode}:\n"
                f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
            )
        return run

    def has_image(self, ref: str) -> bool:
        return self.docker("image", "inspect", ref, check=False).returncode == 0

    def run_detached(self, *args: str, env: Mapping[str, str] | None = None) -> str:
        """`docker run -d ARGS`; the container's id, remembered for `remove_created`."""
        cid = self.docker("run", "-d", *args, env=env).stdout.strip()
        self.created.append(cid)
        return cid

    def remove_created(self) -> None:
        """Remove the containers `run_detached` started (by id), newest first."""
        while self.created:
            self.docker("rm", "--force", "--volumes", self.created.pop(), check=False)


def _cli() -> tuple[str, dict[str, str]]:
    """A docker CLI that builds with BuildKit: one with the buildx plugin, or one before
    Docker 23 (BuildKit built in, `DOCKER_BUILDKIT=1`): Debian bookworm's docker.io."""
    candidates = dict.fromkeys(
        p for p in (shutil.which("docker"), "/usr/bin/docker", "/usr/local/bin/docker") if p
    )
    tried = []
    for cli in candidates:
        if not os.access(cli, os.X_OK):
            continue
        env = {**os.environ, "DOCKER_BUILDKIT": "1"}
        buildx = subprocess.run([cli, "buildx", "version"], capture_output=True, env=env)
        if buildx.returncode == 0:
            return cli, env
        out = subprocess.run(
            [cli, "version", "--format", "{{.Client.Version}}"],
            capture_output=True,
            text=True,
            env=env,
        ).stdout
        match = re.match(r"(\d+)\.", out)
        if match and int(match.group(1)) < 23:
            return cli, env
        tried.append(f"{cli} ({out.strip() or 'no version'}, no buildx)")
    raise EngineError(
        f"no docker CLI that builds with BuildKit (tried: {', '.join(tried) or 'none found'}); "
        + DEBS_HINT
    )


def _server_version(cli: str, env: Mapping[str, str]) -> str | None:
    run = subprocess.run(
        [cli, "version", "--format", "{{.Server.Version}}"],
        capture_output=True,
        text=True,
        env=dict(env),
        timeout=20,
    )
    return run.stdout.strip() if run.returncode == 0 and run.stdout.strip() else None


@contextlib.contextmanager
def _lock(timeout: float) -> Iterator[None]:
    """One dockerd of ours at a time on this machine (they would share /var/lib/docker)."""
    with LOCK.open("w") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise EngineError(
                        f"another test session holds {LOCK} (its dockerd) for over {timeout:.0f}s"
                    ) from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def engine(log_dir: Path, start_timeout: float = 60) -> Iterator[Engine]:
    """The Docker engine that answers (left running), else Debian's dockerd started here on a
    socket of its own, without a bridge, and stopped by its PID afterwards. Raises
    EngineError, saying why, when there is none and none can start."""
    cli, env = _cli()
    version = _server_version(cli, env)
    if version is not None:
        eng = Engine(cli=cli, env=env, version=version)
        try:
            yield eng
        finally:
            eng.remove_created()
        return
    dockerd = shutil.which("dockerd") or (
        "/usr/sbin/dockerd" if Path("/usr/sbin/dockerd").exists() else None
    )
    if dockerd is None:
        raise EngineError(f"no Docker engine answers and dockerd is not installed; {DEBS_HINT}")
    if os.geteuid() != 0:
        raise EngineError("no Docker engine answers, and starting dockerd needs root")
    with _lock(timeout=300):
        run_dir = Path(tempfile.mkdtemp(prefix="hs-dockerd-", dir="/tmp"))  # a short socket path
        sock = run_dir / "docker.sock"
        log = log_dir / "dockerd.log"
        argv = [
            dockerd,
            "--host",
            f"unix://{sock}",
            "--pidfile",
            str(run_dir / "dockerd.pid"),
            "--exec-root",
            str(run_dir / "exec"),
            *DOCKERD_FLAGS,
        ]
        popen = procs.spawn(argv, log=log, env=os.environ)
        eng_env = {**env, "DOCKER_HOST": f"unix://{sock}"}
        try:
            deadline = time.monotonic() + start_timeout
            while (version := _server_version(cli, eng_env)) is None:
                if popen.poll() is not None or time.monotonic() > deadline:
                    state = (
                        f"exited {popen.returncode}"
                        if popen.poll() is not None
                        else f"did not answer within {start_timeout:.0f}s"
                    )
                    raise EngineError(
                        f"dockerd {state}; its log ({log}):\n"
                        + log.read_text(errors="replace")[-4000:]
                    )
                time.sleep(0.25)
            eng = Engine(cli=cli, env=eng_env, version=version, dockerd=popen, log=log)
            try:
                yield eng
            finally:
                eng.remove_created()
        finally:
            procs.stop_process(popen, timeout=30)
            unmount_under(run_dir)  # dockerd leaves its exec-root's netns/default mounted
            shutil.rmtree(run_dir, ignore_errors=True)


def unmount_under(root: Path) -> None:
    """Unmount whatever is mounted under `root` (deepest first), so it can be removed."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
        if Path(point).is_relative_to(root):
            points.append(point)
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", point], capture_output=True, timeout=30, check=False)


# The base image -------------------------------------------------------------------------------


def base_image(eng: Engine, work: Path) -> str:
    """python:3.11-slim when the engine has it or can pull it; else the stand-in built from
    Debian packages (cached by its tag: built once)."""
    for ref in (SLIM, STANDIN_TAG):
        if eng.has_image(ref):
            return ref
    if eng.docker("pull", "--quiet", SLIM, check=False, timeout=120).returncode == 0:
        return SLIM
    build_standin(eng, work)
    return STANDIN_TAG


def build_standin(eng: Engine, work: Path) -> None:
    """Debian bookworm (minbase) with its Python 3.11, venv, `python` and passwd, made by
    mmdebstrap and imported as STANDIN_TAG with python:3.11-slim's PATH and LANG."""
    mmdebstrap = shutil.which("mmdebstrap")
    if mmdebstrap is None:
        raise EngineError(f"{SLIM} cannot be pulled and mmdebstrap is not installed; {DEBS_HINT}")
    tar = work / "standin.tar"
    argv = [
        mmdebstrap,
        "--quiet",
        "--variant=minbase",
        f"--include={','.join(STANDIN_PACKAGES)}",
        *(f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("doc", "man", "locale")),
        STANDIN_SUITE,
        str(tar),
    ]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    if run.returncode != 0:
        raise EngineError(f"mmdebstrap exited {run.returncode}:\n{run.stderr[-4000:]}")
    eng.docker(
        "import",
        "--change",
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--change",
        "ENV LANG=C.UTF-8",
        "--change",
        'CMD ["python3"]',
        str(tar),
        STANDIN_TAG,
        timeout=300,
    )
    tar.unlink()


def base_with_pip(eng: Engine, base: str, work: Path) -> str:
    """`base` as python:*-slim ships, pip and setuptools in /usr/local, on PATH: for the base
    python:3.11-slim itself, else `base` with a venv at /usr/local (built without network)."""
    if base == SLIM:
        return SLIM
    image_id = eng.docker("image", "inspect", "--format", "{{.Id}}", base).stdout.strip()
    tag = f"health-sidecar-test/python-with-pip:{image_id.removeprefix('sha256:')[:12]}"
    if not eng.has_image(tag):
        (work / "with-pip").mkdir(exist_ok=True)
        (work / "with-pip" / "Dockerfile").write_text(
            f"FROM {base}\n"
            "RUN python3 -m venv /usr/local && /usr/local/bin/python3 -m pip --version\n"
        )
        eng.docker("build", "--network", "none", "--tag", tag, str(work / "with-pip"), timeout=300)
    return tag


# Building the image ---------------------------------------------------------------------------

# pip settings that name files on this machine, or are replaced by the CA secret, or would
# move the install: left out of the pip.conf the build gets.
_PIP_DROPPED = {"cert", "client-cert", "cache-dir", "log", "target", "prefix", "root", "src"}
_PIP_URL_LISTS = {"index-url", "extra-index-url", "find-links", "constraint", "requirement"}


def pip_config_for_build(listing: str) -> str:
    """`pip config list` of this machine as a pip.conf for the build: every setting, except
    local paths and file URLs (not in the build) and the CA bundle (its own secret)."""
    parser = configparser.ConfigParser(interpolation=None)
    for line in listing.splitlines():
        match = re.fullmatch(r"([^=\s]+)\.([\w-]+)='(.*)'", line.strip())
        if not match:
            continue
        section, key, value = match.groups()
        section = "global" if section == ":env:" else section
        if key in _PIP_DROPPED:
            continue
        if key in _PIP_URL_LISTS:
            value = " ".join(v for v in value.split() if v.startswith(("http://", "https://")))
            if not value:
                continue
        if not parser.has_section(section):
            parser.add_section(section)
        parser.set(section, key, value)
    out: list[str] = []
    for section in parser.sections():
        out.append(f"[{section}]")
        out.extend(f"{k} = {v}" for k, v in parser.items(section))
    return "\n".join(out) + "\n"


def ca_bundle() -> Path | None:
    """The CA bundle pip uses here (its `cert` setting), else the system's."""
    listing = _pip_config_listing()
    found = re.findall(r"^(?:global|:env:|install)\.cert='(.*)'$", listing, re.MULTILINE)
    for candidate in [*found, ssl.get_default_verify_paths().cafile or ""]:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def _pip_config_listing() -> str:
    return subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout


@dataclass(frozen=True)
class Build:
    tag: str
    base: str
    seconds: float
    output: str
    pip_conf: str


def build_image(
    eng: Engine, *, tag: str, base: str, version: str, work: Path, context: Path = procs.ROOT
) -> Build:
    """`docker build` of the checkout, host network, with this machine's pip settings and CA
    bundle as build secrets (never a build argument, never in a layer)."""
    pip_conf = pip_config_for_build(_pip_config_listing())
    conf_file = work / "pip.conf"
    conf_file.write_text(pip_conf)
    conf_file.chmod(0o600)
    secrets: list[str] = ["--secret", f"id=pip.conf,src={conf_file}"]
    if (ca := ca_bundle()) is not None:
        secrets += ["--secret", f"id=ca.crt,src={ca}"]
    argv: Sequence[str] = (
        "build",
        "--progress=plain",
        "--network",
        "host",
        *secrets,
        "--build-arg",
        f"PYTHON_IMAGE={base}",
        "--build-arg",
        f"VERSION={version}",
        "--tag",
        tag,
        str(context),
    )
    started = time.monotonic()
    try:
        run = eng.docker(*argv, timeout=300, check=False)
    finally:
        conf_file.unlink()
    took = time.monotonic() - started
    if run.returncode != 0:
        raise EngineError(f"docker build exited {run.returncode}:\n{run.stderr[-6000:]}")
    return Build(
        tag=tag, base=base, seconds=took, output=run.stderr + run.stdout, pip_conf=pip_conf
    )
