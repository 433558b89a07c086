"""``secure-pipeline metrics serve``: the pipeline exporter for Prometheus.

Loads the code location, opens the Dagster instance (``DagsterInstance.get()``), the store and
the trust policy of the environment, verifies the audit trail and every champion once, then
serves ``/metrics`` and refreshes that verification in the background. Plain HTTP on a loopback
address only; anywhere else ``--tls-cert``/``--tls-key`` (TLS 1.3).
"""

import importlib
import signal
import threading
from typing import Any

import click

from secure_pipeline.cli._common import _fail, _store, _trust
from secure_pipeline.errors import ConfigurationError

DEFAULT_MODULE = "secure_pipeline.definitions:defs"


def _definitions(spec: str) -> Any:
    """The definitions ``module:attr`` names (called when it is a lazy ``@dg.definitions``)."""
    import dagster as dg

    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        _fail(f"--module must be module:attribute, found {spec!r}", 2)
    try:
        value = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        _fail(f"cannot load the code location {spec!r}: {exc}", 2)
    try:
        if callable(value) and not isinstance(value, dg.Definitions):
            value = value()
        if not isinstance(value, dg.Definitions):
            raise ConfigurationError(f"{spec} is a {type(value).__name__}, not Dagster Definitions")
        value.resolve_asset_graph()
    except ConfigurationError as exc:
        _fail(f"cannot load the code location {spec!r}: {exc}", 2)
    except Exception as exc:  # noqa: BLE001 - any load error is reported, not a traceback
        _fail(f"cannot load the code location {spec!r}: {type(exc).__name__}: {exc}", 2)
    return value


def _environment_store() -> Any:
    """The environment's store, for the refresh thread (an error is raised, never an exit)."""
    from secure_pipeline import environment as env
    from secure_pipeline.storage.resources import store_resource

    return store_resource(env.validate(), resolve=True).get_store()


@click.group()
def metrics() -> None:
    """Pipeline metrics for Prometheus."""


@metrics.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=9464, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--refresh",
    "refresh_seconds",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=1.0),
    help="Seconds between verifications of the audit trail and the champions.",
)
@click.option(
    "--module",
    "module_spec",
    default=DEFAULT_MODULE,
    show_default=True,
    help="The code location's definitions, module:attribute.",
)
@click.option("--tls-cert", type=click.Path(dir_okay=False), help="Server certificate (PEM).")
@click.option("--tls-key", type=click.Path(dir_okay=False), help="Its private key (PEM).")
def metrics_serve(
    host: str,
    port: int,
    refresh_seconds: float,
    module_spec: str,
    tls_cert: str | None,
    tls_key: str | None,
) -> None:
    """Serve the pipelines' metrics on /metrics until interrupted."""
    import dagster as dg

    from secure_pipeline.compose import pipelines_of
    from secure_pipeline.monitoring.exporter import (
        ExporterTls,
        PipelineCollector,
        is_loopback,
        serve_metrics,
    )
    from secure_pipeline.trust.policy import trust_policy

    if bool(tls_cert) != bool(tls_key):
        _fail("--tls-cert and --tls-key go together: give both, or neither on loopback", 2)
    tls = ExporterTls(tls_cert, tls_key) if tls_cert and tls_key else None
    if tls is None and not is_loopback(host):
        _fail(
            f"refusing to serve plain HTTP on {host}, which is not a loopback address: give "
            "--tls-cert and --tls-key (TLS 1.3), or listen on 127.0.0.1",
            2,
        )
    definitions = _definitions(module_spec)
    # Both checked now, so a misconfigured environment fails here and not in the first refresh.
    _store()
    _trust()
    with dg.DagsterInstance.get() as instance:
        collector = PipelineCollector(
            definitions, instance, _environment_store, trust_policy, refresh_seconds,
            pipelines=pipelines_of(),
        )  # fmt: skip
        collector.refresh()
        try:
            server = serve_metrics(collector, host, port, tls)
        except ConfigurationError as exc:
            _fail(str(exc), 2)
        except OSError as exc:
            _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", 2)
        collector.start()
        stopped = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stopped.set())
        click.echo(f"serving {server.url} (refresh every {refresh_seconds:g} s)", err=True)
        try:
            stopped.wait()
        finally:
            server.close()
            collector.stop()
