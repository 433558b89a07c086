"""Live traffic recording: what a slot scored, in signed batches, and the reader of a window.

A slot that records (``pipeline.monitoring.record``) keeps a Bernoulli sample (rate
``sample_rate``) of the rows it scores: the model's input features (the frame the model
scored, numeric codes as the features are), the raw values of the pipeline's sensitive columns
the request carried, the score, the label and a prediction ``id`` (random, 128 bits, returned to
the caller). Never a column with role ``identifier``, ``personal`` or ``ignore``: they are not
model inputs, and `LiveRecorder` and `write_batch` refuse one all the same. Callers send true
labels later (``POST /feedback``, or ``secure-pipeline live feedback``) by prediction id.

Memory is bounded: an open batch holds at most ``max_batch_rows`` rows; rows beyond that are
counted (``dropped``), not kept, and the full batch is closed at once. A batch also closes after
``batch_seconds`` and on shutdown. Closed batches are written off the request path, by a
background thread: Parquet bytes (no pickle) stored content-addressed and create-only with
`SnapshotStore.put_bytes` under
``snapshots/live/<pipeline>/<kind>/<YYYY-MM-DD>/<HH>/<sha256>.parquet`` (encrypted when the
pipeline holds personal data, as its feature snapshots are), and an in-toto statement about
them (`LIVE_BATCH_TYPE`) signed by the ``serve`` identity, stored under
``attestations/live-batches/<pipeline>/``. A write that fails is logged, counted and retried at
the next flush; at most `MAX_PENDING` closed batches wait, the oldest beyond is dropped and
counted.

`load_window` reads back the batches closed within a time window, each verified: an envelope
signed by the ``serve`` identity under the trust policy, of the live-batch type, for this
pipeline, whose Parquet bytes hash to its subject. Anything else (an envelope signed by another
identity, a batch whose bytes were replaced, a Parquet file dropped under ``live/`` with no
envelope) is listed in ``refused`` and never counted.
"""

import datetime as dt
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from secure_pipeline.canonical import canonical_json, sha256_hex
from secure_pipeline.errors import ConfigurationError, PolicyViolation, SecurePipelineError
from secure_pipeline.spec import PipelineSpec
from secure_pipeline.trust.identities import SERVE

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from secure_pipeline.storage.snapshots import SnapshotStore
    from secure_pipeline.trust.policy import TrustPolicy
    from secure_pipeline.trust.signers import IdentitySigner

logger = logging.getLogger(__name__)

LIVE_BATCH_TYPE = "https://secure-pipeline.dev/attestation/live-batch/v1"
# attestations/<kind>/<scope>/: the envelopes of every pipeline's live batches.
ENVELOPE_KIND = "live-batches"
# The first component of a batch's asset path: snapshots/live/<pipeline>/<kind>/<day>/<hour>/.
LIVE_PREFIX = "live"
TRAFFIC = "traffic"
FEEDBACK = "feedback"
KINDS = (TRAFFIC, FEEDBACK)
# Columns a recording may never hold, whatever asks it to.
FORBIDDEN_ROLES = frozenset({"identifier", "personal", "ignore"})
# What a slot adds to the model's input features.
SCORED_COLUMNS = ("score", "label", "id")
FEEDBACK_COLUMNS = ("id", "label")
# Columns `load_window` adds to every traffic row, from the batch's signed predicate.
WINDOW_COLUMNS = ("slot", "model_sha256", "model_version")
# Closed batches kept for a retry when the store cannot be written; the oldest beyond is lost.
MAX_PENDING = 3
ID_PATTERN = re.compile(r"[0-9a-f]{32}")
_BATCH_FILE = re.compile(r"([0-9a-f]{64})(?:\.g[0-9]+)?\.parquet")
_DAY = "%Y-%m-%d"


def utc_iso(moment: dt.datetime) -> str:
    """``moment`` as the predicates write it: ISO 8601 in UTC with microseconds and ``Z``."""
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_utc(text: str) -> dt.datetime:
    """An ISO 8601 timestamp with an offset (``Z`` included) as an aware UTC datetime.

    Raises:
        ValueError: When ``text`` is not one, or carries no offset.
    """
    moment = dt.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no UTC offset")
    return moment.astimezone(dt.UTC)


def new_ids(count: int) -> list[str]:
    """``count`` random prediction ids: 128 bits each, as 32 lower-case hex characters."""
    text = os.urandom(16 * count).hex()
    return [text[i : i + 32] for i in range(0, 32 * count, 32)]


def forbidden_columns(pipeline: PipelineSpec, names: Iterable[str]) -> list[str]:
    """The ``names`` that are columns of a role a recording may never hold."""
    roles = {c.name: c.role for c in pipeline.schema.columns}
    return [name for name in names if roles.get(name) in FORBIDDEN_ROLES]


def _refuse_forbidden(pipeline: PipelineSpec, names: Iterable[str], what: str) -> None:
    found = forbidden_columns(pipeline, names)
    if found:
        roles = {c.name: c.role for c in pipeline.schema.columns}
        shown = ", ".join(f"{name} ({roles[name]})" for name in found)
        raise PolicyViolation(
            f"refusing to record {what} of pipeline {pipeline.name!r}: it holds {shown}; live "
            "traffic holds model inputs, sensitive columns, scores and labels only, never a "
            "column with role identifier, personal or ignore"
        )


def batch_asset(pipeline: str, kind: str, closed_at: dt.datetime) -> tuple[str, ...]:
    """The asset path of a batch: ``live/<pipeline>/<kind>/<YYYY-MM-DD>/<HH>`` (UTC)."""
    closed = closed_at.astimezone(dt.UTC)
    return (LIVE_PREFIX, pipeline, kind, closed.strftime(_DAY), closed.strftime("%H"))


def batch_prefix(pipeline: str, kind: str | None = None) -> str:
    """Where the batches of ``pipeline`` (of one ``kind``) are stored."""
    from secure_pipeline.storage.snapshots import SNAPSHOT_PREFIX

    parts = [SNAPSHOT_PREFIX, LIVE_PREFIX, pipeline, *([kind] if kind else [])]
    return "/".join(parts) + "/"


def write_batch(
    store: "SnapshotStore",
    signer: "IdentitySigner",
    pipeline: PipelineSpec,
    *,
    kind: str,
    frame: "pd.DataFrame",
    predicate_fields: Mapping[str, Any],
) -> tuple[str, str]:
    """Store one batch as Parquet and its statement signed by the ``serve`` identity.

    Args:
        store: The snapshot store.
        signer: The ``serve`` identity's signer.
        pipeline: The pipeline the rows belong to.
        kind: ``traffic`` or ``feedback``.
        frame: The rows; a feedback batch has exactly the columns ``id`` and ``label``.
        predicate_fields: The rest of the predicate: ``slot``, ``model_sha256``,
            ``model_version``, ``opened_at``, ``closed_at`` (ISO UTC; the batch's key derives
            from it, now when absent), ``scored``, ``dropped``, ``requests``, ``errors``,
            ``refusals``, ``sample_rate``. ``pipeline``, ``kind``, ``key``, ``rows``,
            ``columns`` and ``code_version`` are set here.

    Returns:
        The batch's store key and its envelope's key.

    Raises:
        ConfigurationError: When the signer is not the ``serve`` identity's or the kind is
            unknown.
        PolicyViolation: When the frame holds a column of role identifier, personal or ignore,
            or a feedback batch has other columns.
        IntegrityError: When the store refuses the write.
    """
    import pyarrow as pa

    from secure_pipeline.storage.tables import schema_summary, table_to_parquet
    from secure_pipeline.trust.attestations import sign, statement, store_envelope

    if signer.identity != SERVE:
        raise ConfigurationError(
            f"live batches are signed by the {SERVE!r} identity; this signer speaks for "
            f"{signer.identity!r}. Configure SECURE_PIPELINE_SIGNER_SERVE."
        )
    if kind not in KINDS:
        raise ConfigurationError(f"a live batch is one of {KINDS}, found kind {kind!r}")
    columns = [str(c) for c in frame.columns]
    _refuse_forbidden(pipeline, columns, f"a {kind} batch")
    if kind == FEEDBACK and tuple(columns) != FEEDBACK_COLUMNS:
        raise PolicyViolation(
            f"a feedback batch has exactly the columns {list(FEEDBACK_COLUMNS)}, found {columns}"
        )
    closed_text = predicate_fields.get("closed_at") or utc_iso(dt.datetime.now(dt.UTC))
    closed_at = parse_utc(str(closed_text))
    table = pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False)
    data = table_to_parquet(table)
    ref = store.put_bytes(
        batch_asset(pipeline.name, kind, closed_at), data, ext="parquet", format="parquet",
        # Live rows are as personal as the feature rows they mirror: encrypted alike.
        encrypt=pipeline.holds_personal_data, schema=schema_summary(table),
        code_version=pipeline.code_version, extra={"rows": table.num_rows, "kind": kind},
    )  # fmt: skip
    predicate = {
        **dict(predicate_fields),
        "pipeline": pipeline.name,
        "kind": kind,
        "key": ref.key,
        "closed_at": utc_iso(closed_at),
        "rows": table.num_rows,
        "columns": columns,
        "code_version": pipeline.code_version,
    }
    envelope = sign(statement({"batch": ref.sha256}, LIVE_BATCH_TYPE, predicate), signer)
    return ref.key, store_envelope(store, ENVELOPE_KIND, pipeline.name, envelope)


# --- the recorder -----------------------------------------------------------------------------


@dataclass
class LiveMetrics:
    """The slot's counters the recorder moves (prometheus-client children, labelled already).

    Attributes:
        recorded: Rows kept in a batch.
        dropped: Rows sampled but not kept (the batch was full, or a batch waiting for a retry
            was lost).
        written: Kind -> batches written.
        failures: Batch writes that failed.
        feedback: Feedback rows accepted.
    """

    recorded: Any
    dropped: Any
    written: Mapping[str, Any]
    failures: Any
    feedback: Any


@dataclass
class _Open:
    """A batch being filled: the parts of the requests it kept and its counts."""

    opened_at: str
    opened: float  # time.monotonic() when it opened
    parts: list[tuple[Any, ...]] = field(default_factory=list)
    rows: int = 0
    scored: int = 0
    dropped: int = 0
    requests: int = 0
    errors: int = 0
    refusals: int = 0


@dataclass
class _Closed:
    """A batch closed and waiting to be written."""

    kind: str
    frame: "pd.DataFrame"
    fields: dict[str, Any]


class LiveRecorder:
    """Records what one slot scores and the feedback it receives, in bounded batches.

    ``record`` and ``count`` run on the request path and only append to the open batch under a
    lock; everything costly (assembling the frame, Parquet, signing, storing) happens when the
    batch is written, by the background thread `start` starts, or by `flush`.

    Args:
        store: The snapshot store batches go to.
        signer: The ``serve`` identity's signer.
        pipeline: The pipeline (its ``monitoring`` settings apply).
        slot: The slot's name.
        model_sha256: The digest of the model the slot serves.
        model_version: Its registry version ("" when unknown).
        inputs: The model's input features, in the order of the frame it scores.
        sensitive: Raw request fields recorded beside them (the pipeline's sensitive columns
            the request carries).
        metrics: The slot's counters, when it exposes them.

    Raises:
        ConfigurationError: When the signer is not the ``serve`` identity's, or a column name
            clashes with ``score``, ``label`` or ``id``.
        PolicyViolation: When a column to record has role identifier, personal or ignore.
    """

    def __init__(
        self,
        store: "SnapshotStore",
        signer: "IdentitySigner",
        pipeline: PipelineSpec,
        *,
        slot: str,
        model_sha256: str,
        model_version: str = "",
        inputs: Sequence[str],
        sensitive: Sequence[str] = (),
        metrics: LiveMetrics | None = None,
    ) -> None:
        import numpy as np

        if signer.identity != SERVE:
            raise ConfigurationError(
                f"live traffic is signed by the {SERVE!r} identity; this signer speaks for "
                f"{signer.identity!r}"
            )
        self.inputs = list(inputs)
        self.sensitive = [name for name in sensitive if name not in self.inputs]
        clashes = sorted(set(SCORED_COLUMNS) & {*self.inputs, *self.sensitive})
        if clashes:
            raise ConfigurationError(
                f"cannot record {clashes}: these names are the recorder's own columns "
                f"{list(SCORED_COLUMNS)}; rename the feature"
            )
        self.columns = [*self.inputs, *self.sensitive, *SCORED_COLUMNS]
        _refuse_forbidden(pipeline, self.columns, "live traffic")
        settings = pipeline.monitoring
        self.store = store
        self.signer = signer
        self.pipeline = pipeline
        self.slot = slot
        self.model_sha256 = model_sha256
        self.model_version = model_version
        self.sample_rate = float(settings.sample_rate)
        self.max_rows = int(settings.max_batch_rows)
        self.batch_seconds = float(settings.batch_seconds)
        self.metrics = metrics
        self._rng = np.random.default_rng()
        self._lock = threading.Lock()  # the open batches
        self._write_lock = threading.Lock()  # one writer at a time, in batch order
        self._traffic = self._opened()
        self._feedback = self._opened()
        self._pending: deque[_Closed] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _opened() -> _Open:
        return _Open(utc_iso(dt.datetime.now(dt.UTC)), time.monotonic())

    # -- the request path ----------------------------------------------------------------------

    def record(
        self,
        features: "pd.DataFrame | Mapping[str, np.ndarray]",
        sensitive: Mapping[str, Any],
        scores: "np.ndarray",
        labels: Sequence[str],
        ids: Sequence[str],
    ) -> int:
        """Sample the rows of one scored request into the open batch.

        Args:
            features: What the model scored (its columns are `inputs`): a frame (the skops
                path), or one array per column (the ONNX path, which builds no frame).
            sensitive: Raw values of each `sensitive` field, one per row (a field left out
                is recorded as missing: a request need not carry them).
            scores: The scores, one per row.
            labels: The labels given.
            ids: The prediction ids returned.

        Returns:
            How many rows were kept.
        """
        count = len(scores)
        sensitive = {
            name: [None] * count if sensitive.get(name) is None else sensitive[name]
            for name in self.sensitive
        }
        chosen = None
        if self.sample_rate < 1.0:
            chosen = (self._rng.random(count) < self.sample_rate).nonzero()[0]
            if not len(chosen):
                with self._lock:
                    self._traffic.scored += count
                return 0
        if chosen is not None:
            import numpy as np

            # Only the sampled rows are held, so memory follows the rows kept, not the
            # requests seen. At rate 1 the request's own objects are held, uncopied (the
            # frame is not used after scoring).
            features = (
                {name: np.asarray(values)[chosen] for name, values in features.items()}
                if isinstance(features, Mapping)
                else features.take(chosen)
            )
            sensitive = {name: [values[i] for i in chosen] for name, values in sensitive.items()}
            scores = scores[chosen]
            labels = [labels[i] for i in chosen]
            ids = [ids[i] for i in chosen]
        sampled = len(scores)
        # One array per request instead of its frame: a batch holds up to max_batch_rows
        # requests, and a frame is dozens of objects (memory, and the collector's work).
        features = _block(features, self.inputs)
        with self._lock:
            batch = self._traffic
            batch.scored += count
            keep = min(sampled, max(self.max_rows - batch.rows, 0))
            if keep:
                batch.parts.append((features, sensitive, scores, labels, ids, keep))
            batch.rows += keep
            batch.dropped += sampled - keep
            full = batch.rows >= self.max_rows
        if self.metrics is not None:
            if keep:
                self.metrics.recorded.inc(keep)
            if sampled - keep:
                self.metrics.dropped.inc(sampled - keep)
        if full:
            self._wake.set()  # close it now: later rows would only be dropped
        return keep

    def count(self, code: int) -> None:
        """Count one ``/predict`` answer: requests, errors (5xx), refusals (4xx)."""
        with self._lock:
            batch = self._traffic
            batch.requests += 1
            if code >= 500:
                batch.errors += 1
            elif code >= 400:
                batch.refusals += 1

    def feedback(self, rows: Sequence[tuple[str, Any]]) -> bool:
        """Add validated ``(id, label)`` rows to the open feedback batch.

        Returns:
            False, keeping none of them, when they do not fit in the open batch (the caller
            asks to retry; the full batch is being written).
        """
        with self._lock:
            batch = self._feedback
            if batch.rows + len(rows) > self.max_rows:
                self._wake.set()
                return False
            batch.parts.append(tuple(rows))
            batch.rows += len(rows)
        if self.metrics is not None:
            self.metrics.feedback.inc(len(rows))
        return True

    # -- writing -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background thread that closes and writes batches."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"live-{self.slot}",
                                            daemon=True)  # fmt: skip
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                due = min(self._traffic.opened, self._feedback.opened) + self.batch_seconds
            self._wake.wait(max(due - time.monotonic(), 0.0))
            self._wake.clear()
            if self._stop.is_set():
                return
            self.flush()

    def flush(self) -> list[str]:
        """Close the open batches and write every closed one; returns the keys written.

        A failed write is logged and counted, and the batch waits for the next flush.
        """
        self._close_open()
        return self._write_pending()

    def close(self) -> None:
        """Stop the background thread and write what is left (the slot shuts down)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=60)
        self.flush()

    def _close_open(self) -> None:
        with self._lock:
            traffic, self._traffic = self._traffic, self._opened()
            feedback, self._feedback = self._feedback, self._opened()
        closed_at = utc_iso(dt.datetime.now(dt.UTC))
        closed = []
        # No rows but answers counted: still evidence (of the error rate).
        if traffic.rows or traffic.requests or traffic.scored:
            closed.append(_Closed(TRAFFIC, self._traffic_frame(traffic), {
                "slot": self.slot, "model_sha256": self.model_sha256,
                "model_version": self.model_version, "opened_at": traffic.opened_at,
                "closed_at": closed_at, "scored": traffic.scored, "dropped": traffic.dropped,
                "requests": traffic.requests, "errors": traffic.errors,
                "refusals": traffic.refusals, "sample_rate": self.sample_rate,
            }))  # fmt: skip
        if feedback.rows:
            closed.append(_Closed(FEEDBACK, _feedback_frame(feedback), {
                "slot": self.slot, "model_sha256": self.model_sha256,
                "model_version": self.model_version, "opened_at": feedback.opened_at,
                "closed_at": closed_at, "scored": 0, "dropped": 0, "requests": 0,
                "errors": 0, "refusals": 0, "sample_rate": self.sample_rate,
            }))  # fmt: skip
        with self._lock:
            self._pending.extend(closed)
            while len(self._pending) > MAX_PENDING:
                lost = self._pending.popleft()
                logger.error(
                    "slot %s lost a %s batch of %d rows: %d batches wait for the store already",
                    self.slot, lost.kind, len(lost.frame), MAX_PENDING,
                )  # fmt: skip
                if self.metrics is not None and len(lost.frame):
                    self.metrics.dropped.inc(len(lost.frame))

    def _write_pending(self) -> list[str]:
        written: list[str] = []
        with self._write_lock:
            while True:
                with self._lock:
                    if not self._pending:
                        return written
                    batch = self._pending[0]
                try:
                    key, _ = write_batch(
                        self.store, self.signer, self.pipeline, kind=batch.kind,
                        frame=batch.frame, predicate_fields=batch.fields,
                    )  # fmt: skip
                except PolicyViolation:
                    raise  # never retried: a forbidden column is a bug, not an outage
                except Exception as exc:  # noqa: BLE001 - any store or signer failure: kept, retried
                    logger.error("slot %s could not write a %s batch (kept for a retry): %s: %s",
                                 self.slot, batch.kind, type(exc).__name__, exc)  # fmt: skip
                    if self.metrics is not None:
                        self.metrics.failures.inc()
                    return written
                with self._lock:
                    if self._pending and self._pending[0] is batch:
                        self._pending.popleft()
                written.append(key)
                if self.metrics is not None:
                    self.metrics.written[batch.kind].inc()

    def _traffic_frame(self, batch: _Open) -> "pd.DataFrame":
        import numpy as np
        import pandas as pd

        arrays: dict[str, list[Any]] = {name: [] for name in self.columns}
        for features, sensitive, scores, labels, ids, keep in batch.parts:
            if isinstance(features, np.ndarray):
                values = {name: features[:, i] for i, name in enumerate(self.inputs)}
            else:
                values = {name: features[name].to_numpy() for name in self.inputs}
            values.update({name: np.asarray(sensitive[name], dtype=object)
                           for name in self.sensitive})  # fmt: skip
            values["score"] = np.asarray(scores, dtype="float64")
            values["label"] = np.asarray(labels, dtype=object)
            values["id"] = np.asarray(ids, dtype=object)
            for name, column in values.items():
                arrays[name].append(column[:keep])
        if not batch.parts:
            return pd.DataFrame({name: np.array([], dtype=_empty_dtype(name, self.inputs))
                                 for name in self.columns})  # fmt: skip
        return pd.DataFrame({name: np.concatenate(parts) for name, parts in arrays.items()})


def _block(features: "pd.DataFrame | Mapping[str, np.ndarray]", inputs: Sequence[str]) -> Any:
    """The model inputs of one request as one 2-D float array, else a frame of them.

    A one-row array takes 0.4 KB where the frame takes 4 KB, and a batch may hold 50,000
    requests. A frame is kept when its columns are not the numeric inputs, in order.
    """
    import numpy as np

    if isinstance(features, Mapping):
        if list(features) == list(inputs):
            rows = len(features[inputs[0]]) if inputs else 0
            block = np.empty((rows, len(inputs)), dtype="float64")
            try:
                for index, name in enumerate(inputs):  # a column at a time: no copies
                    column = features[name]
                    if len(column) != rows:  # numpy would broadcast a one-value column
                        raise ValueError(f"column {name!r} has {len(column)} values, not {rows}")
                    block[:, index] = column
                return block
            except (TypeError, ValueError):  # a column that is not a number: a frame
                pass
        import pandas as pd

        return pd.DataFrame(dict(features))
    if list(features.columns) != list(inputs):
        return features
    try:
        return features.to_numpy(dtype="float64")
    except (TypeError, ValueError):  # a column that is not a number: kept as it is
        return features


def _empty_dtype(name: str, inputs: Sequence[str]) -> str:
    # Features and scores are numbers; labels, ids and raw sensitive values are text.
    return "float64" if name in inputs or name == "score" else "object"


def _feedback_frame(batch: _Open) -> "pd.DataFrame":
    import pandas as pd

    rows = [row for part in batch.parts for row in part]
    return pd.DataFrame({"id": [r[0] for r in rows], "label": [r[1] for r in rows]})


# --- the reader -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LiveBatch:
    """One verified batch.

    Attributes:
        key: Where its Parquet bytes are stored.
        sha256: Their digest (the statement's subject).
        kind: ``traffic`` or ``feedback``.
        predicate: The signed predicate.
    """

    key: str
    sha256: str
    kind: str
    predicate: Mapping[str, Any]


@dataclass
class LiveWindow:
    """The verified live batches closed within a window.

    Attributes:
        traffic: Every traffic row: the features, sensitive columns, ``score``, ``label``,
            ``id``, plus ``slot``, ``model_sha256`` and ``model_version``.
        feedback: ``id`` and ``label`` (the true label) of every feedback row.
        batches: The batches read, traffic and feedback.
        refused: ``"<key>: why"`` for every envelope or batch that did not verify.
        requests: ``/predict`` answers counted by the traffic batches.
        errors: Of which 5xx.
        refusals: Of which 4xx.
    """

    traffic: "pd.DataFrame"
    feedback: "pd.DataFrame"
    batches: list[LiveBatch]
    refused: list[str]
    requests: int = 0
    errors: int = 0
    refusals: int = 0


class _RefusedError(SecurePipelineError):
    """An envelope or batch that does not count, and why."""


def load_window(
    store: "SnapshotStore",
    trust: "TrustPolicy",
    pipeline: PipelineSpec | str,
    *,
    since: dt.datetime,
    until: dt.datetime,
    model_sha256: str | None = None,
    only: Collection[str] | None = None,
) -> LiveWindow:
    """The verified batches of ``pipeline`` closed in ``[since, until)``.

    Args:
        store: The snapshot store.
        trust: The trust policy (the ``serve`` identity's keys).
        pipeline: The pipeline (or its name).
        since: Start of the window (aware datetime), inclusive.
        until: End of the window, exclusive.
        model_sha256: Only traffic of the model with this digest (feedback is kept whatever
            model scored the rows it labels: it is joined on prediction ids).
        only: Only the batches with these digests (a window as it was recorded: a batch
            written into its hours since then is left out, not refused).

    Returns:
        The window; ``refused`` lists every envelope that did not verify, every batch whose
        bytes do not match, and every Parquet file under ``live/`` within the window's hours
        that no verified envelope names.
    """
    import pandas as pd

    from secure_pipeline.trust.attestations import stored_envelopes

    name = pipeline if isinstance(pipeline, str) else pipeline.name
    spec = None if isinstance(pipeline, str) else pipeline
    since, until = since.astimezone(dt.UTC), until.astimezone(dt.UTC)
    refused: list[str] = []
    batches: list[LiveBatch] = []
    frames: dict[str, list[pd.DataFrame]] = {TRAFFIC: [], FEEDBACK: []}
    signed: set[str] = set()  # batch keys some verified envelope names, in the window or not
    seen: set[str] = set()
    totals = {"requests": 0, "errors": 0, "refusals": 0}
    for envelope_key, data in stored_envelopes(store, ENVELOPE_KIND, name):
        try:
            batch = _verified_envelope(envelope_key, data, trust, name)
        except _RefusedError as why:
            refused.append(f"{envelope_key}: {why}")
            continue
        signed.add(batch.key)
        closed = parse_utc(batch.predicate["closed_at"])
        if not since <= closed < until or batch.sha256 in seen:
            continue
        if only is not None and batch.sha256 not in only:
            continue
        if (
            batch.kind == TRAFFIC
            and model_sha256 is not None
            and batch.predicate.get("model_sha256") != model_sha256
        ):
            continue
        try:
            frame = _read_batch(store, batch, spec)
        except _RefusedError as why:
            refused.append(f"{batch.key}: {why}")
            continue
        seen.add(batch.sha256)
        batches.append(batch)
        if batch.kind == TRAFFIC:
            for column in WINDOW_COLUMNS:
                frame[column] = str(batch.predicate.get(column) or "")
            for total in totals:
                totals[total] += int(batch.predicate.get(total, 0))
        frames[batch.kind].append(frame)
    refused.extend(
        f"{key}: no verified live-batch envelope names this file; not counted"
        for key in _stored_batches(store, name, since, until)
        if key not in signed
    )
    return LiveWindow(
        traffic=_concat(frames[TRAFFIC], (*SCORED_COLUMNS, *WINDOW_COLUMNS)),
        feedback=_concat(frames[FEEDBACK], FEEDBACK_COLUMNS),
        batches=batches,
        refused=refused,
        **totals,
    )


def _verified_envelope(key: str, data: bytes, trust: "TrustPolicy", pipeline: str) -> LiveBatch:
    from secure_pipeline.trust.attestations import key_for, open_envelope

    if key != key_for(ENVELOPE_KIND, pipeline, data):
        raise _RefusedError("stored under a key that is not its digest (copied or altered)")
    try:
        attestation = open_envelope(data, trust, identities=(SERVE,),
                                    predicate_type=LIVE_BATCH_TYPE, what="live batch")  # fmt: skip
    except SecurePipelineError as exc:
        raise _RefusedError(str(exc)) from None
    predicate = attestation.predicate
    subjects = attestation.subjects
    kind = predicate.get("kind")
    batch_key = predicate.get("key")
    if predicate.get("pipeline") != pipeline:
        raise _RefusedError(f"a batch of pipeline {predicate.get('pipeline')!r}, not {pipeline!r}")
    if kind not in KINDS:
        raise _RefusedError(f"kind {kind!r} is not one of {KINDS}")
    if set(subjects) != {"batch"}:
        raise _RefusedError(f"its subjects are {sorted(subjects)}, not one batch")
    digest = subjects["batch"]
    match = _BATCH_FILE.fullmatch(str(batch_key).rsplit("/", 1)[-1])
    if (
        not isinstance(batch_key, str)
        or not batch_key.startswith(batch_prefix(pipeline, kind))
        or match is None
        or match[1] != digest
    ):
        raise _RefusedError(f"its key {str(batch_key)[:200]!r} is not where a {kind} batch with "
                       f"digest {digest} is stored")  # fmt: skip
    try:
        closed = parse_utc(str(predicate.get("closed_at")))
    except ValueError:
        shown = str(predicate.get("closed_at"))[:64]
        raise _RefusedError(f"closed_at {shown!r} is not an ISO timestamp") from None
    if "/".join(batch_asset(pipeline, kind, closed)) not in batch_key:
        raise _RefusedError("its key's day and hour are not those of its closed_at")
    return LiveBatch(batch_key, digest, kind, predicate)


def _read_batch(
    store: "SnapshotStore", batch: LiveBatch, pipeline: PipelineSpec | None
) -> "pd.DataFrame":
    from secure_pipeline.storage.tables import parquet_to_table

    try:
        data = store.read_bytes((batch.key, batch.sha256))
    except SecurePipelineError as exc:  # missing, replaced, shredded, no key
        raise _RefusedError(str(exc)) from None
    try:
        frame = parquet_to_table(data).to_pandas()
    except Exception as exc:  # noqa: BLE001 - signed bytes that do not parse: refused, named
        raise _RefusedError(f"signed but not a Parquet table ({type(exc).__name__})") from None
    columns = [str(c) for c in frame.columns]
    if columns != list(batch.predicate.get("columns", [])):
        raise _RefusedError(f"its columns {columns} are not the signed ones")
    if len(frame) != batch.predicate.get("rows"):
        raise _RefusedError(f"{len(frame)} rows, the statement says {batch.predicate.get('rows')}")
    if pipeline is not None and forbidden_columns(pipeline, columns):
        raise _RefusedError(f"holds columns {forbidden_columns(pipeline, columns)} of a role never "
                       "recorded")  # fmt: skip
    if batch.kind == FEEDBACK and tuple(columns) != FEEDBACK_COLUMNS:
        raise _RefusedError(f"a feedback batch with columns {columns}")
    return frame


def _stored_batches(
    store: "SnapshotStore", pipeline: str, since: dt.datetime, until: dt.datetime
) -> list[str]:
    """Every Parquet key under ``live/<pipeline>/`` in an hour that overlaps the window."""
    first = since.replace(minute=0, second=0, microsecond=0)
    days = []
    day = first.date()
    while day <= until.date():
        days.append(day)
        day += dt.timedelta(days=1)
    found = []
    for kind in KINDS:
        for day in days:
            prefix = f"{batch_prefix(pipeline, kind)}{day.strftime(_DAY)}/"
            for key in store.list_keys(prefix):
                hour, _, file = key[len(prefix) :].partition("/")
                if not hour.isdigit() or _BATCH_FILE.fullmatch(file) is None:
                    continue  # manifests, and anything that is not a batch
                start = dt.datetime.combine(day, dt.time(int(hour) % 24), tzinfo=dt.UTC)
                if first <= start < until:
                    found.append(key)
    return found


def _concat(frames: list["pd.DataFrame"], columns: Sequence[str]) -> "pd.DataFrame":
    import pandas as pd

    filled = [f for f in frames if len(f)]
    if filled:
        return pd.concat(filled, ignore_index=True)
    if frames:
        return frames[0].iloc[0:0].reset_index(drop=True)
    return pd.DataFrame({name: [] for name in columns})


def window_digest(window: LiveWindow) -> str:
    """SHA-256 over the sorted digests of the window's batches (what was judged)."""
    return sha256_hex(canonical_json(sorted(batch.sha256 for batch in window.batches)))
