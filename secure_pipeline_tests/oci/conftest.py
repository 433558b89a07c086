"""Fixtures for OCI registry tests: real distribution registries (see ``registry_server``).

* ``oci_registry`` (session): one shared registry; tests use their own repositories in it and
  must not stop it.
* ``oci_registry_factory`` (per test): ``make(tls=True, public_url=None) -> Registry`` starts
  another independent registry (a mirror target, one a test may stop); all are stopped when
  the test ends.
* ``oci_env`` (per test): ``SECURE_PIPELINE_OCI_CA_BUNDLE``/``USERNAME``/``PASSWORD`` set for
  ``oci_registry``; returns it. For another registry: ``registry.use_env(monkeypatch)``.
* ``oci_repository`` (per test): a repository name no other test uses.
"""

import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from secure_pipeline_tests.oci.registry_server import Registry, running_registry
from secure_pipeline_tests.tls_server import Pki


@pytest.fixture(scope="session")
def oci_registry(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Registry]:
    """One distribution registry (TLS 1.3, htpasswd) shared by the whole session."""
    with running_registry(tmp_path_factory.mktemp("oci-registry"), pki) as registry:
        yield registry


@pytest.fixture
def oci_registry_factory(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki
) -> Iterator[Callable[..., Registry]]:
    """Start further independent registries: ``make(tls=True)``; stopped after the test."""
    with ExitStack() as stack:

        def make(*, tls: bool = True, public_url: str | None = None) -> Registry:
            directory: Path = tmp_path_factory.mktemp("oci-registry-extra")
            return stack.enter_context(
                running_registry(directory, pki, tls=tls, public_url=public_url)
            )

        yield make


@pytest.fixture
def oci_env(oci_registry: Registry, monkeypatch: pytest.MonkeyPatch) -> Registry:
    """The shared registry, with SECURE_PIPELINE_OCI_CA_BUNDLE/USERNAME/PASSWORD set for it."""
    return oci_registry.use_env(monkeypatch)


@pytest.fixture
def oci_repository() -> str:
    """A repository name of its own, so tests sharing the registry never see each other."""
    return f"test/{uuid.uuid4().hex[:12]}/model"
