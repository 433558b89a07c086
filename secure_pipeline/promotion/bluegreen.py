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
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from secure_pipeline.errors import ConfigurationError, PolicyViolation
from secure_pipeline.pipeline import SecurePipeline
from secure_pipeline.promotion.canary import CanaryPolicy, CanaryVerdict, SlotMetrics, judge
from secure_pipeline.serving.server import SLOTS, ServingLimits

STATE_FILE = "deployment.json"
_POLL_SECONDS = 0.25


@dataclass
class SlotState:
    """One slot of the deployment.

    Attributes:
        address: ``host:port`` the slot listens on (loopback; the gateway is its only client).
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
        pipeline: The pipeline spec (``module:attribute``) the slots validate requests with.
    """

    name: str
    live: str
    slots: dict[str, SlotState]
    weights: dict[str, int]
    gateway: dict[str, Any]
    pipeline: str = "secure_pipeline.reference.adult:adult_pipeline"

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
        return cls(**data)

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


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def slot_readiness(address: str) -> tuple[str, str]:
    """A slot's state (``loading``, ``ready``, ``refused`` or ``down``) and why."""
    try:
        _, body = _get(f"http://{address}/readyz", timeout=2.0)
        document = json.loads(body)
        return str(document.get("state")), str(document.get("reason"))
    except (OSError, ValueError) as exc:
        return "down", f"{type(exc).__name__}: {exc}"


def scrape(address: str) -> SlotMetrics:
    """A slot's metrics."""
    from secure_pipeline.promotion.canary import parse_metrics

    status, body = _get(f"http://{address}/metrics")
    if status != 200:
        raise PolicyViolation(f"slot at {address} answered {status} for its metrics")
    return parse_metrics(body.decode())


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
    """Start a slot process pinned to ``model_ref`` (replacing whatever the slot ran)."""
    stop_slot(state)
    host, _, port = state.address.rpartition(":")
    limits = limits or ServingLimits()
    command = [
        sys.executable, "-m", "secure_pipeline.cli", "serve", model_ref, "--slot", slot,
        "--host", host, "--port", port, "--pipeline", pipeline,
        "--max-rows", str(limits.max_rows), "--max-body-bytes", str(limits.max_body_bytes),
    ]  # fmt: skip
    log = directory / f"{slot}.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )
    return SlotState(state.address, model_ref, process.pid)


def stop_slot(state: SlotState, timeout: float = 10.0) -> None:
    """Stop a slot's process, if it runs."""
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


def wait_ready(address: str, timeout: float) -> tuple[bool, str]:
    """Wait for a slot to verify and load its model; a refusal ends the wait at once."""
    deadline = time.monotonic() + timeout
    reason = "not started"
    while time.monotonic() < deadline:
        state, reason = slot_readiness(address)
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
        self, directory: Path, pipeline: SecurePipeline, policy: CanaryPolicy | None = None
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

        Raises:
            PolicyViolation: When the slot never became ready or the canary failed (audited;
                traffic is back on the live slot and the champion alias is unchanged).
        """
        from secure_pipeline.promotion.gate import make_champion
        from secure_pipeline.registry.mlflow_registry import version_tags

        name = self.pipeline.name
        live = self.state.live
        idle = next(s for s in SLOTS if s != live)
        model_ref = f"models:/{name}/{version}"
        subject = version_tags(name, version).get("model_sha256")
        details = {"name": name, "version": version, "slot": idle, "live": live}
        self.state.slots[idle] = start_slot(
            self.directory, idle, self.state.slots[idle], model_ref, self.state.pipeline, limits
        )
        self.state.save(self.directory)
        ready, why = wait_ready(self.state.slots[idle].address, self.policy.ready_timeout_seconds)
        if not ready:
            stop_slot(self.state.slots[idle])
            self.state.slots[idle] = SlotState(self.state.slots[idle].address)
            self.state.save(self.directory)
            reason = f"slot {idle} never became ready for version {version}: {why}"[:900]
            audit.append("canary.refused", actor=actor, run_id=run_id, subject=subject,
                         details={**details, "reason": reason})  # fmt: skip
            raise PolicyViolation(reason + "; all traffic stays on slot " + live)
        before = {s: scrape(self.state.slots[s].address) for s in (live, idle)}
        weight = self.policy.canary_weight
        self.set_weights({live: 100 - weight, idle: weight})
        audit.append("canary.started", actor=actor, run_id=run_id, subject=subject,
                     details={**details, "weight": weight})  # fmt: skip
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
            audit.append("canary.rolled_back", actor=actor, run_id=run_id, subject=subject,
                         details={**figures, "reason": reason})  # fmt: skip
            raise PolicyViolation(
                f"canary of version {version} failed, rolled back (all traffic on slot {live}, "
                f"champion unchanged): {reason}"
            )
        self.set_weights({live: 0, idle: 100})
        self.state.live = idle
        self.state.save(self.directory)
        audit.append("canary.passed", actor=actor, run_id=run_id, subject=subject,
                     details=figures)  # fmt: skip
        make_champion(name, version, str(subject), audit=audit, actor=actor, run_id=run_id)
        return ReleaseOutcome(version, idle, True, verdict, None, dict(self.state.weights))


def up(
    directory: Path,
    pipeline: SecurePipeline,
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
    pipeline_spec: str = "secure_pipeline.reference.adult:adult_pipeline",
    ready_timeout: float = 180.0,
) -> DeploymentState:
    """Start a serving deployment: the blue slot on ``model_ref``, then the gateway in front.

    The gateway starts only once the slot verified its model, so it never routes to a slot
    that has nothing verified to serve. Processes outlive the caller; `down` stops them.

    Raises:
        ConfigurationError: When a deployment already runs in ``directory``.
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
    # Validates every gateway setting before anything starts.
    config = GatewayConfig(
        listen=listen, server_cert=Path(server_cert), server_key=Path(server_key),
        client_ca=Path(client_ca), identities=identities, routes=routes or DEFAULT_ROUTES,
        rate_per_second=rate_per_second, burst=burst,
        slots=(Slot("blue", slots["blue"].address, 100), Slot("green", slots["green"].address, 0)),
    )  # fmt: skip
    blue = start_slot(directory, "blue", slots["blue"], model_ref, pipeline_spec)
    ready, why = wait_ready(blue.address, ready_timeout)
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
