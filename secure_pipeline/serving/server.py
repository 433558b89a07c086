"""The model server: one slot (``blue`` or ``green``) serving one verified model version.

The slot is pinned to a model reference (``models:/adult/3``). At start-up it downloads that
version and loads it only through `secure_pipeline.serving.loader.load_verified` (signature,
every file's digest, trust policy, lineage verdicts, no pickle); until that succeeded
``/readyz`` and ``/predict`` answer 503, and a model that fails verification never becomes
ready, so a gateway never gives it traffic.

Routes:

* ``POST /predict``: ``{"rows": [{column: value, ...}, ...]}`` with the raw columns the model's
  features derive from, validated against the pipeline's schema (types, allowed categories,
  ranges, no unknown or missing fields); body size and row count are limited. Answers the
  score and label per row, the model digest and the slot.
* ``GET /healthz``: the process is alive. ``GET /readyz``: the model verified and loaded.
* ``GET /metrics``: Prometheus text: requests by route and code, latency histogram, prediction
  scores and labels, and the model digest being served.

The server listens on a loopback or pod-local address behind the gateway, which terminates
mutual TLS, authorises the caller and limits its rate.
"""

import json
import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from secure_pipeline.pipeline import SecurePipeline

if TYPE_CHECKING:
    import pandas as pd
    from starlette.applications import Starlette

logger = logging.getLogger(__name__)

SLOTS = ("blue", "green")
# What a slot needs in production: the store and registry it verifies against, and the trust
# policy. Not the Dagster database, the signer or the sources (it has no business with them).
SERVING_REQUIRED = (
    "SECURE_PIPELINE_S3_BUCKET",
    "AWS_REGION",
    "MLFLOW_TRACKING_URI",
    "SECURE_PIPELINE_TRUST_POLICY",
)
JSON_TYPE = "application/json"
# Upper bounds of the latency histogram (seconds): fine below 50 ms, where p95 lives.
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SCORE_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))


@dataclass(frozen=True)
class ServingLimits:
    """What one request may carry.

    Attributes:
        max_body_bytes: Largest request body.
        max_rows: Most rows per request.
    """

    max_body_bytes: int = 256 * 1024
    max_rows: int = 1000


@dataclass(frozen=True)
class InputField:
    """One raw column a caller sends, as the pipeline's schema declares it."""

    name: str
    dtype: str
    nullable: bool
    allowed: tuple[str, ...] | None
    minimum: float | None
    maximum: float | None

    def check(self, value: Any) -> str | None:
        """Why ``value`` is not acceptable for this field, or None."""
        if value is None:
            return None if self.nullable else "a value (this field may not be null)"
        if self.dtype in ("int", "float"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                return f"a number ({self.dtype})"
            if not math.isfinite(value):
                return "a finite number"
            if self.dtype == "int" and float(value) != int(value):
                return "a whole number"
            if self.minimum is not None and value < self.minimum:
                return f"a number >= {self.minimum:g}"
            if self.maximum is not None and value > self.maximum:
                return f"a number <= {self.maximum:g}"
            return None
        if self.dtype == "bool":
            return None if isinstance(value, bool) else "true or false"
        if not isinstance(value, str):
            return "a string"
        if self.allowed is not None and value not in self.allowed:
            shown = ", ".join(self.allowed[:12]) + (", ..." if len(self.allowed) > 12 else "")
            return f"one of: {shown}"
        return None


class RequestError(ValueError):
    """A request the server will not score, with the HTTP status and what to fix."""

    def __init__(self, status: int, error: str, **details: Any) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.details = details

    def body(self) -> dict[str, Any]:
        """The JSON error document."""
        return {"error": self.error, **self.details}


def input_fields(pipeline: SecurePipeline, inputs: Sequence[str]) -> list[InputField]:
    """The raw columns the model's input features derive from, in schema order."""
    from secure_pipeline.features.engineering import feature_catalog

    catalog = {f.name: f for f in feature_catalog(pipeline)}
    unknown = [name for name in inputs if name not in catalog]
    if unknown:
        raise ValueError(
            f"the model's inputs {unknown} are not features of pipeline {pipeline.name!r}: "
            "serve it with the pipeline spec it was trained under"
        )
    sources = {catalog[name].source for name in inputs}
    return [
        InputField(c.name, c.dtype, c.nullable, c.allowed, c.minimum, c.maximum)
        for c in pipeline.schema.columns
        if c.name in sources
    ]


def rows_to_frame(
    rows: Any, fields: Sequence[InputField], pipeline: SecurePipeline, inputs: Sequence[str],
    limits: ServingLimits,
) -> "pd.DataFrame":  # fmt: skip
    """Validate a request's rows and derive the model's input features from them.

    Raises:
        RequestError: Naming the first rows and fields that are wrong, what was expected
            and what was found.
    """
    import pandas as pd

    from secure_pipeline.features.engineering import feature_catalog

    if not isinstance(rows, list) or not rows:
        raise RequestError(400, "expected a JSON object {\"rows\": [ {...}, ... ]} with at "
                             "least one row", found=type(rows).__name__)  # fmt: skip
    if len(rows) > limits.max_rows:
        raise RequestError(413, f"at most {limits.max_rows} rows per request",
                             found=len(rows))  # fmt: skip
    names = {f.name for f in fields}
    problems: list[dict[str, Any]] = []
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            problems.append({"row": index, "expected": "an object", "found": type(row).__name__})
            continue
        for key in sorted(set(row) - names):
            problems.append({"row": index, "field": str(key)[:64], "expected": "no such field"})
        for field in fields:
            if field.name not in row:
                problems.append({"row": index, "field": field.name, "expected": "present"})
                continue
            why = field.check(row[field.name])
            if why is not None:
                found = row[field.name]
                problems.append({"row": index, "field": field.name, "expected": why,
                                 "found": found if isinstance(found, int | float | bool)
                                 else str(found)[:64]})  # fmt: skip
        if len(problems) >= 20:
            break
    if problems:
        raise RequestError(422, "rows do not match the model's input schema",
                             problems=problems[:20],
                             fields={f.name: f.dtype for f in fields})  # fmt: skip
    catalog = {f.name: f for f in feature_catalog(pipeline)}
    return pd.DataFrame(
        {
            name: _feature_values(
                catalog[name], [row[catalog[name].source] for row in rows], pipeline
            )
            for name in inputs
        }  # fmt: skip
    )


def _feature_values(feature: Any, values: list[Any], pipeline: SecurePipeline) -> Any:
    """`feature_column` for a request's validated values, without pandas per column.

    Pandas categoricals per column were a third of a single-row request. The encodings are the
    training ones (category index, -1 when missing; bands by a right-closed search, -1 when
    missing; log1p of the amount clipped at 0); the serving tests compare predictions with the
    training-time path on the same rows.
    """
    import numpy as np

    if feature.kind == "categorical" and feature.name == feature.source:
        index = {category: code for code, category in enumerate(feature.categories)}
        return np.array([index.get(v, -1) for v in values], dtype="int16")
    numbers = np.array([np.nan if v is None else float(v) for v in values], dtype="float64")
    if feature.name == feature.source:
        return numbers
    if feature.kind == "categorical":  # a band
        cuts = np.asarray(pipeline.features.bands[feature.source], dtype="float64")
        band = np.searchsorted(cuts, numbers, side="right").astype("int16")
        return np.where(np.isnan(numbers), -1, band).astype("int16")
    return np.log1p(np.clip(numbers, 0, None))


class ModelService:
    """One slot: verifies and loads its model in the background, then scores requests.

    Args:
        pipeline: The spec whose schema and policy apply.
        model_ref: ``models:/name/version`` (pin a version), ``models:/name@alias`` or a
            bundle directory.
        slot: ``blue`` or ``green``.
        limits: Request limits.
    """

    def __init__(
        self,
        pipeline: SecurePipeline,
        model_ref: str,
        slot: str,
        limits: ServingLimits | None = None,
    ) -> None:
        if slot not in SLOTS:
            raise ValueError(f"slot must be one of {SLOTS}, found {slot!r}")
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

        self.pipeline = pipeline
        self.model_ref = model_ref
        self.slot = slot
        self.limits = limits or ServingLimits()
        self.state = "loading"
        self.reason = "verifying the model"
        self.model: Any = None
        self.model_sha256: str | None = None
        self.version: str | None = None
        self.inputs: list[str] = []
        self.fields: list[InputField] = []
        self._lock = threading.Lock()
        # A registry per service: two slots in one process (tests) keep separate metrics.
        self.registry = CollectorRegistry()
        self.requests = Counter("secure_pipeline_requests", "Requests by route and status code.",
                                ["route", "code"], registry=self.registry)  # fmt: skip
        self.latency = Histogram("secure_pipeline_request_seconds", "Request latency.",
                                 ["route"], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)  # fmt: skip
        self.scores = Histogram("secure_pipeline_prediction_score", "Predicted scores.",
                                buckets=SCORE_BUCKETS, registry=self.registry)  # fmt: skip
        self.labels = Counter("secure_pipeline_predictions", "Predictions by label.",
                              ["label"], registry=self.registry)  # fmt: skip
        self.ready = Gauge("secure_pipeline_ready", "1 once the model verified and loaded.",
                           registry=self.registry)  # fmt: skip
        self.info = Info("secure_pipeline_model", "The model this slot serves.",
                         registry=self.registry)  # fmt: skip
        self.info.info({"slot": slot, "model_ref": model_ref, "model_sha256": "",
                        "state": self.state})  # fmt: skip

    def load(self) -> None:
        """Download, verify and load the model; on any failure the slot never becomes ready."""
        try:
            self._load()
        except Exception as exc:  # noqa: BLE001 - any failure leaves the slot unready, reported
            with self._lock:
                self.state = "refused"
                self.reason = f"{type(exc).__name__}: {exc}"[:2000]
            self.info.info({"slot": self.slot, "model_ref": self.model_ref, "model_sha256": "",
                            "state": self.state})  # fmt: skip
            logger.error("slot %s will not serve %s: %s", self.slot, self.model_ref, self.reason)

    def _load(self) -> None:
        from secure_pipeline import environment as env
        from secure_pipeline.registry.mlflow_registry import version_tags
        from secure_pipeline.registry.signing import trust_policy_from_environment
        from secure_pipeline.registry.verification import resolve
        from secure_pipeline.serving.loader import load_verified
        from secure_pipeline.storage.audit import AuditLog
        from secure_pipeline.storage.resources import store_resource

        store = store_resource(env.validate(required=SERVING_REQUIRED), resolve=True).get_store()
        with resolve(self.model_ref) as resolved:
            tags = (
                version_tags(resolved.name, resolved.version)
                if resolved.name and resolved.version
                else None
            )
            verified = load_verified(
                resolved.directory,
                trust=trust_policy_from_environment(),
                pipeline=self.pipeline,
                store=store,
                audit=AuditLog(store),
                registry_tags=tags,
            )
            version = resolved.version
        fields = input_fields(self.pipeline, verified.inputs)
        with self._lock:
            self.model = verified.model
            self.model_sha256 = verified.model_sha256
            self.version = version
            self.inputs = verified.inputs
            self.fields = fields
            self.state = "ready"
            self.reason = f"verified, signed by {verified.signer}"
        self.ready.set(1)
        self.info.info({"slot": self.slot, "model_ref": self.model_ref,
                        "model_sha256": verified.model_sha256, "version": str(version or ""),
                        "state": self.state})  # fmt: skip
        logger.info("slot %s serves %s (%s)", self.slot, self.model_ref, self.model_sha256)

    def predict(self, document: Any) -> dict[str, Any]:
        """Score a request document; refuses what does not match the input schema."""
        if self.state != "ready":
            raise RequestError(503, f"slot {self.slot} is not ready: {self.reason}")
        if not isinstance(document, dict) or set(document) != {"rows"}:
            raise RequestError(400, "expected a JSON object with exactly one key, \"rows\"",
                                 found=sorted(document)[:10] if isinstance(document, dict)
                                 else type(document).__name__)  # fmt: skip
        frame = rows_to_frame(document["rows"], self.fields, self.pipeline, self.inputs,
                              self.limits)  # fmt: skip
        scores = self.model.predict_proba(frame)[:, 1]
        positive, negative = self._labels()
        predictions = []
        for score in scores:
            label = positive if score >= 0.5 else negative
            self.scores.observe(float(score))
            self.labels.labels(label=label).inc()
            predictions.append({"score": round(float(score), 6), "label": label})
        return {"model_sha256": self.model_sha256, "slot": self.slot,
                "predictions": predictions}  # fmt: skip

    def _labels(self) -> tuple[str, str]:
        schema = self.pipeline.schema
        positive = str(schema.positive_label)
        column = next((c for c in schema.columns if c.name == schema.label), None)
        others = [v for v in (column.allowed or ()) if v != positive] if column else []
        return positive, others[0] if len(others) == 1 else f"not {positive}"


def create_app(service: ModelService, *, load: bool = True) -> "Starlette":
    """The ASGI app of one slot; starts verifying the model in the background at start-up."""
    from contextlib import asynccontextmanager

    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    def finish(route: str, started: float, response: Response) -> Response:
        service.requests.labels(route=route, code=str(response.status_code)).inc()
        service.latency.labels(route=route).observe(time.perf_counter() - started)
        return response

    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        try:
            document = await _read_json(request, service.limits.max_body_bytes)
            result = await run_in_threadpool(service.predict, document)
            response: Response = JSONResponse(result)
        except RequestError as refused:
            headers = {"Retry-After": "5"} if refused.status == 503 else None
            response = JSONResponse(refused.body(), status_code=refused.status, headers=headers)
        except Exception:  # noqa: BLE001 - a bug must answer 500 and be counted, not crash
            logger.exception("slot %s failed to score a request", service.slot)
            response = JSONResponse({"error": "internal error while scoring"}, status_code=500)
        return finish("/predict", started, response)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive", "slot": service.slot})

    async def readyz(request: Request) -> Response:
        body = {"slot": service.slot, "state": service.state, "reason": service.reason,
                "model_ref": service.model_ref, "model_sha256": service.model_sha256}  # fmt: skip
        return JSONResponse(body, status_code=200 if service.state == "ready" else 503)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(service.registry), media_type=CONTENT_TYPE_LATEST)

    @asynccontextmanager
    async def lifespan(app: Starlette):  # noqa: ANN202 - Starlette's lifespan protocol
        if load:
            threading.Thread(target=service.load, name=f"verify-{service.slot}",
                             daemon=True).start()  # fmt: skip
        yield

    return Starlette(
        routes=[
            Route("/predict", predict, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


async def _read_json(request: Any, max_bytes: int) -> Any:
    """The request body as JSON, read up to ``max_bytes``; refuses anything else."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != JSON_TYPE:
        raise RequestError(415, f"expected Content-Type: {JSON_TYPE}",
                             found=content_type[:64] or "(none)")  # fmt: skip
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise RequestError(413, f"request body larger than {max_bytes} bytes",
                             found=int(declared))  # fmt: skip
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise RequestError(413, f"request body larger than {max_bytes} bytes")
    try:
        return json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise RequestError(400, "the body is not valid JSON", found=str(exc)[:120]) from None


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def serve(
    model_ref: str,
    *,
    slot: str,
    host: str = "127.0.0.1",
    port: int = 8001,
    pipeline: SecurePipeline | None = None,
    limits: ServingLimits | None = None,
) -> None:
    """Run one slot until interrupted (the ``secure-pipeline serve`` command)."""
    import uvicorn

    from secure_pipeline.reference.adult import adult_pipeline

    service = ModelService(pipeline or adult_pipeline(), model_ref, slot, limits)
    uvicorn.run(create_app(service), host=host, port=port, log_level="warning",
                access_log=False, server_header=False)  # fmt: skip


def slot_settings(values: Mapping[str, str]) -> dict[str, Any]:
    """Parse ``--limit`` style overrides (``max_rows=100``) into `ServingLimits` fields."""
    known = {"max_body_bytes", "max_rows"}
    parsed: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known or not value.isdigit() or int(value) <= 0:
            raise ValueError(f"limit {key}={value!r}: expected one of {sorted(known)} = a "
                             "positive integer")  # fmt: skip
        parsed[key] = int(value)
    return parsed
