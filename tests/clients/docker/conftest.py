"""A real Docker engine and the image built from the checkout (tests/support/dockerengine.py).
No engine is a failure that says why, never a skip."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import sidecar
from tests.support import dockerengine

IMAGE_TAG = "health-sidecar:test"


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dockerengine.Engine]:
    """The engine that answers, or Debian's dockerd started for the session (no bridge)."""
    try:
        with dockerengine.engine(tmp_path_factory.mktemp("dockerd")) as eng:
            yield eng
    except dockerengine.EngineError as exc:
        pytest.fail(f"no Docker engine: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def built_image(
    docker_engine: dockerengine.Engine, tmp_path_factory: pytest.TempPathFactory
) -> dockerengine.Build:
    """The checkout's image, its base pulled or built from Debian packages (both cached by
    tag), the version build argument read from the package."""
    work = tmp_path_factory.mktemp("image")
    try:
        base = dockerengine.base_image(docker_engine, work)
        return dockerengine.build_image(
            docker_engine, tag=IMAGE_TAG, base=base, version=sidecar.__version__, work=work
        )
    except dockerengine.EngineError as exc:
        pytest.fail(f"the image could not be built: {exc}", pytrace=False)
