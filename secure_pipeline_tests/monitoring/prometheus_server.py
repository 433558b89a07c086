"""A real Prometheus server for tests: Debian's /usr/bin/prometheus on a free loopback port.

`running_prometheus` writes a configuration into a temporary directory (scrape jobs, rule
files, intervals), starts the server with its own TSDB directory, waits until ``/-/ready``
answers and stops it on exit. The `PrometheusServer` it yields queries the HTTP API::

    with running_prometheus(tmp_path, {"job": ["127.0.0.1:9100"]}, [rules]) as prometheus:
        prometheus.wait_for_alert("SomeAlert")

Nothing is skipped: without the binary the test fails, naming the Debian package to install.
"""

import contextlib
import json
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from secure_pipeline.errors import ConfigurationError

PROMETHEUS = Path("/usr/bin/prometheus")
PROMTOOL = Path("/usr/bin/promtool")
AMTOOL = Path("/usr/bin/amtool")
PACKAGES = {PROMETHEUS: "prometheus", PROMTOOL: "prometheus", AMTOOL: "prometheus-alertmanager"}
_READY_SECONDS = 30.0
_POLL_SECONDS = 0.2


def require_binary(path: Path) -> Path:
    """``path`` if it is an executable file, else a `ConfigurationError` naming its package.

    Raises:
        ConfigurationError: When the binary is missing.
    """
    if not path.is_file():
        package = PACKAGES.get(path, "prometheus")
        raise ConfigurationError(
            f"expected the Prometheus tool {path}, found nothing there: install the Debian "
            f"package {package} (apt-get install {package}; scripts/test-prerequisites.sh "
            "lists it)"
        )
    return path


@dataclass(frozen=True)
class ScrapeJob:
    """One scrape job of the test server.

    Attributes:
        job: The job name (the ``job`` label of its series).
        targets: ``host:port`` of every target.
        scheme: ``http`` or ``https``.
        metrics_path: The path scraped.
        tls: A Prometheus ``tls_config`` mapping (``ca_file``, ``cert_file``, ``key_file``,
            ``server_name``, ``min_version``), for https.
        labels: Extra target labels.
    """

    job: str
    targets: Sequence[str]
    scheme: str = "http"
    metrics_path: str = "/metrics"
    tls: Mapping[str, str] | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    def config(self) -> dict[str, Any]:
        """The job as a Prometheus ``scrape_configs`` entry."""
        static: dict[str, Any] = {"targets": list(self.targets)}
        if self.labels:
            static["labels"] = dict(self.labels)
        entry: dict[str, Any] = {
            "job_name": self.job,
            "scheme": self.scheme,
            "metrics_path": self.metrics_path,
            "static_configs": [static],
        }
        if self.tls is not None:
            entry["tls_config"] = {key: str(value) for key, value in self.tls.items()}
        return entry


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrometheusServer:
    """A started Prometheus: its address, log and HTTP API helpers.

    Attributes:
        url: ``http://127.0.0.1:<port>``.
        config_file: The configuration it was started with.
        log_file: Its stdout and stderr.
    """

    def __init__(self, url: str, config_file: Path, log_file: Path) -> None:
        self.url = url
        self.config_file = config_file
        self.log_file = log_file

    def log(self, tail: int = 4000) -> str:
        """The end of the server's log, for failure messages."""
        return self.log_file.read_text(errors="replace")[-tail:]

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>``; the ``data`` of a successful answer.

        Raises:
            AssertionError: When the API answers an error.
        """
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        request = urllib.request.Request(f"{self.url}/api/v1/{path}{query}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise AssertionError(f"Prometheus API {path} {params} answered {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of ``expr`` now: ``[{"metric": {...}, "value": [ts, "v"]}]``."""
        data = self.api("query", query=expr)
        if data["resultType"] != "vector":
            raise AssertionError(f"{expr!r} is a {data['resultType']}, expected a vector")
        return data["result"]

    def alerts(self) -> list[dict[str, Any]]:
        """Every pending or firing alert: ``labels``, ``annotations``, ``state``, ``value``."""
        return self.api("alerts")["alerts"]

    def rules(self) -> list[dict[str, Any]]:
        """Every rule of every loaded group, with ``health``, ``state``, ``lastEvaluation``."""
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]

    def targets(self) -> list[dict[str, Any]]:
        """The active targets with ``health`` and ``lastError``."""
        return self.api("targets")["activeTargets"]

    def wait_for(self, what: str, probe: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Poll ``probe`` until it returns something truthy, and return that.

        Raises:
            AssertionError: After ``timeout`` seconds, with the targets and the server's log.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = probe()
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"waited {timeout}s for {what}; targets: {self.targets()}; "
                    f"alerts: {self.alerts()}; log:\n{self.log()}"
                )
            time.sleep(_POLL_SECONDS)

    def wait_for_targets_up(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Wait until every target was scraped successfully at least once."""

        def up() -> list[dict[str, Any]]:
            targets = self.targets()
            return targets if targets and all(t["health"] == "up" for t in targets) else []

        return self.wait_for("every target up", up, timeout)

    def wait_for_alert(
        self,
        name: str,
        state: str = "firing",
        timeout: float = 30.0,
        labels: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """The alert ``name`` once it is in ``state`` (with ``labels``, when given).

        Raises:
            AssertionError: When it is not in that state within ``timeout`` seconds.
        """
        wanted = dict(labels or {})

        def found() -> dict[str, Any] | None:
            for alert in self.alerts():
                if (
                    alert["labels"].get("alertname") == name
                    and alert["state"] == state
                    and all(alert["labels"].get(k) == v for k, v in wanted.items())
                ):
                    return alert
            return None

        return self.wait_for(f"alert {name} {state} {wanted}", found, timeout)

    def wait_for_evaluation(self, name: str, after: float, timeout: float = 30.0) -> dict[str, Any]:
        """The rule ``name`` once it was evaluated after the Unix time ``after``.

        Lets a test state that an alert did *not* fire: evaluated on data it has seen, yet
        absent from `alerts`.
        """

        def evaluated() -> dict[str, Any] | None:
            for rule in self.rules():
                stamp = rule.get("lastEvaluation")
                # RFC 3339 in UTC ("...Z"); a rule never evaluated has the zero time.
                if (
                    rule["name"] == name
                    and stamp
                    and datetime.fromisoformat(stamp).timestamp() > after
                ):
                    return rule
            return None

        return self.wait_for(f"rule {name} evaluated after {after}", evaluated, timeout)


def write_config(
    directory: Path,
    scrape_targets: Mapping[str, Sequence[str]] | Sequence[ScrapeJob],
    rule_files: Sequence[Path] = (),
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
) -> Path:
    """Write ``prometheus.yml`` into ``directory`` and return its path.

    Args:
        directory: Where the configuration goes.
        scrape_targets: ``{job: [host:port, ...]}`` for plain HTTP jobs, or `ScrapeJob`s.
        rule_files: Rule files to load (absolute paths are kept as they are).
        scrape_interval: Global scrape interval (also the scrape timeout).
        evaluation_interval: Rule evaluation interval.
    """
    if isinstance(scrape_targets, Mapping):
        jobs = [ScrapeJob(job, tuple(targets)) for job, targets in scrape_targets.items()]
    else:
        jobs = list(scrape_targets)
    config = {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "evaluation_interval": evaluation_interval,
        },
        "rule_files": [str(Path(path).resolve()) for path in rule_files],
        "scrape_configs": [job.config() for job in jobs],
    }
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@contextlib.contextmanager
def running_prometheus(
    tmp_path: Path,
    scrape_targets: Mapping[str, Sequence[str]] | Sequence[ScrapeJob],
    rule_files: Sequence[Path] = (),
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
) -> Iterator[PrometheusServer]:
    """Start Debian's Prometheus with these jobs and rules; stop it on exit.

    Args:
        tmp_path: A directory of the test; ``prometheus/`` inside holds config, TSDB and log.
        scrape_targets: ``{job: [host:port, ...]}`` for plain HTTP jobs, or `ScrapeJob`s.
        rule_files: Rule files to load.
        scrape_interval: Global scrape interval.
        evaluation_interval: Rule evaluation interval.

    Yields:
        The running server, ready (``/-/ready`` answered 200).

    Raises:
        ConfigurationError: When /usr/bin/prometheus is not installed.
        AssertionError: When it exits or is not ready within 30 seconds (with its log).
    """
    binary = require_binary(PROMETHEUS)
    directory = tmp_path / "prometheus"
    (directory / "data").mkdir(parents=True)
    config_file = write_config(
        directory, scrape_targets, rule_files, scrape_interval, evaluation_interval
    )
    port = free_port()
    log_file = directory / "prometheus.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - a fixed binary and our own arguments
            [
                str(binary),
                f"--config.file={config_file}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=info",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = PrometheusServer(f"http://127.0.0.1:{port}", config_file, log_file)
    try:
        _wait_ready(server, process)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _wait_ready(server: PrometheusServer, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + _READY_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"prometheus exited with {process.returncode} before it was ready:\n{server.log()}"
            )
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as response:  # noqa: S310
                if response.status == 200:
                    return
        except OSError:
            pass  # not listening yet, or 503 while starting
        time.sleep(_POLL_SECONDS)
    raise AssertionError(f"prometheus not ready after {_READY_SECONDS}s:\n{server.log()}")
