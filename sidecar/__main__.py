"""`python -m sidecar` is the `health-sidecar` command."""

from sidecar.main import main

raise SystemExit(main())
