"""Blue-green releases with canary analysis behind the gateway, on one host.

A *serving deployment* is a directory (``SECURE_PIPELINE_SERVING_DIR``) holding the gateway's
nginx prefix, the two slots' logs and ``deployment.json``: which slot is live, what each slot
serves, its address and process, and the traffic weights. `up` starts the gateway and the live
slot on the champion; `BlueGreen.release` then rolls out a promoted challenger:

1. the idle slot starts pinned to the new version and verifies it (signature, digests, lineage,
   trust policy); a model that does not verify never becomes ready and never gets traffic;
2. the canary weight (10 % by default) moves to it, and both slots' metrics are recorded;
3. once the canary answered enough requests, `secure_pipeline.promotion.canary.judge` compares
   the slots: error rate, p95 latency and the prediction distribution;
4. pass: all traffic to the new slot, alias ``champion`` moved (previous champion recorded);
   fail: the weight goes back to 0, the alias stays, and the old slot keeps all the traffic.

Every step is an audit event. On Kubernetes the same roles are played by the two slot
Deployments and the Istio VirtualService weights (``deploy/istio/``).

The slots speak mutual TLS only. `up` makes the deployment's slot PKI in ``<dir>/slot-pki``
(`secure_pipeline.serving.certs.ensure_slot_pki`): the slots present its server certificate
and accept only its two client certificates, the gateway's (nginx) and the controller's, with
which this module reads a slot's ``/readyz`` and ``/metrics`` (verifying the slot's
certificate against the slot CA and `SLOT_SERVER_NAME`).
"""

import contextlib
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from secure_pipeline.errors import ConfigurationError, PolicyViolation
from secure_pipeline.promotion.canary import CanaryPolicy, CanaryVerdict, SlotMetrics, judge
from secure_pipeline.serving.certs import (
    CONTROLLER_IDENTITY,
    GATEWAY_IDENTITY,
    SLOT_SERVER_NAME,
    SlotPki,
    ensure_slot_pki,
)
from secure_pipeline.serving.server import SLOTS, ServingLimits
from secure_pipeline.spec import PipelineSpec

STATE_FILE = "deployment.json"
SLOT_PKI_DIR = "slot-pki"
_POLL_SECONDS = 0.25
# Slot address -> the slot PKI of the deployment it belongs to, for every deployment this
# process loaded or started: `slot_readiness`, `scrape` and `wait_ready` are called with an
# address only, and must still present the controller's certificate of the right slot CA.
_SLOT_PKIS: dict[str, SlotPki] = {}
# Slot address -> a kept connection of the controller, with the identity of the PKI files it was
# made with. The canary loop reads both slots' metrics four times a second: a TLS handshake each
# time would cost the slots CPU in their event loop, beside the requests being measured.
_CONNECTIONS: dict[str, tuple[tuple[object, ...], http.client.HTTPSConnection]] = {}
_CONNECTIONS_LOCK = threading.Lock()


@dataclass
class SlotState:
    """One slot of the deployment.

    Attributes:
        address: ``host:port`` the slot listens on (loopback, mutual TLS: the gateway and the
            controller, with their slot-CA certificates, are its only clients).
        model_ref: The model version it serves (``models:/name/N``), if any.
        pid: Its process, while running.
    """

    address: str
    model_ref: str | None = None
    pid: int | None = None


@dataclass
class DeploymentState:
    """What ``deployment.json`` records.

    Attributes:
        name: The registered model served.
        live: The slot taking the traffic.
        slots: Each slot's state.
        weights: Each slot's share of traffic.
        gateway: The gateway's settings (see `secure_pipeline.serving.gateway.GatewayConfig`).
        pipeline: The pipeline the slots validate requests with: its name in the code location,
            or ``module:attribute`` of its spec (empty: the deployment's name).
    """

    name: str
    live: str
    slots: dict[str, SlotState]
    weights: dict[str, int]
    gateway: dict[str, Any]
    pipeline: str = ""

    @classmethod
    def load(cls, directory: Path) -> "DeploymentState":
        """Read the deployment in ``directory``."""
        path = directory / STATE_FILE
        if not path.is_file():
            raise ConfigurationError(
                f"no serving deployment in {directory} ({STATE_FILE} is missing): start one "
                "with `secure-pipeline serving up`"
            )
        data = json.loads(path.read_text())
        data["slots"] = {k: SlotState(**v) for k, v in data["slots"].items()}
        state = cls(**data)
        pki = slot_pki(directory)
        for slot in state.slots.values():
            _SLOT_PKIS[slot.address] = pki
        return state

    def save(self, directory: Path) -> None:
        """Write atomically: a crash leaves the previous state, never half of one."""
        path = directory / STATE_FILE
        partial = path.with_suffix(".json.partial")
        partial.write_text(json.dumps(asdict(self), indent=2, sort_keys=True))
        os.replace(partial, path)


@dataclass
class ReleaseOutcome:
    """What a release did.

    Attributes:
        version: The version released.
        slot: The slot it was deployed to.
        promoted: Whether it became champion and took all traffic.
        verdict: The canary analysis (None when the slot never became ready).
        reason: Why it was not promoted, if it was not.
    """

    version: str
    slot: str
    promoted: bool
    verdict: CanaryVerdict | None = None
    reason: str | None = None
    weights: dict[str, int] = field(default_factory=dict)


def slot_pki(directory: Path) -> SlotPki:
    """Where the slot PKI of the deployment in ``directory`` is (it may not exist yet)."""
    return SlotPki(Path(directory) / SLOT_PKI_DIR)


def controller_context(pki: SlotPki) -> ssl.SSLContext:
    """The client context of the release controller for the slots of ``pki``.

    TLS 1.3, the controller's client certificate, and a slot's certificate verified against
    the slot CA and `SLOT_SERVER_NAME` (never the system roots). Made afresh each time (the
    files are read again): a deployment started anew may have a new slot PKI.

    Raises:
        ConfigurationError: When the PKI's files are missing or unreadable.
    """
    # PROTOCOL_TLS_CLIENT: certificate and host name verification on, and no default roots.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=_readable(pki.ca_cert))
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(
        _readable(pki.client_cert(CONTROLLER_IDENTITY)),
        _readable(pki.client_key(CONTROLLER_IDENTITY)),
    )
    return context


def _readable(path: Path) -> Path:
    if not path.is_file() or not os.access(path, os.R_OK):
        raise ConfigurationError(
            f"{path} of the slot PKI is not a readable file: the deployment's slots cannot be "
            "reached without it (it is made by `secure-pipeline serving up`)"
        )
    return path


class _SlotConnection(http.client.HTTPSConnection):
    """HTTPS to a slot address, verifying the slot name rather than the address."""

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(  # type: ignore[attr-defined]
            self.sock, server_hostname=SLOT_SERVER_NAME
        )


def _pki_of(address: str, pki: SlotPki | None) -> SlotPki:
    found = pki or _SLOT_PKIS.get(address)
    if found is None:
        raise ConfigurationError(
            f"no slot PKI known for the slot at {address}: load its deployment "
            "(DeploymentState.load) or pass its SlotPki"
        )
    return found


def _pki_identity(pki: SlotPki) -> tuple[object, ...]:
    """What identifies the PKI's files: a PKI made anew in the same place differs."""
    files = (pki.ca_cert, pki.client_cert(CONTROLLER_IDENTITY), pki.client_key(CONTROLLER_IDENTITY))
    try:
        return (pki.directory, *((f.stat().st_ino, f.stat().st_mtime_ns) for f in files))
    except OSError:
        return (pki.directory, None)


def _get(
    address: str, path: str, timeout: float = 5.0, pki: SlotPki | None = None
) -> tuple[int, bytes]:
    """GET ``path`` from the slot at ``address`` over mutual TLS, as the controller.

    The connection is kept for the next call to that slot; a kept connection the slot has
    closed meanwhile is replaced once (a GET is safe to repeat).
    """
    found = _pki_of(address, pki)
    identity = _pki_identity(found)
    with _CONNECTIONS_LOCK:
        kept = _CONNECTIONS.pop(address, None)  # exclusive while in use
    if kept is not None and kept[0] != identity:
        kept[1].close()
        kept = None
    while True:
        reused = kept is not None
        if kept is not None:
            connection = kept[1]
            if connection.sock is not None:
                connection.sock.settimeout(timeout)
        else:
            host, _, port = address.rpartition(":")
            connection = _SlotConnection(
                host.strip("[]"), int(port), timeout=timeout, context=controller_context(found)
            )
        kept = None
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException):
            connection.close()
            if reused:
                continue
            raise
        if response.will_close:
            connection.close()
        else:
            with _CONNECTIONS_LOCK:
                previous = _CONNECTIONS.pop(address, None)
                _CONNECTIONS[address] = (identity, connection)
            if previous is not None:
                previous[1].close()
        return response.status, body


def slot_readiness(address: str, pki: SlotPki | None = None) -> tuple[str, str]:
    """A slot's state (``loading``, ``ready``, ``refused`` or ``down``) and why.

    Args:
        address: The slot's ``host:port``.
        pki: Its deployment's slot PKI; default: that of the deployment it was loaded with.
    """
    try:
        _, body = _get(address, "/readyz", timeout=2.0, pki=pki)
        document = json.loads(body)
        return str(document.get("state")), str(document.get("reason"))
    except ConfigurationError as exc:
        return "down", str(exc)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return "down", f"{type(exc).__name__}: {exc}"


def scrape(address: str, pki: SlotPki | None = None) -> SlotMetrics:
    """A slot's metrics (``pki`` as for `slot_readiness`)."""
    from secure_pipeline.promotion.canary import parse_metrics

    status, body = _get(address, "/metrics", pki=pki)
    if status != 200:
        raise PolicyViolation(f"slot at {address} answered {status} for its metrics")
    return parse_metrics(body.decode())


def _serves(address: str) -> str | None:
    """The model digest a slot reports ready with, or None (not ready, down, unreadable)."""
    try:
        status, body = _get(address, "/readyz", timeout=2.0)
        document = json.loads(body)
    except (ConfigurationError, OSError, ValueError, http.client.HTTPException):
        return None
    if status != 200 or not isinstance(document, dict) or document.get("state") != "ready":
        return None
    return str(document.get("model_sha256"))


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_slot(
    directory: Path, slot: str, state: SlotState, model_ref: str, pipeline: str,
    limits: ServingLimits | None = None,
) -> SlotState:  # fmt: skip
    """Start a slot process pinned to ``model_ref`` (replacing whatever the slot ran).

    The slot serves mutual TLS with the deployment's slot PKI (``directory/slot-pki``).

    Raises:
        ConfigurationError: When the deployment has no usable slot PKI.
    """
    pki = slot_pki(directory)
    for path in (pki.server_cert, pki.server_key, pki.ca_cert):
        _readable(path)
    stop_slot(state)
    host, _, port = state.address.rpartition(":")
    limits = limits or ServingLimits()
    command = [
        sys.executable, "-m", "secure_pipeline.cli", "serve", model_ref, "--slot", slot,
        "--host", host, "--port", port, "--pipeline", pipeline,
        "--max-rows", str(limits.max_rows), "--max-body-bytes", str(limits.max_body_bytes),
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
        "--client-ca", str(pki.ca_cert),
    ]  # fmt: skip
    _SLOT_PKIS[state.address] = pki
    log = directory / f"{slot}.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )
    return SlotState(state.address, model_ref, process.pid)


def close_slot_connections(address: str | None = None) -> None:
    """Close the controller's kept connections: to the slot at ``address``, or to every slot.

    A slot shutting down waits for its TLS connections to end; an idle kept connection would
    hold it up.
    """
    with _CONNECTIONS_LOCK:
        addresses = list(_CONNECTIONS) if address is None else [address]
        closing = [_CONNECTIONS.pop(a) for a in addresses if a in _CONNECTIONS]
    for _, connection in closing:
        connection.close()


def stop_slot(state: SlotState, timeout: float = 10.0) -> None:
    """Stop a slot's process, if it runs."""
    close_slot_connections(state.address)
    if not _alive(state.pid):
        return
    assert state.pid is not None
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(state.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                finished, _ = os.waitpid(state.pid, os.WNOHANG)
            except ChildProcessError:  # not our child: poll for it to go away
                finished = 0 if _alive(state.pid) else state.pid
            if finished:
                return
            time.sleep(0.05)


def wait_ready(address: str, timeout: float, pki: SlotPki | None = None) -> tuple[bool, str]:
    """Wait for a slot to verify and load its model; a refusal ends the wait at once.

    ``pki`` as for `slot_readiness`.
    """
    deadline = time.monotonic() + timeout
    reason = "not started"
    while time.monotonic() < deadline:
        state, reason = slot_readiness(address, pki)
        if state == "ready":
            return True, reason
        if state == "refused":
            return False, reason
        time.sleep(_POLL_SECONDS)
    return False, f"not ready after {timeout:g} s ({reason})"


class BlueGreen:
    """Control a serving deployment: release a new version through a canary.

    Args:
        directory: The deployment directory.
        pipeline: The spec (its name is the registered model).
        policy: When a canary passes.
    """

    def __init__(
        self, directory: Path, pipeline: PipelineSpec, policy: CanaryPolicy | None = None
    ) -> None:
        self.directory = Path(directory)
        self.pipeline = pipeline
        self.policy = policy or CanaryPolicy()
        problems = self.policy.problems()
        if problems:
            raise ConfigurationError("invalid canary policy: " + "; ".join(problems))
        self.state = DeploymentState.load(self.directory)

    def _gateway(self) -> Any:
        from secure_pipeline.serving.gateway import Gateway

        return Gateway.attach(self.directory / "gateway")

    def set_weights(self, weights: Mapping[str, int]) -> None:
        """Move traffic, then record the new weights."""
        self._gateway().set_weights(dict(weights))
        self.state.weights = dict(weights)
        self.state.save(self.directory)

    def _start_verified(
        self, slot: str, model_ref: str, limits: ServingLimits | None
    ) -> str | None:
        """Start ``slot`` on ``model_ref`` and wait until it verified and loaded the model.

        Returns:
            None when it is ready; else why not (the slot is stopped again).
        """
        self.state.slots[slot] = start_slot(
            self.directory, slot, self.state.slots[slot], model_ref,
            self.state.pipeline or self.state.name, limits,
        )  # fmt: skip
        self.state.save(self.directory)
        ready, why = wait_ready(self.state.slots[slot].address, self.policy.ready_timeout_seconds)
        if ready:
            return None
        stop_slot(self.state.slots[slot])
        self.state.slots[slot] = SlotState(self.state.slots[slot].address)
        self.state.save(self.directory)
        return why

    def release(
        self,
        version: str,
        *,
        audit: Any,
        actor: str,
        run_id: str | None = None,
        limits: ServingLimits | None = None,
        clock: Any = time.monotonic,
    ) -> ReleaseOutcome:
        """Deploy ``version`` to the idle slot, run the canary, promote or roll back.

        Only a version the gate admitted is deployed: its signed decision for exactly the
        bundle the registry serves, with the approvals it cites, is checked before any slot is
        touched.

        Raises:
            PolicyViolation: When the gate never admitted the version, the slot never became
                ready or the canary failed (audited; traffic is back on the live slot and the
                champion is unchanged).
        """
        from secure_pipeline.promotion.gate import make_champion
        from secure_pipeline.registry.evidence import verify_reference
        from secure_pipeline.trust.identities import GATE
        from secure_pipeline.trust.policy import trust_policy
        from secure_pipeline.trust.signers import signer_for

        name = self.pipeline.name
        live = self.state.live
        idle = next(s for s in SLOTS if s != live)
        model_ref = f"models:/{name}/{version}"
        signer = signer_for(GATE)
        details = {"name": name, "version": version, "slot": idle, "live": live}
        with verify_reference(model_ref, pipeline=self.pipeline, trust=trust_policy(),
                              store=audit.store, require="promoted") as evidence:  # fmt: skip
            subject = evidence.verification.model_sha256
            if not evidence.ok:
                reason = ("; ".join(evidence.problems))[:900]
                audit.append("canary.refused", signer=signer, actor=actor, run_id=run_id,
                             subject=subject, details={**details, "reason": reason})  # fmt: skip
                raise PolicyViolation(
                    f"version {version} of {name} is not released: {reason}; all traffic stays "
                    f"on slot {live}"
                )
        why = self._start_verified(idle, model_ref, limits)
        if why is not None:
            reason = f"slot {idle} never became ready for version {version}: {why}"[:900]
            audit.append("canary.refused", signer=signer, actor=actor, run_id=run_id,
                         subject=subject, details={**details, "reason": reason})  # fmt: skip
            raise PolicyViolation(reason + "; all traffic stays on slot " + live)
        before = {s: scrape(self.state.slots[s].address) for s in (live, idle)}
        weight = self.policy.canary_weight
        self.set_weights({live: 100 - weight, idle: weight})
        audit.append("canary.started", signer=signer, actor=actor, run_id=run_id,
                     subject=subject, details={**details, "weight": weight})  # fmt: skip
        deadline = clock() + self.policy.observe_seconds
        while True:
            after = {s: scrape(self.state.slots[s].address) for s in (live, idle)}
            seen = after[idle].since(before[idle]).requests
            if seen >= self.policy.min_requests or clock() >= deadline:
                break
            time.sleep(_POLL_SECONDS)
        verdict = judge(
            after[live].since(before[live]), after[idle].since(before[idle]), self.policy
        )
        figures = {**details, **verdict.figures}
        if not verdict.passed:
            self.set_weights({live: 100, idle: 0})
            stop_slot(self.state.slots[idle])
            self.state.slots[idle] = SlotState(self.state.slots[idle].address)
            self.state.save(self.directory)
            reason = "; ".join(verdict.reasons)[:900]
            audit.append("canary.rolled_back", signer=signer, actor=actor, run_id=run_id,
                         subject=subject, details={**figures, "reason": reason})  # fmt: skip
            raise PolicyViolation(
                f"canary of version {version} failed, rolled back (all traffic on slot {live}, "
                f"champion unchanged): {reason}"
            )
        self.set_weights({live: 0, idle: 100})
        self.state.live = idle
        self.state.save(self.directory)
        audit.append("canary.passed", signer=signer, actor=actor, run_id=run_id,
                     subject=subject, details=figures)  # fmt: skip
        make_champion(self.pipeline, name, version, store=audit.store, audit=audit, actor=actor,
                      run_id=run_id)  # fmt: skip
        return ReleaseOutcome(version, idle, True, verdict, None, dict(self.state.weights))

    def restore(
        self,
        version: str,
        model_sha256: str,
        *,
        audit: Any,
        actor: str,
        run_id: str | None = None,
        limits: ServingLimits | None = None,
    ) -> str:
        """Give all traffic to a slot serving ``version``, the champion a rollback restored.

        The caller has made ``version`` champion again through the verified rollback. The slot
        that still serves it (a blue-green release keeps the old slot running) takes the
        traffic at once if it reports ready with exactly ``model_sha256`` (the digest the
        rollback verified); otherwise the other slot is started on it, verifies it and takes the
        traffic once ready. The slot that served the failed model is stopped.

        Returns:
            The slot now taking all the traffic.

        Raises:
            PolicyViolation: When no slot becomes ready on ``version`` (audited; traffic and
                slots are left as they were).
        """
        from secure_pipeline.trust.identities import GATE
        from secure_pipeline.trust.signers import signer_for

        name = self.pipeline.name
        model_ref = f"models:/{name}/{version}"
        live = self.state.live
        serving = [
            s for s in SLOTS
            if self.state.slots[s].model_ref == model_ref and _alive(self.state.slots[s].pid)
        ]  # fmt: skip
        target = None
        for slot in serving:
            if _serves(self.state.slots[slot].address) == model_sha256:
                target = slot
                break
        if target is None:
            target = next(s for s in SLOTS if s != live)
            why = self._start_verified(target, model_ref, limits)
            if why is not None:
                reason = f"slot {target} never became ready for version {version}: {why}"[:900]
                audit.append("canary.refused", signer=signer_for(GATE), actor=actor,
                             run_id=run_id,
                             details={"name": name, "version": version, "slot": target,
                                      "live": live, "reason": reason})  # fmt: skip
                raise PolicyViolation(reason + f"; traffic stays on slot {live}")
        other = next(s for s in SLOTS if s != target)
        self.set_weights({target: 100, other: 0})
        self.state.live = target
        if self.state.slots[other].model_ref != model_ref:
            # The failed model gets no traffic and is not left running.
            stop_slot(self.state.slots[other])
            self.state.slots[other] = SlotState(self.state.slots[other].address)
        self.state.save(self.directory)
        return target


def up(
    directory: Path,
    pipeline: PipelineSpec,
    *,
    model_ref: str,
    listen: str,
    slot_ports: Mapping[str, int],
    server_cert: Path,
    server_key: Path,
    client_ca: Path,
    identities: Mapping[str, tuple[str, ...]],
    routes: Mapping[str, str] | None = None,
    rate_per_second: float = 50.0,
    burst: int = 100,
    pipeline_spec: str = "",
    ready_timeout: float = 180.0,
) -> DeploymentState:
    """Start a serving deployment: the blue slot on ``model_ref``, then the gateway in front.

    The gateway starts only once the slot verified its model, so it never routes to a slot
    that has nothing verified to serve. Processes outlive the caller; `down` stops them.
    The slot PKI is made in ``directory/slot-pki`` first (or reused from an earlier start,
    if complete and valid); nginx reaches the slots with its gateway certificate, and this
    module with the controller's.

    Raises:
        ConfigurationError: When a deployment already runs in ``directory``, or its slot PKI
            is incomplete or expiring.
        PolicyViolation: When the model does not verify (nothing is left running).
    """
    from secure_pipeline.serving.gateway import DEFAULT_ROUTES, Gateway, GatewayConfig, Slot

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / STATE_FILE).is_file():
        raise ConfigurationError(
            f"a serving deployment is already recorded in {directory}: stop it first "
            "(`secure-pipeline serving down`)"
        )
    if set(slot_ports) != set(SLOTS):
        raise ConfigurationError(
            f"slot_ports must name exactly {SLOTS}, found {sorted(slot_ports)}"
        )
    slots = {name: SlotState(f"127.0.0.1:{slot_ports[name]}") for name in SLOTS}
    pki = ensure_slot_pki(slot_pki(directory).directory)
    # Validates every gateway setting before any process starts.
    config = GatewayConfig(
        listen=listen, server_cert=Path(server_cert), server_key=Path(server_key),
        client_ca=Path(client_ca), identities=identities, routes=routes or DEFAULT_ROUTES,
        rate_per_second=rate_per_second, burst=burst,
        slots=(Slot("blue", slots["blue"].address, 100), Slot("green", slots["green"].address, 0)),
        upstream_cert=pki.client_cert(GATEWAY_IDENTITY),
        upstream_key=pki.client_key(GATEWAY_IDENTITY), upstream_ca=pki.ca_cert,
        upstream_name=SLOT_SERVER_NAME,
    )  # fmt: skip
    for slot in slots.values():
        _SLOT_PKIS[slot.address] = pki
    blue = start_slot(directory, "blue", slots["blue"], model_ref, pipeline_spec or pipeline.name)
    ready, why = wait_ready(blue.address, ready_timeout, pki)
    if not ready:
        stop_slot(blue)
        raise PolicyViolation(f"the blue slot did not become ready for {model_ref}: {why}")
    slots["blue"] = blue
    state = DeploymentState(
        name=pipeline.name, live="blue", slots=slots, weights={"blue": 100, "green": 0},
        gateway={"listen": listen, "workdir": str(directory / "gateway")}, pipeline=pipeline_spec,
    )  # fmt: skip
    try:
        Gateway(config, directory / "gateway").start()
    except Exception:
        stop_slot(blue)
        raise
    state.save(directory)
    return state


def down(directory: Path) -> None:
    """Stop the gateway and both slots of a deployment, and forget it."""
    from secure_pipeline.serving.gateway import Gateway, GatewayError

    directory = Path(directory)
    state = DeploymentState.load(directory)
    with contextlib.suppress(GatewayError):  # not running: nothing to stop
        Gateway.attach(directory / "gateway").stop()
    for slot in state.slots.values():
        stop_slot(slot)
    (directory / STATE_FILE).unlink()
