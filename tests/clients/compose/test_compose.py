"""config/docker-compose.yml, checked as far as a machine without a Docker engine can: it parses
(strictly, as Compose does), everything it mounts or builds from exists, and its services, ports
and URLs agree with each other and with config/Caddyfile (adapted by the real `caddy`),
config/prometheus.yml and the repository's Dockerfile."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.support.procs import ROOT

CONFIG = ROOT / "config"
COMPOSE = CONFIG / "docker-compose.yml"
SECRET_ENV = {"HEALTH_SIDECAR_SECRET": "compose-test-secret-0123456789"}
TOP_LEVEL = {"name", "services", "volumes", "configs", "networks", "secrets"}
ADMIN_UIS = {"uptime-kuma": 3001, "prometheus": 9090, "grafana": 3000}


# --- reading the file the way Compose does ------------------------------------------------


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (Compose does; PyYAML keeps the last one)."""


def _no_duplicates(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    # A key may override one merged in with `<<: *anchor`; only the mapping's own keys must be
    # unique, so look before the merges are flattened into it.
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)

_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable interpolation: ${VAR}, ${VAR:-default}, ${VAR-default},
    ${VAR:?error}, ${VAR?error}, and $$ for a literal $."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group(1), match.group(2), match.group(3)
        present = name in env and (env[name] != "" or op in ("-", "?"))
        if present:
            return env[name]
        if op in (":?", "?"):
            raise ValueError(f"required variable {name} is missing: {arg}")
        return arg if op in (":-", "-") else ""

    return _VARIABLE.sub(replace, value)


def load(env: dict[str, str] | None = None) -> dict[str, Any]:
    assert COMPOSE.exists(), f"{COMPOSE} is missing"
    raw = yaml.load(COMPOSE.read_text(), Loader=StrictLoader)
    doc: dict[str, Any] = interpolate(raw, SECRET_ENV if env is None else env)
    return doc


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load()


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def seconds(duration: str | int | float) -> float:
    """A Compose duration ("30s", "1m30s", "1500ms") in seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", duration)
    assert parts, f"bad duration {duration!r}"
    assert "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    return sum(float(n) * scale[u] for n, u in parts)


def container_ports(service: dict[str, Any]) -> set[int]:
    """The ports a service's container listens on, as `expose` and `ports` declare them."""
    found = {int(str(p).split("/")[0]) for p in service.get("expose", [])}
    for port in service.get("ports", []):
        target = port["target"] if isinstance(port, dict) else str(port).split("/")[0]
        found.add(int(str(target).rsplit(":", 1)[-1]))
    return found


def sidecars(compose: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], str]]:
    """(sidecar name, sidecar service, app service name) for every sidecar: the services in
    another service's network namespace."""
    for name, service in services(compose).items():
        mode = str(service.get("network_mode", ""))
        if mode.startswith("service:"):
            yield name, service, mode.removeprefix("service:")


def sidecar_port(service: dict[str, Any]) -> int:
    """SIDECAR_PORT from the service's environment, else the Dockerfile's ENV, else 8099."""
    env = environment(service)
    if "SIDECAR_PORT" in env:
        return int(env["SIDECAR_PORT"])
    found = re.search(r"SIDECAR_PORT=(\d+)", (ROOT / "Dockerfile").read_text())
    return int(found.group(1)) if found else 8099


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of every bind mount (short or long syntax) of a service."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                mounts.append((volume["source"], volume["target"]))
            continue
        source, target = str(volume).split(":")[:2]
        if source.startswith((".", "/", "~")):
            mounts.append((source, target))
    return mounts


def mounted_at(service: dict[str, Any], target: str) -> Path | None:
    for source, mount_target in bind_mounts(service):
        if mount_target == target:
            return (CONFIG / source).resolve()
    return None


def needed(path: Path, what: str) -> Path:
    """A file another part of the stack provides: fail clearly while it is missing."""
    assert path.exists(), f"{path.relative_to(ROOT)} is missing ({what}); the compose test needs it"
    return path


# --- the tests ------------------------------------------------------------------------------


def test_compose_parses_strictly_and_declares_the_stack(compose: dict[str, Any]) -> None:
    """The file is YAML without duplicate keys, has only Compose's top-level keys (plus x-
    extensions), and declares the stack: two app containers each with a sidecar, Convex,
    Mastra, Caddy, Uptime Kuma, Prometheus and Grafana, each with an image or a build; every
    named volume and config a service uses is declared, and every declared one is used."""
    extra = {k for k in compose if k not in TOP_LEVEL and not k.startswith("x-")}
    assert not extra, f"not Compose top-level keys: {extra}"
    svc = services(compose)
    assert set(svc) == {
        "app-1",
        "app-2",
        "sidecar-1",
        "sidecar-2",
        "convex-backend",
        "mastra",
        "caddy",
        "uptime-kuma",
        "prometheus",
        "grafana",
    }
    for name, service in svc.items():
        assert "image" in service or "build" in service, name
    used_volumes, used_configs = set(), set()
    for service in svc.values():
        for volume in service.get("volumes", []):
            source = volume.get("source", "") if isinstance(volume, dict) else volume.split(":")[0]
            if source and not source.startswith((".", "/", "~")):
                used_volumes.add(source)
        for config in service.get("configs", []):
            used_configs.add(config["source"] if isinstance(config, dict) else config)
    assert used_volumes == set(compose.get("volumes") or {})
    assert used_configs == set(compose.get("configs") or {})
    for name, config in (compose.get("configs") or {}).items():
        if "content" in config:
            yaml.safe_load(config["content"])  # inline provisioning files must be YAML
        else:
            assert (CONFIG / config["file"]).exists(), name


def test_every_file_it_mounts_or_builds_from_exists(compose: dict[str, Any]) -> None:
    """Every bind-mounted file and every build context and Dockerfile exists, relative to
    config/ (where Compose resolves them)."""
    missing = []
    for name, service in services(compose).items():
        for source, _ in bind_mounts(service):
            if not (CONFIG / source).exists():
                missing.append(f"{name}: mounts {source}")
        build = service.get("build")
        if build is not None:
            context = CONFIG / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile")
            if not context.is_dir():
                missing.append(f"{name}: build context {context}")
            elif not (context / (dockerfile or "Dockerfile")).is_file():
                missing.append(f"{name}: {dockerfile} in {context}")
    assert not missing, "missing (relative to config/):\n" + "\n".join(missing)


def test_each_app_container_has_one_sidecar_in_its_network_namespace(
    compose: dict[str, Any],
) -> None:
    """Each sidecar runs in an app container's network namespace (network_mode service:app),
    publishes no ports of its own (Compose forbids it there), reaches the app on loopback at a
    port the app listens on, is named after it (SIDECAR_INSTANCE, as Prometheus' instance
    label), runs on a read-only root file system, and every app container has exactly one."""
    svc = services(compose)
    pairs = list(sidecars(compose))
    assert pairs, "no service runs in another's network namespace"
    apps = [app for _, _, app in pairs]
    assert sorted(apps) == sorted(set(apps)), "an app container has two sidecars"
    assert set(apps) == {n for n, s in svc.items() if "3000" in map(str, s.get("expose", []))}
    for name, sidecar, app in pairs:
        assert app in svc, f"{name}: network_mode names no service {app}"
        assert "ports" not in sidecar, f"{name}: publish ports on {app}, not on the sidecar"
        assert sidecar.get("read_only") is True, f"{name}: read_only must be true"
        env = environment(sidecar)
        url = urlsplit(env["SIDECAR_APP_URL"])
        assert url.hostname in ("127.0.0.1", "localhost", "::1"), f"{name}: {url.geturl()}"
        assert url.port in container_ports(svc[app]), f"{name}: {app} does not listen on {url}"
        command = " ".join(map(str, svc[app].get("command") or []))
        if "--listen" in command:  # the placeholder app: it really listens there
            assert f":{url.port}" in command, f"{app}: {command}"
        assert env["SIDECAR_INSTANCE"] == app, name
        assert app in (sidecar.get("depends_on") or []), f"{name} must depend on {app}"


def test_sidecar_outlives_its_drain_period(compose: dict[str, Any]) -> None:
    """Each sidecar's stop_grace_period is longer than its SIDECAR_DRAIN_SECONDS (default 15),
    so Docker never SIGKILLs it in the middle of the drain."""
    for name, sidecar, _ in sidecars(compose):
        drain = float(environment(sidecar).get("SIDECAR_DRAIN_SECONDS", "15"))
        grace = seconds(sidecar.get("stop_grace_period", "10s"))
        assert grace > drain, f"{name}: stop_grace_period {grace}s <= drain {drain}s"


def test_dependency_urls_name_services_of_the_stack(compose: dict[str, Any]) -> None:
    """Each sidecar's CONVEX_URL and MASTRA_URL point at the stack's own convex-backend
    (3210) and mastra (4111) services, at a port those services listen on."""
    svc = services(compose)
    for name, sidecar, _ in sidecars(compose):
        env = environment(sidecar)
        for variable, service, port in (
            ("CONVEX_URL", "convex-backend", 3210),
            ("MASTRA_URL", "mastra", 4111),
        ):
            url = urlsplit(env[variable])
            assert (url.hostname, url.port) == (service, port), f"{name}: {variable}={url.geturl()}"
            assert port in container_ports(svc[service]), f"{service} does not listen on {port}"
        command = " ".join(map(str, svc["mastra"].get("command") or []))
        if "--listen" in command:
            assert ":4111" in command


def test_secret_comes_from_the_environment() -> None:
    """HEALTH_SIDECAR_SECRET is never written in the file: without it in the environment the
    file does not interpolate (as `docker compose` refuses to start), with it every sidecar
    gets that value."""
    with pytest.raises(ValueError, match="HEALTH_SIDECAR_SECRET"):
        load({})
    compose = load({"HEALTH_SIDECAR_SECRET": "from-the-environment-123"})
    for name, sidecar, _ in sidecars(compose):
        assert environment(sidecar)["HEALTH_SIDECAR_SECRET"] == "from-the-environment-123", name


def caddy_adapted(compose: dict[str, Any]) -> dict[str, Any]:
    """config/Caddyfile adapted to JSON by the real caddy, with the caddy service's
    environment (the Caddyfile reads {$NAME:default} placeholders)."""
    caddy = shutil.which("caddy")
    assert caddy, "caddy is not installed (make test installs Debian's caddy)"
    caddy_service = services(compose)["caddy"]
    caddyfile = mounted_at(caddy_service, "/etc/caddy/Caddyfile")
    assert caddyfile is not None, "caddy must mount ./Caddyfile at /etc/caddy/Caddyfile"
    needed(caddyfile, "written for issue 4 item 1")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent"}
    env.update(environment(caddy_service))
    done = subprocess.run(
        [caddy, "adapt", "--adapter", "caddyfile", "--config", str(caddyfile)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    adapted: dict[str, Any] = json.loads(done.stdout)
    return adapted


def reverse_proxies(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if node.get("handler") == "reverse_proxy":
            yield node
        for value in node.values():
            yield from reverse_proxies(value)
    elif isinstance(node, list):
        for value in node:
            yield from reverse_proxies(value)


def caddy_seconds(value: int | str) -> float:
    return value / 1e9 if isinstance(value, int) else seconds(value)


def test_caddy_routes_to_the_app_containers_and_asks_their_sidecars(
    compose: dict[str, Any],
) -> None:
    """The Caddyfile, adapted by the real caddy with the caddy service's environment, proxies
    to exactly the app containers at their app port, and its active health check asks
    /ready on the port each sidecar listens on."""
    proxies = list(reverse_proxies(caddy_adapted(compose)))
    assert len(proxies) == 1, proxies
    svc = services(compose)
    pairs = list(sidecars(compose))
    dials = sorted(u["dial"] for u in proxies[0]["upstreams"])
    wanted = sorted(
        f"{app}:{urlsplit(environment(s)['SIDECAR_APP_URL']).port}" for _, s, app in pairs
    )
    assert dials == wanted
    for dial in dials:
        host, port = dial.rsplit(":", 1)
        assert int(port) in container_ports(svc[host]), dial
    active = proxies[0]["health_checks"]["active"]
    assert active["uri"] == "/ready"
    assert {active["port"]} == {sidecar_port(s) for _, s, _ in pairs}


def test_drain_outlasts_caddy_taking_a_container_out(compose: dict[str, Any]) -> None:
    """The tuning rule: each sidecar's SIDECAR_DRAIN_SECONDS is longer than Caddy needs to
    take its container out after /ready turns 503 (health_interval x fails + health_timeout,
    fails = 1 on Caddy 2.6, health_fails on 2.8+)."""
    proxies = list(reverse_proxies(caddy_adapted(compose)))
    active = proxies[0]["health_checks"]["active"]
    window = caddy_seconds(active["interval"]) * active.get("fails", 1) + caddy_seconds(
        active.get("timeout", 5_000_000_000)
    )
    for name, sidecar, _ in sidecars(compose):
        drain = float(environment(sidecar).get("SIDECAR_DRAIN_SECONDS", "15"))
        assert drain > window, f"{name}: drain {drain}s <= Caddy's {window}s"


def test_prometheus_scrapes_every_sidecar_and_loads_the_alerts(compose: dict[str, Any]) -> None:
    """The prometheus service mounts config/prometheus.yml where the image reads it, every
    rule file it names is mounted beside it from config/, the `health-sidecar` job's targets
    are exactly the app containers at their sidecar's port, and every other static target is
    a service of the stack."""
    prometheus = services(compose)["prometheus"]
    assert "command" not in prometheus, "the image's default --config.file is assumed"
    config_file = mounted_at(prometheus, "/etc/prometheus/prometheus.yml")
    assert config_file == (CONFIG / "prometheus.yml").resolve()
    config = yaml.safe_load(needed(config_file, "written for issue 4 item 2").read_text())
    for rule_file in config.get("rule_files", []):
        source = mounted_at(prometheus, str(Path("/etc/prometheus") / rule_file))
        assert source is not None, f"{rule_file} is not mounted beside prometheus.yml"
        needed(source, "written for issue 4 item 2")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert "health-sidecar" in jobs, 'alerts.yml matches up{job="health-sidecar"}'
    targets = sorted(
        target
        for static in jobs["health-sidecar"].get("static_configs", [])
        for target in static["targets"]
    )
    wanted = sorted(f"{app}:{sidecar_port(s)}" for _, s, app in sidecars(compose))
    assert targets == wanted
    # Any other job (Caddy's metrics, say) scrapes a service of this stack.
    for name, job in jobs.items():
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host = target.rsplit(":", 1)[0]
                assert host in services(compose), f"job {name}: {target} is not in the stack"


def test_grafana_reads_the_dashboard_from_the_provisioned_prometheus(
    compose: dict[str, Any],
) -> None:
    """Grafana's provisioned data source points at the prometheus service, the dashboard
    provider reads the directory the dashboard JSON is mounted in, and every data source the
    dashboard names is that provisioned one (or a variable of the dashboard)."""
    grafana = services(compose)["grafana"]
    configs = {c["target"]: compose["configs"][c["source"]] for c in grafana["configs"]}
    sources = yaml.safe_load(
        configs["/etc/grafana/provisioning/datasources/prometheus.yml"]["content"]
    )["datasources"]
    assert len(sources) == 1
    url = urlsplit(sources[0]["url"])
    assert (url.hostname, url.port) == ("prometheus", 9090)
    assert 9090 in container_ports(services(compose)["prometheus"])
    provider = yaml.safe_load(
        configs["/etc/grafana/provisioning/dashboards/health-sidecar.yml"]["content"]
    )["providers"][0]
    dashboard_target = next(
        target for source, target in bind_mounts(grafana) if source.endswith(".json")
    )
    assert str(Path(dashboard_target).parent) == provider["options"]["path"]
    dashboard_file = needed(
        mounted_at(grafana, dashboard_target) or CONFIG / "missing.json",
        "written for issue 4 item 4",
    )
    dashboard = json.loads(dashboard_file.read_text())
    assert "__inputs" not in dashboard, "an export with __inputs cannot be file-provisioned"
    variables = {v["name"] for v in dashboard.get("templating", {}).get("list", [])}
    allowed = {sources[0]["uid"], sources[0]["name"]}
    allowed |= {f"${v}" for v in variables} | {f"${{{v}}}" for v in variables}

    def named(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "datasource" and isinstance(value, dict) and "uid" in value:
                    yield str(value["uid"])
                elif key == "datasource" and isinstance(value, str):
                    yield value
                else:
                    yield from named(value)
        elif isinstance(node, list):
            for value in node:
                yield from named(value)

    # Grafana's own annotation source ("-- Grafana --") is always there.
    unknown = {uid for uid in named(dashboard) if uid not in allowed and uid != "-- Grafana --"}
    assert not unknown, f"data sources the provisioning does not define: {unknown}"


def test_uptime_kuma_and_admin_uis_are_local_only(compose: dict[str, Any]) -> None:
    """Uptime Kuma is the seed guide's `louislam/uptime-kuma:1` on 3001 with its data in a
    volume; Uptime Kuma, Prometheus, Grafana and Convex publish on 127.0.0.1 only, and only
    Caddy faces the world."""
    svc = services(compose)
    kuma = svc["uptime-kuma"]
    assert kuma["image"] == "louislam/uptime-kuma:1"
    assert any(str(v).endswith(":/app/data") for v in kuma["volumes"])
    for name, service in svc.items():
        for port in service.get("ports", []):
            spec = str(port)
            if name == "caddy":
                assert spec.split(":")[0] in ("80", "443"), spec
            else:
                assert spec.startswith("127.0.0.1:"), f"{name} publishes {spec} to the world"
    for name, port in ADMIN_UIS.items():
        assert port in container_ports(svc[name]), name
