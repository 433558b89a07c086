"""Running the gateway: nginx with its own prefix directory, reloads for new weights."""

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Self

from secure_pipeline.errors import ConfigurationError
from secure_pipeline.serving.gateway.config import (
    _PATH_FIELDS,
    _UPSTREAM_FILES,
    GatewayConfig,
    GatewayError,
    Slot,
)
from secure_pipeline.serving.gateway.render import _js_module, find_nginx, render_nginx_conf

_STATE_FILE = "gateway.json"


def _config_document(config: GatewayConfig, workers: int) -> dict[str, object]:
    return {
        "listen": config.listen,
        "server_cert": str(config.server_cert),
        "server_key": str(config.server_key),
        "client_ca": str(config.client_ca),
        "identities": {name: list(roles) for name, roles in config.identities.items()},
        "routes": dict(config.routes),
        "rate_per_second": config.rate_per_second,
        "burst": config.burst,
        "slots": [{"name": s.name, "address": s.address, "weight": s.weight} for s in config.slots],
        "max_body_bytes": config.max_body_bytes,
        "verify_depth": config.verify_depth,
        "upstream_cert": str(config.upstream_cert),
        "upstream_key": str(config.upstream_key),
        "upstream_ca": str(config.upstream_ca),
        "upstream_name": config.upstream_name,
        "workers": workers,
    }


def _config_from_document(document: dict) -> tuple[GatewayConfig, int]:
    values = dict(document)
    workers = int(values.pop("workers"))
    values["slots"] = tuple(Slot(**slot) for slot in values["slots"])
    values["identities"] = {name: tuple(roles) for name, roles in values["identities"].items()}
    missing = [name for name in _UPSTREAM_FILES if name not in values]
    if missing:
        # A state file from before the slots required mutual TLS: its slots speak plain HTTP.
        raise GatewayError(
            f"the recorded gateway configuration has no upstream TLS ({', '.join(missing)}): "
            "it predates mutual TLS to the slots; stop that gateway's nginx and start the "
            "deployment again"
        )
    for name in _PATH_FIELDS:
        values[name] = Path(values[name])
    return GatewayConfig(**values), workers


def _process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, ended but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


class Gateway:
    """A running nginx gateway with its own prefix directory ``workdir``.

    Use it as a context manager, or call `start` and `stop`. The master runs without
    daemonising, as a child of the process that started it, and keeps running if that process
    exits; another process takes it over with `attach` (the pid file and the configuration are
    in ``workdir``). `set_weights` re-renders the configuration, tests it with ``nginx -t`` and
    reloads (SIGHUP), returning once the new workers serve.

    Args:
        config: What the gateway enforces.
        workdir: Its prefix directory (created if missing): ``conf/nginx.conf``, ``logs/``,
            ``temp/``, ``nginx.pid`` and ``gateway.json`` (the configuration, for `attach`).
        nginx: The nginx binary; default: PATH, then ``/usr/sbin/nginx``.
        workers: Number of worker processes.
    """

    def __init__(
        self, config: GatewayConfig, workdir: Path, nginx: str | None = None, workers: int = 2
    ) -> None:
        self._config = config
        self._workdir = Path(workdir).resolve()
        self._nginx = find_nginx(nginx)
        self._js_module = _js_module(self._nginx)
        self._workers = workers
        self._pid: int | None = None
        self._popen: subprocess.Popen[bytes] | None = None  # only when this object started it

    @classmethod
    def attach(cls, workdir: Path, nginx: str | None = None) -> "Gateway":
        """Take over the gateway running in ``workdir`` (started by any process).

        Raises:
            GatewayError: When no gateway of this ``workdir`` is running.
        """
        workdir = Path(workdir).resolve()
        try:
            document = json.loads((workdir / _STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise GatewayError(f"no gateway configuration in {workdir}: {exc}") from None
        config, workers = _config_from_document(document)
        gateway = cls(config, workdir, nginx, workers)
        pid = gateway._running_master()
        if pid is None:
            raise GatewayError(
                f"no gateway is running in {workdir}: start it (Gateway(...).start()) first"
            )
        gateway._pid = pid
        return gateway

    @property
    def config(self) -> GatewayConfig:
        """The configuration being served."""
        return self._config

    @property
    def url(self) -> str:
        """Base URL of the gateway, e.g. ``https://127.0.0.1:8443``."""
        return f"https://{self._config.listen}"

    @property
    def access_log(self) -> Path:
        """The JSON-lines access log."""
        return self._workdir / "logs" / "access.log"

    @property
    def error_log(self) -> Path:
        """The nginx error log."""
        return self._workdir / "logs" / "error.log"

    @property
    def conf_file(self) -> Path:
        """The rendered configuration nginx runs with."""
        return self._workdir / "conf" / "nginx.conf"

    @property
    def pid(self) -> int | None:
        """The nginx master's process id while running."""
        return self._pid if self._alive() else None

    def start(self, timeout: float = 10.0) -> None:
        """Render, test and start nginx; return once it accepts connections.

        Raises:
            ConfigurationError: When ``nginx -t`` refuses the configuration.
            GatewayError: When a gateway already runs in ``workdir``, or nginx exits or does not
                listen within ``timeout`` seconds.
        """
        if self._alive() or self._running_master() is not None:
            raise GatewayError(
                f"a gateway is already running in {self._workdir}: use Gateway.attach"
            )
        for sub in ("conf", "logs", "temp"):
            (self._workdir / sub).mkdir(parents=True, exist_ok=True)
        self._install(self._config)
        with (self._workdir / "logs" / "stderr.log").open("ab") as err:
            # Not a new session: a Ctrl-C that ends a foreground caller ends nginx too (SIGINT
            # is nginx's fast shutdown), so no master is left behind holding the port.
            self._popen = subprocess.Popen(
                self._command(), stdin=subprocess.DEVNULL, stdout=err, stderr=err
            )
        self._pid = self._popen.pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._alive():
                code = self._popen.poll()
                self._pid = self._popen = None
                raise GatewayError(f"nginx exited with {code}: {self._log_tail()}")
            if self._worker_pids() and self._listening():
                return
            time.sleep(0.02)
        self.stop()
        raise GatewayError(f"nginx did not listen on {self._config.listen} within {timeout} s")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop nginx gracefully (SIGQUIT), then by force; a stopped gateway is left alone."""
        alive = self._alive()
        pid, popen = self._pid, self._popen
        self._pid = self._popen = None
        if pid is None or not alive:
            return
        for sig, wait in ((signal.SIGQUIT, timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            if self._wait_exit(pid, popen, wait):
                return

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def set_weights(self, weights: Mapping[str, int], timeout: float = 15.0) -> None:
        """Give each slot its new share of traffic and reload nginx.

        Args:
            weights: Slot name -> weight, for every slot; the weights sum to 100.
            timeout: Seconds to wait for the new workers (old ones finish in-flight requests).

        Raises:
            ConfigurationError: When a name is unknown or missing, or the weights are invalid;
                the running configuration is unchanged.
            GatewayError: When the gateway is not running or the reload does not take effect.
        """
        known = {slot.name for slot in self._config.slots}
        unknown = sorted(set(weights) - known)
        missing = sorted(known - set(weights))
        if unknown or missing:
            raise ConfigurationError(
                f"weights must name every slot exactly ({sorted(known)}): "
                + (f"unknown {unknown} " if unknown else "")
                + (f"missing {missing}" if missing else "")
            )
        slots = tuple(replace(slot, weight=weights[slot.name]) for slot in self._config.slots)
        config = replace(self._config, slots=slots)  # validates: sum 100, integers 0..100
        pid = self._pid
        if pid is None or not self._alive():
            raise GatewayError("the gateway is not running: start it before changing weights")
        old_workers = self._worker_pids()
        self._install(config)
        self._config = config
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            workers = self._worker_pids()
            # The reload has taken effect when every worker is new: old ones stopped accepting
            # connections and finished their requests.
            if workers and not workers & old_workers:
                return
            if not self._alive():
                raise GatewayError(f"nginx exited during the reload: {self._log_tail()}")
            time.sleep(0.02)
        raise GatewayError(
            f"nginx did not switch to the new weights within {timeout} s: {self._log_tail()}"
        )

    def _alive(self) -> bool:
        if self._popen is not None:
            return self._popen.poll() is None
        return self._pid is not None and _process_alive(self._pid)

    def _wait_exit(self, pid: int, popen: subprocess.Popen[bytes] | None, wait: float) -> bool:
        if popen is not None:
            try:
                popen.wait(wait)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _process_alive(pid):
                return True
            time.sleep(0.02)
        return False

    def _running_master(self) -> int | None:
        """The pid of a live nginx master of this ``workdir``, from its pid file."""
        try:
            pid = int((self._workdir / "nginx.pid").read_text().strip())
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            return None
        # A recycled pid is not ours: the master's command line names this configuration.
        if "nginx" not in command or str(self.conf_file) not in command:
            return None
        return pid if _process_alive(pid) else None

    def _command(self, *extra: str) -> list[str]:
        return [
            self._nginx,
            "-p",
            f"{self._workdir}/",
            "-c",
            str(self.conf_file),
            "-e",
            str(self.error_log),
            *extra,
        ]

    def _install(self, config: GatewayConfig) -> None:
        """Render ``config`` and test it with ``nginx -t``; only then make it the live file."""
        text = render_nginx_conf(
            config, self._workdir, js_module=self._js_module, workers=self._workers
        )
        candidate = self.conf_file.with_name("nginx.conf.new")
        candidate.write_text(text, encoding="utf-8")
        command = self._command("-t", "-q")
        command[command.index(str(self.conf_file))] = str(candidate)
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        if result.returncode != 0:
            candidate.unlink(missing_ok=True)
            raise ConfigurationError(
                f"nginx refused the gateway configuration: {(result.stderr or result.stdout)}"
                f"{self._log_tail()}"
            )
        os.replace(candidate, self.conf_file)
        state = self._workdir / _STATE_FILE
        partial = state.with_name(f"{_STATE_FILE}.partial")
        partial.write_text(json.dumps(_config_document(config, self._workers), indent=2))
        os.replace(partial, state)

    def _listening(self) -> bool:
        host, _, port = self._config.listen.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=0.5):
                return True
        except OSError:
            return False

    def _worker_pids(self) -> frozenset[int]:
        """The master's children: its worker processes."""
        master = self._pid
        if master is None:
            return frozenset()
        children = set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:  # the process ended while we looked
                continue
            # Field 4 is the parent pid; the name (field 2) may contain spaces and parentheses.
            fields = stat.rsplit(")", 1)[-1].split()
            if len(fields) > 1 and fields[1] == str(master) and fields[0] != "Z":
                children.add(int(entry))
        return frozenset(children)

    def _log_tail(self, lines: int = 10) -> str:
        text = ""
        for path in (self.error_log, self._workdir / "logs" / "stderr.log"):
            if path.is_file():
                text += path.read_text(errors="replace")
        tail = "\n".join(text.strip().splitlines()[-lines:])
        return f"\n{tail}" if tail else ""
