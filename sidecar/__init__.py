"""health-sidecar: probes a Convex + Mastra app's dependencies and serves its health."""

from __future__ import annotations

__version__ = "0.2.0"
