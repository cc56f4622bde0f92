"""health-sidecar: probes a Convex + Mastra app's dependencies and serves its health.

Import rule: a module imports only from layers below its own (and a package's modules from
their own package); the layers, lowest first: sidecar, limits, logs, peers < checks, result <
config_errors, state < config_sources, fleet, store < config, snapshot < metrics < monitor,
probes, witness < scheduler, server, sync, warmstart, watch, witnesses < app, fleetcli < daemon
< main < __main__
(`sidecar` is this file: the version; tests/modules/test_imports.py holds the table).
"""

from __future__ import annotations

__version__ = "0.2.0"
