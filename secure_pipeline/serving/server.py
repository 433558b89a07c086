"""The model server: one slot (``blue`` or ``green``) serving one verified model version.

The slot is pinned to a model reference (``models:/adult/3``). At start-up it downloads that
version and loads it only after its whole chain of evidence verified
(`secure_pipeline.registry.evidence`: release signature, every file's digest, the signed
verdicts of its lineage, the signed registration, the gate's signed decision admitting exactly
this bundle and the approvals it cites, no pickle); until that succeeded ``/readyz`` and
``/predict`` answer 503, and a model that fails verification never becomes ready, so a gateway
never gives it traffic.

Routes:

* ``POST /predict``: ``{"rows": [{column: value, ...}, ...]}`` with the raw columns the model's
  features derive from, validated against the pipeline's schema (types, allowed categories,
  ranges, no unknown or missing fields); body size and row count are limited. Answers the
  score and label per row, the model digest and the slot.
  Each prediction carries an ``id`` (128 random bits, hex) that feedback refers to.
* ``POST /feedback``: ``{"feedback": [{"id": "<prediction id>", "label": <a value of the
  schema's label column>}, ...]}``: the true labels of earlier predictions, validated (ids of 32
  hex characters, allowed label values; the same size limits) and recorded in a signed
  ``feedback`` batch (`secure_pipeline.serving.recording`).
* ``GET /healthz``: the process is alive. ``GET /readyz``: the model verified and loaded.
* ``GET /metrics``: Prometheus text, every slot metric labelled with ``pipeline``, ``slot`` and
  (where it is about the model) ``model_version``: requests by route and code, latency
  histogram, prediction scores and labels, the model being served, live recording counters,
  and the process, platform and garbage-collector metrics of prometheus-client.

When the pipeline's ``monitoring.record`` is on, the slot records a sample of what it scores
(`secure_pipeline.serving.recording.LiveRecorder`), written off the request path in batches
signed by the ``serve`` identity, and flushed when the slot shuts down. In production such a
slot needs the ``serve`` identity's key (``SECURE_PIPELINE_SIGNER_SERVE``) and refuses to
become ready without it.

The slot sits behind the gateway, which authenticates callers, authorises them and limits
their rate; so that nothing can go around it, the slot speaks mutual TLS only (`SlotTls`): TLS
1.3 at least, and a client certificate from the deployment's *slot CA* is required, which
issues certificates to the gateway and the release controller only (see
`secure_pipeline.serving.certs.init_slot_pki`). A plain-HTTP request, a TLS client without a
certificate, one with a certificate of any other CA (the gateway's public client CA included)
and a TLS 1.2 client all fail in the handshake and never reach a route. There is no plain-HTTP
mode.
"""

import bisect
import datetime as dt
import functools
import json
import logging
import math
import operator
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from secure_pipeline.errors import ConfigurationError
from secure_pipeline.features.engineering import (
    Feature,
    feature_catalog,
    feature_values,
    request_values,
)
from secure_pipeline.serving.recording import ID_PATTERN, LiveMetrics, LiveRecorder, new_ids
from secure_pipeline.spec import Column, PipelineSpec

if TYPE_CHECKING:
    import ssl

    import numpy as np
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

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
# What a malformed body is told: what the server expects, never what the parser said (its
# message can quote the request).
EXPECTED_BODY = 'a UTF-8 JSON object {"rows": [{...}, ...]} with finite numbers'
EXPECTED_ID = "a prediction id: 32 lower-case hex characters"
EXPECTED_FEEDBACK = 'a JSON object {"feedback": [{"id": "<prediction id>", "label": ...}, ...]}'
_SHOWN_CHARS = 64
# Up to 2**53 a float holds every integer exactly, so a column of numbers tests as floats.
_EXACT_FLOAT = 2.0**53
# From this many values a category column is tested as one set (below, a lookup each is less).
_COLUMN_TEST_ROWS = 8
# How a date without a declared format is written (ISO 8601's calendar date), as validation
# reads it.
_ISO_DATE = "%Y-%m-%d"


@dataclass(frozen=True)
class SlotTls:
    """A slot's mutual TLS: the certificate it presents and the CA its clients must come from.

    Attributes:
        cert: PEM certificate (chain) the slot presents; the gateway verifies it against the
            slot CA and the name `secure_pipeline.serving.certs.SLOT_SERVER_NAME`.
        key: Its private key.
        client_ca: PEM bundle of the CA whose client certificates are accepted: the
            deployment's slot CA, never the gateway's client CA (whose certificates every
            caller holds).
    """

    cert: Path
    key: Path
    client_ca: Path

    def __post_init__(self) -> None:
        for name in ("cert", "key", "client_ca"):
            object.__setattr__(self, name, Path(getattr(self, name)))

    def problems(self) -> list[str]:
        """Every file that is missing or unreadable."""
        files = {"cert": self.cert, "key": self.key, "client_ca": self.client_ca}
        return [
            f"{name} {path} is not a readable file"
            for name, path in files.items()
            if not path.is_file() or not os.access(path, os.R_OK)
        ]


def slot_ssl_context(tls: SlotTls) -> "ssl.SSLContext":
    """The server context of a slot: TLS 1.3 minimum, a client certificate of ``client_ca``.

    Raises:
        ConfigurationError: When a file is missing, unreadable or not what it should be.
    """
    import ssl

    problems = tls.problems()
    if problems:
        raise ConfigurationError("the slot's TLS files are not usable: " + "; ".join(problems))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    # CERT_REQUIRED: a handshake without a client certificate that chains to client_ca fails.
    # OpenSSL also checks the certificate's purpose, so a serverAuth-only certificate of the
    # same CA (the slots' own) is not a client certificate.
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_cert_chain(tls.cert, tls.key)
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigurationError(
            f"the slot's certificate {tls.cert} and key {tls.key} do not load as a PEM pair "
            f"({type(exc).__name__})"
        ) from None
    try:
        context.load_verify_locations(cafile=tls.client_ca)
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigurationError(
            f"the slot's client CA {tls.client_ca} is not a PEM CA bundle ({type(exc).__name__})"
        ) from None
    return context


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
    """One raw column a caller sends, as the pipeline's schema declares it.

    Dates and datetimes are read as validation reads them: strings in the column's
    ``strptime`` format, or ISO 8601 without one (``2013-08-14`` for a date,
    ``2013-08-14T06:03:42`` for a datetime); a value with a UTC offset is converted to UTC, one
    without is taken as written, and a date may not carry a time of day. ``earliest`` and
    ``latest`` are inclusive.

    A free-text (``string``) value is cleaned as validation cleans the file's values before
    it is checked and mapped: surrounding whitespace trimmed, ``aliases`` applied, a
    ``missing`` token taken as null. Otherwise ``"new car "`` would be mapped to a value map's
    default at serving where training saw ``"new car"``. (Other types are refused unless
    written exactly as validation leaves them, so nothing is encoded differently.)
    """

    column: Column
    missing: tuple[str, ...] = ()  # the schema's missing-value tokens

    # Cached, not computed: the request path reads them dozens of times per request.
    @functools.cached_property
    def name(self) -> str:
        """The field's name (the column's)."""
        return self.column.name

    @functools.cached_property
    def dtype(self) -> str:
        """The column's type."""
        return self.column.dtype

    def check(self, value: Any) -> str | None:
        """Why ``value`` is not acceptable for this field, or None."""
        if self.dtype == "string" and isinstance(value, str):
            value = self._cleaned(value)
        if value is None:
            return None if self.column.nullable else "a value (this field may not be null)"
        if self.dtype in ("int", "float"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                return f"a number ({self.dtype})"
            # An integer beyond the float range is finite but cannot become a feature (and
            # math.isfinite would raise on it).
            if isinstance(value, int) and value.bit_length() > 1000:
                return "a finite number"
            if not math.isfinite(value):
                return "a finite number"
            if self.dtype == "int" and float(value) != int(value):
                return "a whole number"
            if self.column.minimum is not None and value < self.column.minimum:
                return f"a number >= {self.column.minimum:g}"
            if self.column.maximum is not None and value > self.column.maximum:
                return f"a number <= {self.column.maximum:g}"
            return None
        if self.dtype == "bool":
            return None if isinstance(value, bool) else "true or false"
        if not isinstance(value, str):
            return self._written if self.dtype in ("date", "datetime") else "a string"
        if self.dtype in ("date", "datetime"):
            return self._date_problem(value)
        allowed = self.column.allowed
        if allowed is not None and value not in allowed:
            shown = ", ".join(allowed[:12]) + (", ..." if len(allowed) > 12 else "")
            return f"one of: {shown}"
        if self.dtype == "string":
            return self._string_problem(value)
        return None

    def all_valid(self, values: Sequence[Any]) -> bool:
        """Whether `check` passes every one of ``values``, tested a whole column at a time.

        Conservative: False means "look value by value" (`check` says which and why), never
        that a value is wrong. Many categories are tested as one set; other values by
        `_accepts` (numbers that way cost half of a numpy array's tests on 100 rows).
        """
        column, dtype = self.column, self.column.dtype
        if dtype == "category" and len(values) >= _COLUMN_TEST_ROWS:
            if column.nullable:
                values = [v for v in values if v is not None]  # null is a valid value here
            if not all(type(v) is str for v in values):
                return False
            return self._allowed is None or set(values) <= self._allowed
        return all(map(self._accepts, values))

    @functools.cached_property
    def _accepts(self) -> "Callable[[Any], bool]":
        """A test of one value that passes only what `check` passes, in a few comparisons.

        A few requests' worth of values: `check`'s general path (its type dispatch, text
        cleaning and messages) was a fifth of a single-row request. Conservative like
        `all_valid`: an integer beyond 2**53 fails here and `check` then looks at it exactly.
        """
        column, dtype = self.column, self.column.dtype
        nullable = column.nullable
        if dtype in ("int", "float"):
            # NaN fails every comparison and the infinities lie beyond the exact range, so
            # the bounds test finiteness too; Python compares an int with a float exactly.
            low = -_EXACT_FLOAT if column.minimum is None else max(column.minimum, -_EXACT_FLOAT)
            high = _EXACT_FLOAT if column.maximum is None else min(column.maximum, _EXACT_FLOAT)
            whole = dtype == "int"

            def number(value: Any) -> bool:
                kind = type(value)
                if kind is int:
                    return low <= value <= high
                if kind is float:
                    return low <= value <= high and not (whole and not value.is_integer())
                return value is None and nullable

            return number
        if dtype == "category":
            allowed = self._allowed

            def category(value: Any) -> bool:
                if type(value) is str:
                    return allowed is None or value in allowed
                return value is None and nullable

            return category
        if dtype == "bool":
            return lambda value: type(value) is bool or (value is None and nullable)
        return lambda value: self.check(value) is None

    @functools.cached_property
    def _allowed(self) -> frozenset[str] | None:
        allowed = self.column.allowed
        return None if allowed is None else frozenset(allowed)

    def raw(self, values: Sequence[Any]) -> list[Any]:
        """Checked values as the caller sent them, text cleaned as validation cleans it."""
        if self.dtype == "string":
            return [None if v is None else self._cleaned(v) for v in values]
        return list(values)

    def values(self, values: Sequence[Any]) -> Any:
        """Checked values of this field, one per row, in the numpy form features read."""
        if self.dtype in ("date", "datetime"):
            values = [None if v is None else self._moment(v) for v in values]
        elif self.dtype == "string":
            values = [None if v is None else self._cleaned(v) for v in values]
        return request_values(values, self.dtype)

    def _cleaned(self, value: str) -> str | None:
        """A text value as validation cleans it: trimmed, aliases applied, missing as None."""
        value = value.strip()
        if value in self.missing:
            return None
        for raw, canonical in self.column.aliases:  # in order, as validation applies them
            if value == raw:
                value = canonical
        return value

    @functools.cached_property
    def _written(self) -> str:
        if self.column.format is not None:
            return f"a {self.dtype} string in the format {self.column.format}"
        example = "2013-08-14" if self.dtype == "date" else "2013-08-14T06:03:42"
        return f"an ISO 8601 {self.dtype} string such as {example}"

    @functools.cached_property
    def _bounds(self) -> tuple["dt.datetime | None", "dt.datetime | None"]:
        # ISO 8601: the spec refused any other bound when it was built.
        return (_bound(self.column.earliest) if self.column.earliest is not None else None,
                _bound(self.column.latest) if self.column.latest is not None else None)  # fmt: skip

    @functools.cached_property
    def _regex(self) -> "re.Pattern[str] | None":
        return re.compile(self.column.pattern) if self.column.pattern is not None else None

    def _moment(self, value: str) -> "dt.datetime | None":
        """The date or datetime ``value`` writes (a date as its midnight), or None."""
        try:
            if self.column.format is not None:
                moment = dt.datetime.strptime(value, self.column.format)
            elif self.dtype == "date":
                moment = dt.datetime.strptime(value, _ISO_DATE)
            else:
                moment = dt.datetime.fromisoformat(value)
            moment = _naive(moment)
        except (ValueError, OverflowError):  # overflow: an offset moving year 1 or 9999 out
            return None
        if self.dtype == "date" and moment.time() != dt.time():
            return None  # a time of day is not a date
        return moment

    def _date_problem(self, value: str) -> str | None:
        moment = self._moment(value)
        if moment is None:
            return self._written
        earliest, latest = self._bounds
        if earliest is not None and moment < earliest:
            return f"a {self.dtype} on or after {self.column.earliest}"
        if latest is not None and moment > latest:
            return f"a {self.dtype} on or before {self.column.latest}"
        return None

    def _string_problem(self, value: str) -> str | None:
        if self.column.min_length is not None and len(value) < self.column.min_length:
            return f"a string of at least {self.column.min_length} characters"
        if self.column.max_length is not None and len(value) > self.column.max_length:
            return f"a string of at most {self.column.max_length} characters"
        if self._regex is not None and self._regex.fullmatch(value) is None:
            return f"a string matching {self.column.pattern}"
        return None


def _bound(value: str) -> "dt.datetime":
    """An ``earliest``/``latest`` bound (ISO 8601) as validation compares with it."""
    return _naive(dt.datetime.fromisoformat(value))


def _naive(moment: "dt.datetime") -> "dt.datetime":
    """``moment`` without a time zone: in UTC when it has an offset, else as written."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(dt.UTC).replace(tzinfo=None)


class RequestError(ValueError):
    """A request the server will not score, with the HTTP status and what to fix."""

    def __init__(self, status: int, error: str, **details: Any) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.details = details

    def body(self) -> dict[str, Any]:
        """The JSON error document; it never holds a non-finite number (JSON has none)."""
        return _json_safe({"error": self.error, **self.details})


def _json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by a string, at any depth."""
    if isinstance(value, float) and not math.isfinite(value):
        return "non-finite number"
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _shown(value: Any) -> Any:
    """A request value as an error document quotes it: short, and always valid JSON."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else "non-finite number"
    if isinstance(value, int):
        # Beyond 2**64 the digits are the caller's, not information: say how large it is.
        return value if value.bit_length() <= 64 else f"an integer of {value.bit_length()} bits"
    return str(value)[:_SHOWN_CHARS]


def input_fields(pipeline: PipelineSpec, inputs: Sequence[str]) -> list[InputField]:
    """The raw columns the model's input features derive from, in schema order."""
    catalog = {f.name: f for f in feature_catalog(pipeline)}
    unknown = [name for name in inputs if name not in catalog]
    if unknown:
        raise ValueError(
            f"the model's inputs {unknown} are not features of pipeline {pipeline.name!r}: "
            "serve it with the pipeline spec it was trained under"
        )
    # Every column a feature reads: both dates of a date difference, the source of a map.
    sources = {source for name in inputs for source in catalog[name].sources}
    missing = pipeline.schema.missing_values
    return [InputField(c, missing) for c in pipeline.schema.columns if c.name in sources]


# Roles whose columns a slot never accepts beside the model's inputs (nor records).
_NEVER_RECORDED = ("identifier", "personal", "ignore")


def recorded_fields(pipeline: PipelineSpec, fields: Sequence[InputField]) -> list[InputField]:
    """The sensitive columns a request may carry beside the model's inputs, for live fairness.

    A protected attribute is often not a model input (no disparate treatment), yet the live
    fairness check needs it per row: a caller may send it, validated like any field, and the
    slot records it with the row; the model never sees it. Columns of the roles identifier,
    personal and ignore are never among them.
    """
    given = {f.name for f in fields}
    missing = pipeline.schema.missing_values
    return [
        InputField(c, missing)
        for c in pipeline.schema.columns
        if c.name in pipeline.sensitive_features
        and c.name not in given
        and c.role not in _NEVER_RECORDED
    ]


def rows_to_frame(
    rows: Any, fields: Sequence[InputField], pipeline: PipelineSpec, inputs: Sequence[str],
    limits: ServingLimits, optional: Sequence[InputField] = (), *, as_arrays: bool = False,
    features: Sequence[Feature] | None = None,
) -> Any:  # fmt: skip
    """Validate a request's rows and derive the model's input features from them.

    Returns a ``pandas.DataFrame`` of the features, or with ``as_arrays`` one numpy array per
    feature (what the ONNX path feeds the graph, with no frame built). ``features`` are the
    catalog's features of ``inputs``, in order, when the caller already looked them up.

    ``optional`` fields (`recorded_fields`) may be present or not; when present they are
    checked like the others, and they never reach the model.

    Raises:
        RequestError: Naming the first rows and fields that are wrong, what was expected
            and what was found.
    """
    if not isinstance(rows, list) or not rows:
        raise RequestError(400, "expected a JSON object {\"rows\": [ {...}, ... ]} with at "
                             "least one row", found=type(rows).__name__)  # fmt: skip
    if len(rows) > limits.max_rows:
        raise RequestError(413, f"at most {limits.max_rows} rows per request",
                             found=len(rows))  # fmt: skip
    names = {f.name for f in (*fields, *optional)}
    required = {f.name for f in fields}
    columns = _valid_columns(rows, fields, optional, names, required)
    if columns is None:
        _refuse_rows(rows, fields, optional, names, required)
        columns = _columns(rows, fields)
    if features is None:
        features = _input_features(pipeline, inputs)
    values = _feature_values(features, columns, fields, pipeline)
    if as_arrays:
        return values
    import pandas as pd

    return pd.DataFrame(values)


def _input_features(pipeline: PipelineSpec, inputs: Sequence[str]) -> list[Feature]:
    """The catalog's features of the model's ``inputs``, in order."""
    catalog = {f.name: f for f in feature_catalog(pipeline)}
    return [catalog[name] for name in inputs]


def _valid_columns(
    rows: list[Any], fields: Sequence[InputField], optional: Sequence[InputField],
    names: set[str], required: set[str],
) -> dict[str, Sequence[Any]] | None:  # fmt: skip
    """Each field's values (`_columns`) when every row is known fields, all of them valid.

    The common case, tested a column at a time on the columns the features then read; None
    sends the request to `_refuse_rows`, which looks row by row (and finds nothing wrong only
    if this test was merely cautious: a value only `check` decides).
    """
    for row in rows:
        if type(row) is not dict:
            return None
        keys = row.keys()
        if not (keys >= required and keys <= names):
            return None
    columns = _columns(rows, fields)
    for field in fields:
        if not field.all_valid(columns[field.name]):
            return None
    for field in optional:
        name = field.name
        if not field.all_valid([row[name] for row in rows if name in row]):
            return None
    return columns


def _columns(rows: list[dict[str, Any]], fields: Sequence[InputField]) -> dict[str, Sequence[Any]]:
    """Each field's values, one per row (every row holds every field), taken once."""
    names = [field.name for field in fields]
    if not names:  # itemgetter() takes at least one name
        return {}
    if len(names) == 1:
        (name,) = names
        return {name: [row[name] for row in rows]}
    # One C-level pass over the rows: a list per field cost twice as much on 100 rows.
    return dict(zip(names, zip(*map(operator.itemgetter(*names), rows), strict=True),
                    strict=True))  # fmt: skip


def _refuse_rows(
    rows: list[Any], fields: Sequence[InputField], optional: Sequence[InputField],
    names: set[str], required: set[str],
) -> None:  # fmt: skip
    """Raise the 422 naming the first wrong rows and fields (returns when none is wrong)."""
    problems: list[dict[str, Any]] = []
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            problems.append({"row": index, "expected": "an object", "found": type(row).__name__})
            continue
        for key in sorted(set(row) - names):
            problems.append({"row": index, "field": str(key)[:_SHOWN_CHARS],
                             "expected": "no such field"})  # fmt: skip
        for field in (*fields, *optional):
            if field.name not in row:
                if field.name in required:
                    problems.append({"row": index, "field": field.name, "expected": "present"})
                continue
            why = field.check(row[field.name])
            if why is not None:
                problems.append({"row": index, "field": field.name, "expected": why,
                                 "found": _shown(row[field.name])})  # fmt: skip
        if len(problems) >= 20:
            break
    if problems:
        raise RequestError(422, "rows do not match the model's input schema",
                             problems=problems[:20],
                             fields={f.name: f.dtype for f in fields},
                             optional={f.name: f.dtype for f in optional})  # fmt: skip


def _feature_values(
    features: Sequence[Feature], columns: Mapping[str, Sequence[Any]], fields: Sequence[InputField],
    pipeline: PipelineSpec,
) -> dict[str, Any]:  # fmt: skip
    """The input features of a request's validated rows: the training code, on numpy arrays.

    The training path (`build_features`) and this one both call `feature_values` on the same
    numpy forms of their columns, so every encoding (category codes, bands, log amounts, value
    maps, date differences) is one implementation. No pandas per column: pandas categoricals
    per column were a third of a single-row request.
    """
    sources = {field.name: field.values(columns[field.name]) for field in fields}
    return {f.name: feature_values(f, sources, pipeline) for f in features}


def feedback_label(pipeline: PipelineSpec) -> InputField | None:
    """The schema's label column, as feedback labels are checked against it (None: no label)."""
    schema = pipeline.schema
    column = next((c for c in schema.columns if c.name == schema.label), None)
    return None if column is None else InputField(column, schema.missing_values)


def feedback_rows(
    items: Sequence[Any], label: InputField
) -> tuple[list[tuple[str, Any]], list[dict[str, Any]]]:
    """Check feedback items ``{"id": ..., "label": ...}``: the rows, and what is wrong.

    An id is a prediction id (32 lower-case hex characters), once per request; a label is a
    value ``label`` accepts (an allowed category, a number in range...), never null.

    Returns:
        ``(id, label)`` rows, and up to 20 problems, each naming the item, the field, what was
        found and what was expected (empty when every item is good).
    """
    rows: list[tuple[str, Any]] = []
    problems: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        if not isinstance(item, dict) or set(item) != {"id", "label"}:
            found = (sorted(str(_shown(k)) for k in item)[:5] if isinstance(item, dict)
                     else type(item).__name__)  # fmt: skip
            problems.append({"item": index, "expected": 'an object {"id": ..., "label": ...}',
                             "found": found})  # fmt: skip
        else:
            prediction_id, value = item["id"], item["label"]
            if not isinstance(prediction_id, str) or not ID_PATTERN.fullmatch(prediction_id):
                problems.append({"item": index, "field": "id", "found": _shown(prediction_id),
                                 "expected": EXPECTED_ID})  # fmt: skip
            elif prediction_id in seen:
                problems.append({"item": index, "field": "id", "found": prediction_id,
                                 "expected": "each id once per request"})  # fmt: skip
            why = "a label" if value is None else label.check(value)
            if why is not None:
                problems.append({"item": index, "field": "label", "found": _shown(value),
                                 "expected": why})  # fmt: skip
            seen.add(str(prediction_id))
            rows.append((str(prediction_id), value))
        if len(problems) >= 20:
            break
    return rows, problems[:20]


class _ScoreHistogram:
    """The predicted scores as a Prometheus histogram, observed a request's scores at once.

    prometheus-client's ``Histogram`` takes one value per call (a lock and a bucket search
    each: a tenth of a 100-row request's time on the ONNX path). This keeps each label set's
    bucket counts in numpy and adds a request's scores with one search; the registry reads it
    through the public collector interface as the same histogram family (``_bucket`` with
    ``le``, ``_count``, ``_sum``).

    Args:
        name: The metric name.
        documentation: Its help text.
        labelnames: Its label names, in order.
        buckets: The upper bounds (``+Inf`` is added).
        registry: Where it is collected.
    """

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str],
        buckets: Sequence[float], registry: Any,
    ) -> None:  # fmt: skip
        import numpy as np
        from prometheus_client.utils import floatToGoString

        self.name, self.documentation, self.labelnames = name, documentation, list(labelnames)
        self._bounds = np.array([*buckets, math.inf], dtype=float)
        self._upper = self._bounds.tolist()
        self._le = [floatToGoString(b) for b in self._bounds]
        self._series: dict[tuple[str, ...], tuple[Any, list[float]]] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def observe(self, labels: Mapping[str, str], values: "np.ndarray") -> None:
        """Add ``values`` to the series of ``labels`` (a value lands in the first bucket >= it)."""
        import numpy as np

        key = tuple(str(labels[n]) for n in self.labelnames)
        if len(values) == 1:  # a single-row request: one bisection, no arrays
            (value,) = values.tolist()
            with self._lock:
                series = self._opened(key)
                if value == value:  # NaN is in no bucket (as in prometheus-client), only the sum
                    series[0][bisect.bisect_left(self._upper, value)] += 1
                series[1][0] += value
            return
        counts = np.bincount(
            np.searchsorted(self._bounds, values, side="left"), minlength=len(self._bounds)
        )[: len(self._bounds)]
        total = float(np.sum(values))
        with self._lock:
            series = self._opened(key)
            series[0][:] += counts
            series[1][0] += total

    def _opened(self, key: tuple[str, ...]) -> tuple[Any, list[float]]:
        """The bucket counts and sum of ``key``'s series, created empty (under the lock)."""
        import numpy as np

        series = self._series.get(key)
        if series is None:
            series = self._series[key] = (np.zeros(len(self._bounds), dtype=np.int64), [0.0])
        return series

    def describe(self) -> list[Any]:
        """The family without samples (the registry checks names with it)."""
        from prometheus_client.core import HistogramMetricFamily

        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> list[Any]:
        """The family with every series' cumulative buckets, count and sum."""
        from prometheus_client.core import HistogramMetricFamily

        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            series = [(k, c.cumsum().tolist(), t[0]) for k, (c, t) in self._series.items()]
        for key, cumulative, total in series:
            family.add_metric(list(key), list(zip(self._le, cumulative, strict=True)), total)
        return [family]


class ModelService:
    """One slot: verifies and loads its model in the background, then scores requests.

    Args:
        pipeline: The spec whose schema and policy apply.
        model_ref: ``models:/name/version`` (pin a version), ``oci://host/repo@sha256:...``,
            ``models:/name@alias`` or a bundle directory.
        slot: ``blue`` or ``green``.
        limits: Request limits.
    """

    def __init__(
        self,
        pipeline: PipelineSpec,
        model_ref: str,
        slot: str,
        limits: ServingLimits | None = None,
    ) -> None:
        if slot not in SLOTS:
            raise ValueError(f"slot must be one of {SLOTS}, found {slot!r}")
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            GCCollector,
            Histogram,
            Info,
            PlatformCollector,
            ProcessCollector,
        )

        self.pipeline = pipeline
        self.model_ref = model_ref
        self.slot = slot
        self.limits = limits or ServingLimits()
        self.state = "loading"
        self.reason = "verifying the model"
        self.model: Any = None
        # The verified ONNX copy, when the bundle has one: scored without pandas.
        self.predictor: Any = None
        self.runtime = ""
        self.model_sha256: str | None = None
        self.version: str | None = None
        self.inputs: list[str] = []
        self.fields: list[InputField] = []
        self.recorder: LiveRecorder | None = None
        self._sensitive: list[InputField] = []
        self._optional: list[InputField] = []
        self._features: list[Feature] = []  # the catalog's features of `inputs`, looked up once
        self._closed = False
        self._lock = threading.Lock()
        # A registry per service: two slots in one process (tests) keep separate metrics. The
        # process collectors read the same process for both; Prometheus tells the targets apart.
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        model = ["pipeline", "slot", "model_version"]
        slot_only = ["pipeline", "slot"]
        self.requests = Counter("secure_pipeline_requests", "Requests by route and status code.",
                                [*model, "route", "code"], registry=self.registry)  # fmt: skip
        self.latency = Histogram("secure_pipeline_request_duration_seconds", "Request latency.",
                                 [*model, "route"], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)  # fmt: skip
        self.scores = _ScoreHistogram("secure_pipeline_prediction_score", "Predicted scores.",
                                      model, SCORE_BUCKETS, self.registry)  # fmt: skip
        self.labels = Counter("secure_pipeline_predictions", "Predictions by label.",
                              [*model, "label"], registry=self.registry)  # fmt: skip
        self.ready = Gauge("secure_pipeline_ready", "1 once the model verified and loaded.",
                           slot_only, registry=self.registry)  # fmt: skip
        self.info = Info("secure_pipeline_model", "The model this slot serves.",
                         registry=self.registry)  # fmt: skip
        self.live_recorded = Counter("secure_pipeline_live_recorded_rows",
                                     "Scored rows kept in a live traffic batch.", slot_only,
                                     registry=self.registry)  # fmt: skip
        self.live_dropped = Counter("secure_pipeline_live_dropped_rows",
                                    "Sampled rows not kept: the batch was full, or a batch "
                                    "waiting for the store was lost.", slot_only,
                                    registry=self.registry)  # fmt: skip
        self.live_written = Counter("secure_pipeline_live_batches_written",
                                    "Signed live batches written, by kind.", [*slot_only, "kind"],
                                    registry=self.registry)  # fmt: skip
        self.live_failures = Counter("secure_pipeline_live_batch_failures",
                                     "Live batch writes that failed (kept for a retry).",
                                     slot_only, registry=self.registry)  # fmt: skip
        self.feedback_rows = Counter("secure_pipeline_feedback", "Feedback labels accepted.",
                                     slot_only, registry=self.registry)  # fmt: skip
        self.ready.labels(**self.slot_labels()).set(0)
        # Shown at 0 from the start, so a dashboard and an alert see the series before traffic.
        for counter in (self.live_recorded, self.live_dropped, self.live_failures,
                        self.feedback_rows):  # fmt: skip
            counter.labels(**self.slot_labels())
        for kind in ("traffic", "feedback"):
            self.live_written.labels(**self.slot_labels(), kind=kind)
        # Metric children by labels: a labels() call per request and label cost ~10 µs each.
        self._children: dict[tuple[Any, ...], Any] = {}
        self._label_names = self._labels()
        self._publish_info(self.model_ref, "")

    def slot_labels(self) -> dict[str, str]:
        """The labels of every slot metric: ``pipeline`` and ``slot``."""
        return {"pipeline": self.pipeline.name, "slot": self.slot}

    def model_labels(self) -> dict[str, str]:
        """The labels of the metrics about the model: the slot's and ``model_version``."""
        return {**self.slot_labels(), "model_version": str(self.version or "")}

    def observe_request(self, route: str, code: str, seconds: float) -> None:
        """Count and time one answer of ``route``."""
        self._counted(self.requests, route=route, code=code).inc()
        self._counted(self.latency, route=route).observe(seconds)

    def _counted(self, metric: Any, **labels: str) -> Any:
        """``metric``'s child for the model's labels and ``labels``, looked up once each."""
        key = (id(metric), self.version, *labels.items())
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(**self.model_labels(), **labels)
        return child

    def _publish_info(self, served: str, digest: str) -> None:
        self.info.info({**self.model_labels(), "model_ref": served, "model_sha256": digest,
                        "state": self.state})  # fmt: skip

    def load(self) -> None:
        """Download, verify and load the model; on any failure the slot never becomes ready."""
        try:
            self._load()
        except Exception as exc:  # noqa: BLE001 - any failure leaves the slot unready, reported
            with self._lock:
                self.state = "refused"
                self.reason = f"{type(exc).__name__}: {exc}"[:2000]
            self._publish_info(self.model_ref, "")
            logger.error("slot %s will not serve %s: %s", self.slot, self.model_ref, self.reason)

    def _load(self) -> None:
        from secure_pipeline import environment as env
        from secure_pipeline.registry.evidence import verify_reference
        from secure_pipeline.serving.loader import load_evidence
        from secure_pipeline.storage.resources import store_resource
        from secure_pipeline.trust.identities import SERVE, signer_variable
        from secure_pipeline.trust.policy import trust_policy
        from secure_pipeline.trust.signers import signer_for

        record = self.pipeline.monitoring.record
        current = env.current_environment()
        # Checked first, and named on its own: a recording slot without its key would serve
        # traffic nobody can later judge, and a development key is no evidence in production.
        if (
            record
            and current is env.Environment.PRODUCTION
            and not env.is_set(signer_variable(SERVE))
        ):
            raise ConfigurationError(
                f"pipeline {self.pipeline.name!r} records live traffic (monitoring.record), so "
                f"slot {self.slot} signs its batches as the {SERVE!r} identity, and "
                f"{signer_variable(SERVE)} is not set: set it to that identity's private key URI "
                "(file2:/path/key.pem, awskms:<key>, ...), whose public key the trust policy "
                "names, or turn monitoring.record off"
            )
        environment = env.validate(required=SERVING_REQUIRED)
        signer = signer_for(SERVE, environment) if record else None
        store = store_resource(environment, resolve=True).get_store()
        # A slot serves only a version the gate admitted: its signed decision for exactly this
        # bundle, the approvals it cites and the audit checkpoint, on top of the bundle itself.
        # Nothing here reads the audit trail itself, so start-up does not grow with it.
        with verify_reference(
            self.model_ref, pipeline=self.pipeline, trust=trust_policy(environment),
            store=store, require="promoted",
        ) as evidence:  # fmt: skip
            verified = load_evidence(evidence, trusted=self.pipeline.model.trusted_types)
            version = evidence.resolved.version or (
                evidence.decision.version if evidence.decision else None
            )
            # An OCI tag is mutable: the digest that verified is what this slot serves.
            served = str(evidence.resolved.oci.pinned) if evidence.resolved.oci else self.model_ref
        predictor = None
        if verified.onnx is not None:
            from secure_pipeline.serving.onnx_runtime import OnnxPredictor
            from secure_pipeline.training.onnx import input_dtypes

            # Its digest was verified with the bundle; its inputs must be the model's.
            dtypes = input_dtypes(self.pipeline)
            predictor = OnnxPredictor(verified.onnx, {n: dtypes[n] for n in verified.inputs})
        fields = input_fields(self.pipeline, verified.inputs)
        sensitive = [f for f in fields if f.name in self.pipeline.sensitive_features]
        optional = recorded_fields(self.pipeline, fields)
        recorder = None
        if signer is not None:
            recorder = LiveRecorder(
                store, signer, self.pipeline, slot=self.slot,
                model_sha256=verified.model_sha256, model_version=str(version or ""),
                inputs=verified.inputs, sensitive=[f.name for f in (*sensitive, *optional)],
                metrics=self.live_metrics(),
            )  # fmt: skip
        with self._lock:
            if self._closed:
                return  # shut down while verifying: nothing to serve, nothing to record
            self.model = verified.model
            self.predictor = predictor
            self.runtime = "onnx" if predictor is not None else "skops"
            self.model_sha256 = verified.model_sha256
            self.version = version
            self.inputs = verified.inputs
            self.fields = fields
            self._features = _input_features(self.pipeline, verified.inputs)
            self._sensitive = [*sensitive, *optional]
            self._optional = optional
            self.recorder = recorder
            self.state = "ready"
            self.reason = f"verified, signed by {verified.signer}"
        if recorder is not None:
            recorder.start()
        self.ready.labels(**self.slot_labels()).set(1)
        self._publish_info(served, verified.model_sha256)
        logger.info("slot %s serves %s (%s) through %s", self.slot, self.model_ref,
                    self.model_sha256, self.runtime)  # fmt: skip

    def live_metrics(self) -> LiveMetrics:
        """The slot's live recording counters, as a `LiveRecorder` moves them."""
        labels = self.slot_labels()
        return LiveMetrics(
            recorded=self.live_recorded.labels(**labels),
            dropped=self.live_dropped.labels(**labels),
            written={
                kind: self.live_written.labels(**labels, kind=kind)
                for kind in ("traffic", "feedback")
            },  # fmt: skip
            failures=self.live_failures.labels(**labels),
            feedback=self.feedback_rows.labels(**labels),
        )

    def predict(self, document: Any) -> dict[str, Any]:
        """Score a request document; refuses what does not match the input schema."""
        if self.state != "ready":
            raise RequestError(503, f"slot {self.slot} is not ready: {self.reason}")
        if not isinstance(document, dict) or set(document) != {"rows"}:
            raise RequestError(400, "expected a JSON object with exactly one key, \"rows\"",
                                 found=[_shown(k) for k in sorted(document)[:10]]
                                 if isinstance(document, dict)
                                 else type(document).__name__)  # fmt: skip
        rows = document["rows"]
        if self.predictor is not None:
            columns = rows_to_frame(rows, self.fields, self.pipeline, self.inputs, self.limits,
                                    self._optional, as_arrays=True,
                                    features=self._features)  # fmt: skip
            scores = self.predictor.scores(columns)
            frame: Any = columns
        else:
            frame = rows_to_frame(rows, self.fields, self.pipeline, self.inputs, self.limits,
                                  self._optional, features=self._features)  # fmt: skip
            scores = self.model.predict_proba(frame)[:, 1]
        positive, negative = self._label_names
        ids = new_ids(len(scores))
        values = scores.tolist()
        labels = [positive if score >= 0.5 else negative for score in values]
        self.scores.observe(self.model_labels(), scores)
        predictions = [
            {"score": round(score, 6), "label": label, "id": prediction_id}
            for score, label, prediction_id in zip(values, labels, ids, strict=True)
        ]
        positives = labels.count(positive)
        for label, count in ((positive, positives), (negative, len(labels) - positives)):
            if count:
                self._counted(self.labels, label=label).inc(count)
        if self.recorder is not None:
            sensitive = {f.name: f.raw([row.get(f.name) for row in rows])
                         for f in self._sensitive}  # fmt: skip
            self.recorder.record(frame, sensitive, scores, labels, ids)
        return {"model_sha256": self.model_sha256, "slot": self.slot,
                "predictions": predictions}  # fmt: skip

    def feedback(self, document: Any) -> dict[str, Any]:
        """Record the true labels of earlier predictions (``POST /feedback``).

        Raises:
            RequestError: 503 before the model is ready (or while the feedback batch is
                full), 409 when this slot does not record, 400/413/422 for a document that is
                not valid feedback, saying what was expected.
        """
        if self.state != "ready":
            raise RequestError(503, f"slot {self.slot} is not ready: {self.reason}")
        recorder = self.recorder
        label_field = feedback_label(self.pipeline)
        if recorder is None or label_field is None:
            raise RequestError(
                409, f"slot {self.slot} does not record live traffic (monitoring.record is off "
                f"for pipeline {self.pipeline.name!r}, or it has no label): feedback has "
                "nowhere to go",
            )  # fmt: skip
        if not isinstance(document, dict) or set(document) != {"feedback"}:
            raise RequestError(400, 'expected a JSON object with exactly one key, "feedback"',
                                 expected=EXPECTED_FEEDBACK)  # fmt: skip
        items = document["feedback"]
        if not isinstance(items, list) or not items:
            raise RequestError(400, "expected a non-empty list of feedback items",
                                 expected=EXPECTED_FEEDBACK)  # fmt: skip
        if len(items) > self.limits.max_rows:
            raise RequestError(413, f"at most {self.limits.max_rows} feedback items per request",
                                 found=len(items))  # fmt: skip
        rows, problems = feedback_rows(items, label_field)
        if problems:
            raise RequestError(422, "feedback does not match: ids of predictions and values of "
                                 f"the label column {label_field.name!r}",
                                 problems=problems[:20])  # fmt: skip
        if not recorder.feedback(rows):
            raise RequestError(503, "the open feedback batch is full and being written; retry "
                                 "shortly")  # fmt: skip
        return {"accepted": len(rows), "slot": self.slot}

    def count(self, code: int) -> None:
        """Count one ``/predict`` answer in the open live batch (when recording)."""
        recorder = self.recorder
        if recorder is not None:
            recorder.count(code)

    def close(self) -> None:
        """Shut down: write what the recorder holds, stop its thread."""
        with self._lock:
            self._closed = True
            recorder = self.recorder
        if recorder is not None:
            recorder.close()

    def _labels(self) -> tuple[str, str]:
        schema = self.pipeline.schema
        positive = str(schema.positive_label)
        column = next((c for c in schema.columns if c.name == schema.label), None)
        others = [v for v in (column.allowed or ()) if v != positive] if column else []
        return positive, others[0] if len(others) == 1 else f"not {positive}"


def create_app(service: ModelService, *, load: bool = True) -> "Starlette":
    """The ASGI app of one slot; starts verifying the model in the background at start-up.

    Every ``/predict`` and ``/feedback`` request is counted and timed, whatever happens to it:
    a refusal, a failure while scoring or while rendering the answer (500), even one that
    escapes. Each ``/predict`` answer's code is also counted in the open live batch. On
    shutdown the live recorder writes what it holds.
    """
    from contextlib import asynccontextmanager

    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        # What the client gets if anything escapes below: Starlette answers it with a 500.
        code = "500"
        try:
            response = await _json_response(service, request, service.predict, "score")
            code = str(response.status_code)
            return response
        finally:
            service.observe_request("/predict", code, time.perf_counter() - started)
            service.count(int(code))

    async def feedback(request: Request) -> Response:
        started = time.perf_counter()
        code = "500"
        try:
            response = await _json_response(service, request, service.feedback, "record",
                                            status=202)  # fmt: skip
            code = str(response.status_code)
            return response
        finally:
            service.observe_request("/feedback", code, time.perf_counter() - started)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive", "slot": service.slot})

    async def readyz(request: Request) -> Response:
        body = {"slot": service.slot, "state": service.state, "reason": service.reason,
                "model_ref": service.model_ref, "model_sha256": service.model_sha256,
                "recording": service.recorder is not None,
                "runtime": service.runtime}  # fmt: skip
        return JSONResponse(body, status_code=200 if service.state == "ready" else 503)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(service.registry), media_type=CONTENT_TYPE_LATEST)

    @asynccontextmanager
    async def lifespan(app: Starlette):  # noqa: ANN202 - Starlette's lifespan protocol
        if load:
            threading.Thread(target=service.load, name=f"verify-{service.slot}",
                             daemon=True).start()  # fmt: skip
        try:
            yield
        finally:
            # Off the event loop: writing the last batches signs and stores them.
            await run_in_threadpool(service.close)

    return Starlette(
        routes=[
            Route("/predict", predict, methods=["POST"]),
            Route("/feedback", feedback, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


async def _json_response(
    service: ModelService, request: "Request", handle: Any, doing: str, *, status: int = 200
) -> "Response":
    """The answer to one JSON request: ``handle``'s result, a refusal, or a bare 500."""
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse

    try:
        document = await _read_json(request, service.limits.max_body_bytes)
        result = await run_in_threadpool(handle, document)
        return JSONResponse(result, status_code=status)
    except RequestError as refused:
        error = refused
    except Exception:  # noqa: BLE001 - a bug must answer 500 and be counted, not crash
        logger.exception("slot %s failed to %s a request", service.slot, doing)
        return _internal_error(doing)
    headers = {"Retry-After": "5"} if error.status == 503 else None
    try:
        return JSONResponse(error.body(), status_code=error.status, headers=headers)
    except Exception:  # noqa: BLE001 - an unrenderable refusal is a bug: 500, still counted
        logger.exception("slot %s could not render a %s refusal", service.slot, error.status)
        return _internal_error(doing)


def _internal_error(doing: str = "score") -> "Response":
    from starlette.responses import JSONResponse

    # A fixed text: the exception's own message may quote the request.
    what = "scoring" if doing == "score" else "recording feedback"
    return JSONResponse({"error": f"internal error while {what}"}, status_code=500)


async def _read_json(request: Any, max_bytes: int) -> Any:
    """The request body as JSON, read up to ``max_bytes``; refuses anything else.

    Numbers must be finite: ``NaN`` and ``Infinity`` are not JSON, and a number that overflows
    a float (``1e999``) is refused here rather than becoming ``inf`` further in.

    Raises:
        RequestError: 415 for another content type, 413 for a body over the limit, 400 for a
            body that is not such JSON (saying what was expected and where, never quoting it).
    """
    from starlette.requests import ClientDisconnect

    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != JSON_TYPE:
        raise RequestError(415, f"expected Content-Type: {JSON_TYPE}",
                             found=content_type[:_SHOWN_CHARS] or "(none)")  # fmt: skip
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise RequestError(413, f"request body larger than {max_bytes} bytes",
                             found=int(declared))  # fmt: skip
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_bytes:
                raise RequestError(413, f"request body larger than {max_bytes} bytes")
    except ClientDisconnect:
        raise RequestError(400, "the client went away before the body was complete") from None
    try:
        return json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
    except _NonFiniteNumberError:
        raise RequestError(
            400,
            "the body is not valid JSON for scoring: NaN, Infinity and numbers beyond the "
            "float range (such as 1e999) are refused",
            expected=EXPECTED_BODY,
        ) from None
    except (ValueError, RecursionError) as exc:
        # The position only: the parser's message may quote the body.
        where = (
            {"line": exc.lineno, "column": exc.colno}
            if isinstance(exc, json.JSONDecodeError)
            else {}
        )
        raise RequestError(400, "the body is not valid JSON", expected=EXPECTED_BODY,
                           **where) from None  # fmt: skip


class _NonFiniteNumberError(ValueError):
    """A JSON number or constant with no finite float value."""


def _refuse_constant(name: str) -> None:
    raise _NonFiniteNumberError(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses to inf
        raise _NonFiniteNumberError(text[:_SHOWN_CHARS])
    return value


def slot_server(
    service: ModelService, *, tls: SlotTls, host: str = "127.0.0.1", port: int = 8001
) -> "uvicorn.Server":
    """The uvicorn server of one slot, serving mutual TLS only (not started).

    Raises:
        ConfigurationError: When the TLS files are not usable.
    """
    import uvicorn

    context = slot_ssl_context(tls)
    config = uvicorn.Config(
        create_app(service), host=host, port=port, log_level="warning", access_log=False,
        server_header=False,
        # Our own context, not uvicorn's: it sets TLS 1.3 as the minimum version.
        ssl_context_factory=lambda _config, _default: context,
        # A TLS connection ends with an exchange of close_notify alerts; an idle client that
        # never answers must not hold a stopping slot for asyncio's 30 s (a prediction takes ms).
        timeout_graceful_shutdown=5,
    )  # fmt: skip
    return uvicorn.Server(config)


def serve(
    model_ref: str,
    *,
    slot: str,
    tls: SlotTls,
    host: str = "127.0.0.1",
    port: int = 8001,
    pipeline: PipelineSpec,
    limits: ServingLimits | None = None,
) -> None:
    """Run one slot until interrupted (the ``secure-pipeline serve`` command).

    Raises:
        ConfigurationError: When the TLS files are not usable (before anything listens).
    """
    service = ModelService(pipeline, model_ref, slot, limits)
    slot_server(service, tls=tls, host=host, port=port).run()


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
