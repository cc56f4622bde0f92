"""`make demo` (dev/demo.py): the stand-ins and the daemon on loopback, what to curl, the
environment for the CLI, children that take signals as any process does, and a Ctrl-C that
drains the daemon as in production before it stops the rest."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import procs
from tests.support.daemon import clean_env, metric

pytestmark = pytest.mark.slow

BANNER = "Ctrl-C stops everything"
SERVER = re.compile(r"^  ([A-Za-z ()-]+?)\s+(http://\S+)\s.*pid (\d+)", re.M)
DRAIN_SHOWS = 15.0  # the demo's store interval (5 s), its call, and a loaded machine
STOP_BOUND = 30.0  # the demo's drain (3 s), the daemon's last sync, the stand-ins' stops


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@dataclass
class Demo:
    """A running `dev/demo.py`: its process, its output, the servers it named."""

    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def servers(self) -> dict[str, tuple[str, int]]:
        """name -> (url, pid), as the banner lists them."""
        return {name.strip(): (url, int(pid)) for name, url, pid in SERVER.findall(self.output())}

    def logs_dir(self) -> Path:
        found = re.search(r"\(logs in (\S+)\):", self.output())
        assert found, self.output()
        return Path(found.group(1))

    def export_line(self) -> str:
        lines = [line.strip() for line in self.output().splitlines()]
        exports = [line for line in lines if line.startswith("export ")]
        assert len(exports) == 1, self.output()
        return exports[0]


def start_demo(tmp: Path) -> Demo:
    """Run dev/demo.py from a directory outside the repository (the harness it imports is a
    package of the checkout, not a sys.path trick), in a session of its own, until its banner."""
    log = tmp / "demo.log"
    popen = procs.spawn(
        [sys.executable, str(procs.ROOT / "dev" / "demo.py")],
        log=log,
        env=clean_env({}),
        cwd=tmp,
    )
    demo = Demo(popen, log)
    deadline = time.monotonic() + 60
    while BANNER not in demo.output() and popen.poll() is None:
        if time.monotonic() > deadline:
            procs.stop_process(popen)
            raise AssertionError(demo.output())
        time.sleep(0.1)
    assert BANNER in demo.output(), demo.output()
    return demo


def test_make_demo_installs_no_debian_packages() -> None:
    """`make demo` depends on the Python and npm packages only: what `make -n demo` would run
    has no apt-get (the README says only `make test` installs Debian packages)."""
    dry = subprocess.run(
        ["make", "-n", "demo"], cwd=procs.ROOT, capture_output=True, text=True, timeout=30
    )
    assert dry.returncode == 0, dry.stderr
    assert "dev/demo.py" in dry.stdout
    assert "apt-get" not in dry.stdout, dry.stdout
    assert "dpkg" not in dry.stdout, dry.stdout


def test_ctrl_c_drains_the_daemon_then_stops_everything(tmp_path: Path) -> None:
    """SIGINT to the demo (what Ctrl-C sends): the daemon drains as in production (its log
    says `draining`, then `stopped`, and it exits 0), then the stand-ins stop; the demo exits
    0 within a bound and nothing it started is left."""
    demo = start_demo(tmp_path)
    try:
        servers = demo.servers()
        sidecar_url, _ = servers["health-sidecar"]
        with urllib.request.urlopen(sidecar_url + "/live", timeout=5) as resp:
            assert resp.status == 200
        procs.wait_http(sidecar_url + "/ready", timeout=30, status=200)
        started = time.monotonic()
        os.killpg(demo.popen.pid, signal.SIGINT)
        status = demo.popen.wait(STOP_BOUND)
        took = time.monotonic() - started
    finally:
        procs.stop_process(demo.popen)
    output = demo.output()
    sidecar_log = (demo.logs_dir() / "sidecar.log").read_text()
    lines = [json.loads(line) for line in sidecar_log.splitlines()]
    messages = [line["message"] for line in lines]
    assert "draining" in messages, messages
    assert messages[-1] == "stopped", messages
    draining = next(line for line in lines if line["message"] == "draining")
    assert draining["signal"] == "SIGTERM"
    assert status == 0, output
    assert "health-sidecar exited with status 0" in output, output
    assert output.rstrip().endswith("stopped."), output
    assert not [pid for _, pid in servers.values() if alive(pid)], output
    print(f"demo stopped {took:.1f} s after SIGINT")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """One demo for the tests that only look at it."""
    running = start_demo(tmp_path_factory.mktemp("demo"))
    try:
        yield running
    finally:
        procs.stop_process(running.popen, timeout=STOP_BOUND)


def signal_mask(pid: int, field: str) -> int:
    """A signal set of /proc/PID/status (`SigBlk`, `SigIgn`) as a bit mask."""
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(rf"^{field}:\s*([0-9a-f]+)$", status, re.M)
    assert found, status
    return int(found.group(1), 16)


def bit(signum: int) -> int:
    return 1 << (signum - 1)


def test_children_take_sigint_and_sigterm(demo: Demo) -> None:
    """The daemon and both stand-ins have neither SIGINT nor SIGTERM blocked or ignored (the
    demo once blocked both for itself, its children inherited the mask, and `kill -TERM` on
    the daemon did nothing)."""
    servers = demo.servers()
    assert sorted(servers) == ["Convex stand-in", "Mastra (real)", "health-sidecar"], servers
    for name, (_, pid) in servers.items():
        for field in ("SigBlk", "SigIgn"):
            mask = signal_mask(pid, field)
            assert not mask & (bit(signal.SIGINT) | bit(signal.SIGTERM)), (name, field, hex(mask))


def test_the_printed_environment_drives_the_cli(demo: Demo, tmp_path: Path) -> None:
    """The one `export` line, pasted into a new shell (only PATH and HOME of its own, in
    another directory), makes `health-sidecar config` show the demo's daemon (its instance,
    port, Convex and Mastra), `health-sidecar fleet` list it, and `drain` take it out of the
    pool (and `undrain` back); the operator's key is in the line, never in the daemon's
    environment."""
    line = demo.export_line()
    for name in ("CONVEX_URL", "HEALTH_SIDECAR_SECRET", "HEALTH_SIDECAR_OPERATOR_SECRET"):
        assert f" {name}=" in line, line
    sidecar_url, sidecar_pid = demo.servers()["health-sidecar"]
    convex_url, _ = demo.servers()["Convex stand-in"]
    shell = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}

    def run(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", f"{line} && {command}"],
            cwd=tmp_path,
            env=shell,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    config = run("health-sidecar config")
    assert config.returncode == 0, config.stderr
    settings = json.loads(config.stdout)
    assert settings["instance"] == "demo-1"
    assert f"http://{settings['host']}:{settings['port']}" == sidecar_url
    assert settings["convex_url"] == convex_url
    assert settings["mastra_url"] == demo.servers()["Mastra (real)"][0]
    fleet = run("health-sidecar fleet --json")
    assert fleet.returncode in (0, 1), fleet.stderr
    assert [m["instance"] for m in json.loads(fleet.stdout)["instances"]] == ["demo-1"]
    drained = run('health-sidecar drain --instance demo-1 --reason "try it" --for 5m')
    assert drained.returncode == 0, drained.stderr
    procs.wait_http(sidecar_url + "/ready", timeout=DRAIN_SHOWS, status=503)
    with urllib.request.urlopen(sidecar_url + "/metrics", timeout=5) as resp:
        page = resp.read().decode()
    assert metric(page, 'sidecar_draining_source{source="central"}') == 1.0
    undrained = run("health-sidecar undrain --instance demo-1")
    assert undrained.returncode == 0, undrained.stderr
    procs.wait_http(sidecar_url + "/ready", timeout=DRAIN_SHOWS, status=200)
    environ = Path(f"/proc/{sidecar_pid}/environ").read_bytes().split(b"\0")
    assert not [v for v in environ if v.startswith(b"HEALTH_SIDECAR_OPERATOR_SECRET=")]
