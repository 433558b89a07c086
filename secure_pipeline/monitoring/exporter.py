"""The pipeline exporter: Dagster's view of every pipeline, and the evidence, as Prometheus metrics.

`PipelineCollector` is a prometheus-client custom collector. Per scrape it reads the Dagster
instance with batch queries — the asset records of every asset of the code location (latest
materialization and the run that last targeted each), the latest execution of every asset check,
and the status of those runs — so the cost does not grow with the number of checks beyond the
rows read. What is expensive to establish is refreshed in a background thread every
``refresh_seconds`` and served from a cache: the audit trail's verification (every record, link
and signature, anchored on the audit records the latest Dagster events name) and, per pipeline,
the champion from the gate's signed decisions with the verification of its whole chain of
evidence.

A part that fails (the Dagster instance, the audit trail, a pipeline's champion) is counted in
``secure_pipeline_exporter_errors_total{part}``, logged, and shown failed: a broken or
unreadable trail is ``secure_pipeline_audit_chain_valid 0``, an unverifiable champion
``secure_pipeline_champion_evidence_valid 0``. Nothing is ever served as valid from a cache
that the last refresh could not confirm.

`serve_metrics` serves the collector alone (its own ``CollectorRegistry``) on ``/metrics``:
plain HTTP on a loopback address, TLS 1.3 anywhere else.
"""

import contextlib
import ipaddress
import logging
import math
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from secure_pipeline.errors import ConfigurationError, IntegrityError
from secure_pipeline.names import CHAMPION, PIPELINE_TAG

if TYPE_CHECKING:
    import dagster as dg

    from secure_pipeline.spec import PipelineSpec
    from secure_pipeline.storage.snapshots import SnapshotStore
    from secure_pipeline.trust.policy import TrustPolicy

logger = logging.getLogger(__name__)

PREFIX = "secure_pipeline_"
# The parts whose failures are counted apart (``secure_pipeline_exporter_errors_total{part}``).
PARTS = ("dagster", "audit", "champion")
DEFAULT_PORT = 9464
# Metadata of a check evaluation holding PSI per feature (feature_drift, live_input_drift).
PSI_BY_FEATURE = "psi_by_feature"
# A client has this long to finish the TLS handshake and its request: a connection that sends
# nothing ties up one handler thread, never the accepting one.
REQUEST_TIMEOUT_SECONDS = 10.0

# name -> (type, help, labels): the contract of DESIGN D, in exposition order.
FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "asset_last_materialization_timestamp_seconds": (
        "gauge", "Unix time of the asset's latest materialization (of a partitioned asset: its "
        "newest day's).", ("pipeline", "asset"),
    ),
    "asset_last_run_success": (
        "gauge", "1 when the latest finished run that targeted the asset succeeded, else 0.",
        ("pipeline", "asset"),
    ),
    "asset_stale_after_seconds": (
        "gauge", "The asset's freshness policy fail window (where one is declared).",
        ("pipeline", "asset"),
    ),
    "check_passed": (
        "gauge", "1 when the check's latest evaluation passed, else 0 (of a partitioned "
        "asset: its newest evaluated partition's).", ("pipeline", "asset", "check", "severity"),
    ),
    "check_last_evaluation_timestamp_seconds": (
        "gauge", "Unix time of the check's latest evaluation (of a partitioned asset: its "
        "newest evaluated partition's).", ("pipeline", "asset", "check"),
    ),
    "check_failed_partitions": (
        "gauge", "Partitions of a partitioned asset whose latest evaluation of the check "
        "failed, by the severity it failed at.", ("pipeline", "asset", "check", "severity"),
    ),
    "check_value": (
        "gauge", "Every numeric metadata value of the check's latest evaluation (of a "
        "partitioned asset: its newest evaluated partition's).",
        ("pipeline", "asset", "check", "metric"),
    ),
    "feature_psi": (
        "gauge", "Population stability index per feature, from the check's psi_by_feature.",
        ("pipeline", "asset", "check", "feature"),
    ),
    "champion_version": (
        "gauge", "Registry version of the champion (the gate's latest signed decision).",
        ("pipeline",),
    ),
    "champion_info": (
        "gauge", "The champion's version and model digest (always 1).",
        ("pipeline", "version", "model_sha256"),
    ),
    "champion_promoted_timestamp_seconds": (
        "gauge", "Unix time the gate signed the champion decision.", ("pipeline",),
    ),
    "champion_age_seconds": (
        "gauge", "Seconds since the gate signed the champion decision.", ("pipeline",),
    ),
    "champion_evidence_valid": (
        "gauge", "1 when the champion's whole chain of evidence verifies and the registry alias "
        "mirrors the signed decision, else 0.", ("pipeline",),
    ),
    "audit_chain_valid": (
        "gauge", "1 when every audit record, link, signature and the latest checkpoint verify.",
        (),
    ),
    "audit_records": ("gauge", "Number of records in the verified audit trail.", ()),
    "monitoring_refresh_timestamp_seconds": (
        "gauge", "Unix time of the last refresh of the audit and champion status.", (),
    ),
    "exporter_scrape_duration_seconds": (
        "gauge", "Seconds this scrape spent reading the Dagster instance.", (),
    ),
    "exporter_errors": (
        "counter", "Failures of a part of the exporter (dagster, audit, champion).", ("part",),
    ),
}  # fmt: skip


def metric_names() -> list[str]:
    """Every family name as exposed (counters with their ``_total`` suffix)."""
    return [
        PREFIX + name + ("_total" if kind == "counter" else "")
        for name, (kind, _help, _labels) in FAMILIES.items()
    ]


def _family(name: str) -> GaugeMetricFamily | CounterMetricFamily:
    kind, documentation, labels = FAMILIES[name]
    cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
    return cls(PREFIX + name, documentation, labels=list(labels))


@dataclass(frozen=True)
class _Asset:
    """An asset of the code location, as the metrics label it."""

    key: "dg.AssetKey"
    pipeline: str
    asset: str
    stale_after: float | None
    partitioned: bool = False


@dataclass(frozen=True)
class _Check:
    """An asset check of the code location, as the metrics label it."""

    key: "dg.AssetCheckKey"
    pipeline: str
    asset: str
    check: str


@dataclass(frozen=True)
class AuditStatus:
    """The audit trail as the last refresh found it.

    Attributes:
        valid: Whether the whole trail verified.
        records: Its length (None when it did not verify).
        detail: What verified, or what broke.
    """

    valid: bool
    records: int | None
    detail: str


@dataclass(frozen=True)
class ChampionStatus:
    """One pipeline's champion as the last refresh found it.

    Attributes:
        pipeline: The pipeline.
        version: The champion's registry version (None: no valid champion decision).
        model_sha256: The model digest the decision names.
        promoted_at: Unix time the gate signed the decision.
        evidence_valid: Whether its chain verifies (None: nothing to verify, no decision ever).
        problems: Why it does not.
    """

    pipeline: str
    version: str | None = None
    model_sha256: str | None = None
    promoted_at: float | None = None
    evidence_valid: bool | None = None
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class Refreshed:
    """Everything the background refresh establishes.

    Attributes:
        audit: The audit trail's status.
        champions: Each pipeline's champion, by pipeline.
        at: Unix time the refresh finished.
    """

    audit: AuditStatus
    champions: Mapping[str, ChampionStatus]
    at: float


# For each check of a partitioned asset: severity -> partitions whose latest evaluation failed.
_FailedPartitions = dict["dg.AssetCheckKey", dict[str, int]]


@dataclass
class _DagsterView:
    """One batch read of the instance."""

    materialized: dict[str, float] = field(default_factory=dict)  # asset key string -> time
    run_success: dict[str, bool] = field(default_factory=dict)
    evaluations: dict["dg.AssetCheckKey", "_Evaluated"] = field(default_factory=dict)
    failed_partitions: "_FailedPartitions" = field(default_factory=dict)
    anchors: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Evaluated:
    """What the metrics need of one check evaluation (its execution row ``id``)."""

    id: int
    timestamp: float
    passed: bool
    severity: str
    values: tuple[tuple[str, float], ...]
    psi: tuple[tuple[str, float], ...]
    anchor: tuple[int, str] | None


def _anchor(metadata: Mapping[str, Any], key: str) -> tuple[int, str] | None:
    """The ``(seq, hash)`` of the audit record a materialization or evaluation names."""
    entry = metadata.get(key)
    if entry is None:
        return None
    seq, _, digest = str(getattr(entry, "value", entry)).partition(":")
    return (int(seq), digest) if seq.isdigit() and len(digest) == 64 else None


def _evaluated(execution: Any) -> _Evaluated:
    """The metrics of one completed asset check execution record."""
    from secure_pipeline.storage.io_manager import AUDIT_RECORD

    evaluation = execution.evaluation
    metadata = evaluation.metadata
    values = []
    for metric, value in sorted(metadata.items()):
        number = _number(getattr(value, "value", None))
        if number is not None:
            values.append((metric, number))
    return _Evaluated(
        id=int(execution.id),
        timestamp=float(execution.event.timestamp),
        passed=bool(evaluation.passed),
        severity=str(getattr(evaluation.severity, "value", evaluation.severity)),
        values=tuple(values),
        psi=tuple(sorted(psi_by_feature(metadata.get(PSI_BY_FEATURE)).items())),
        anchor=_anchor(metadata, AUDIT_RECORD),
    )


# The status of a completed execution whose check did not pass (Dagster's own name).
_FAILED = "FAILED"
# Dagster's check severities (AssetCheckSeverity values).
_SEVERITIES = ("ERROR", "WARN")


def _completed_statuses() -> list[str]:
    from dagster._core.storage.asset_check_execution_record import (
        COMPLETED_ASSET_CHECK_EXECUTION_RECORD_STATUSES,
    )

    return sorted(s.value for s in COMPLETED_ASSET_CHECK_EXECUTION_RECORD_STATUSES)


@dataclass(frozen=True)
class _Latest:
    """Which completed evaluation of a check the metrics show, and its partitions' verdicts.

    Attributes:
        id: The execution row shown: for a partitioned asset the latest evaluation of its
            newest evaluated partition (a backfill of older days re-evaluating them must not
            hide today's verdict), else the check's latest.
        failed: For a partitioned asset, the execution rows of the partitions whose latest
            evaluation failed (None when the asset is not partitioned).
    """

    id: int
    failed: tuple[int, ...] | None = None


def _latest_completed_ids(
    storage: Any, keys: list["dg.AssetCheckKey"], partitioned: "set[dg.AssetKey]"
) -> dict[Any, _Latest] | None:
    """The completed evaluation of each check to show (None: the storage is not SQL).

    Reads the asset check executions table of Dagster's SQL event log storage (SQLite,
    PostgreSQL) the way the storage's own latest-execution query does, ids and statuses only:
    the latest completed execution per check and partition, in one query.

    Which rows count follows the asset's definition now (``partitioned``), not which rows
    exist: an asset that stopped being partitioned is judged by its evaluations without a
    partition (its old days' verdicts would hide a new failure), and a partitioned one by its
    days. Only a check with no evaluation of the current kind yet shows its latest of the other.
    """
    import dagster as dg
    import sqlalchemy as db
    from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable
    from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage
    from dagster._core.storage.sqlalchemy_compat import (
        db_fetch_mappings,
        db_select,
        db_subquery,
    )

    if not isinstance(storage, SqlEventLogStorage):
        return None
    table = AssetCheckExecutionsTable
    wanted = {(k.asset_key.to_string(), k.name): k for k in keys}
    columns = (table.c.asset_key, table.c.check_name, table.c.partition)
    latest = db_subquery(
        db_select([*columns, db.func.max(table.c.id).label("id")])
        .where(
            db.and_(
                table.c.asset_key.in_(sorted({a for a, _ in wanted})),
                table.c.check_name.in_(sorted({n for _, n in wanted})),
                table.c.execution_status.in_(_completed_statuses()),
            )
        )
        .group_by(*columns),
        "latest_check_executions",
    )
    query = db_select(
        [latest.c.asset_key, latest.c.check_name, latest.c.partition, latest.c.id,
         table.c.execution_status]
    ).select_from(latest.join(table, table.c.id == latest.c.id))  # fmt: skip
    with storage.index_connection() as connection:
        rows = db_fetch_mappings(connection, query)
    by_key: dict[dg.AssetCheckKey, list[Any]] = {}
    for row in rows:
        key = wanted.get((row["asset_key"], row["check_name"]))
        if key is not None:
            by_key.setdefault(key, []).append(row)
    found: dict[dg.AssetCheckKey, _Latest] = {}
    for key, executions in by_key.items():
        days = [r for r in executions if r["partition"] is not None]
        if key.asset_key not in partitioned:
            whole = [r for r in executions if r["partition"] is None] or executions
            found[key] = _Latest(max(int(r["id"]) for r in whole))
        elif not days:  # partitioned now, evaluated only before it was
            found[key] = _Latest(max(int(r["id"]) for r in executions), ())
        else:
            # Daily partition keys are ISO dates: the greatest is the newest day.
            newest = max(days, key=lambda r: str(r["partition"]))
            failed = tuple(int(r["id"]) for r in days if r["execution_status"] == _FAILED)
            found[key] = _Latest(int(newest["id"]), failed)
    return found


def _records_by_id(storage: Any, ids: Iterable[int]) -> dict[int, Any]:
    """The asset check execution records with these row ids."""
    import dagster as dg
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecord
    from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable
    from dagster._core.storage.sqlalchemy_compat import db_fetch_mappings, db_select

    table = AssetCheckExecutionsTable
    query = db_select(
        [table.c.id, table.c.asset_key, table.c.check_name, table.c.run_id,
         table.c.execution_status, table.c.evaluation_event, table.c.create_timestamp,
         table.c.partition]
    ).where(table.c.id.in_(sorted(ids)))  # fmt: skip
    with storage.index_connection() as connection:
        rows = db_fetch_mappings(connection, query)
    records = {}
    for row in rows:
        key = dg.AssetCheckKey(dg.AssetKey.from_db_string(row["asset_key"]), row["check_name"])
        record = AssetCheckExecutionRecord.from_db_row(row, key=key)
        if record.evaluation is not None:
            records[int(row["id"])] = record
    return records


def _latest_completed_records(storage: Any, keys: list["dg.AssetCheckKey"]) -> dict[Any, Any]:
    """The latest completed execution record of each check, through the storage's API."""
    from dagster._core.storage.asset_check_execution_record import (
        COMPLETED_ASSET_CHECK_EXECUTION_RECORD_STATUSES,
    )

    latest = dict(storage.get_latest_asset_check_execution_by_key(keys))
    for key, execution in list(latest.items()):
        if execution.status not in COMPLETED_ASSET_CHECK_EXECUTION_RECORD_STATUSES:
            # Planned in a run still going (or that never evaluated it): an earlier one.
            completed = storage.get_asset_check_execution_history(
                key, limit=1, status=COMPLETED_ASSET_CHECK_EXECUTION_RECORD_STATUSES
            )
            if completed:
                latest[key] = completed[0]
            else:
                del latest[key]
    return {k: r for k, r in latest.items() if r.evaluation is not None}


def _stale_after(policy: Any) -> float | None:
    """The longest a materialization stays fresh under ``policy``, in seconds, or None."""
    if policy is None:
        return None
    fail_window = getattr(policy, "fail_window", None)
    if fail_window is not None:
        return float(fail_window.to_timedelta().total_seconds())
    deadline = getattr(policy, "deadline_cron", None)
    if deadline is not None:
        # The interval Dagster itself validates a cron policy's lower bound against.
        from dagster._utils.schedules import get_smallest_cron_interval

        # Materialized at the earliest moment a deadline accepts, an asset passes until the
        # next deadline: one cron interval plus the lower bound.
        window = get_smallest_cron_interval(deadline) + policy.lower_bound_delta
        return float(window.total_seconds())
    return None


def _asset_label(key: "dg.AssetKey", pipeline: str) -> str:
    """The key without its pipeline prefix (``features``), so dashboards read per pipeline."""
    path = list(key.path)
    if len(path) > 1 and path[0] == pipeline:
        path = path[1:]
    return "/".join(path)


def _timestamp(iso: str) -> float:
    """Unix time of an ISO-8601 UTC timestamp as the gate signs it."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _number(value: Any) -> float | None:
    """A metric value: ints and floats (never booleans), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def psi_by_feature(value: Any) -> dict[str, float]:
    """PSI per feature from a ``psi_by_feature`` metadata value.

    Accepts the JSON form ``{feature: psi}`` (or ``{feature: {"psi": psi}}``) and the table
    form (records with ``feature`` and ``psi`` columns); anything not numeric is left out.
    """
    import dagster as dg

    found: dict[str, float] = {}
    if isinstance(value, dg.JsonMetadataValue) and isinstance(value.data, Mapping):
        for feature, psi in value.data.items():
            if isinstance(psi, Mapping):
                psi = psi.get("psi")
            number = _number(psi)
            if number is not None:
                found[str(feature)] = number
    elif isinstance(value, dg.TableMetadataValue):
        for record in value.records:
            data = record.data
            number = _number(data.get("psi"))
            if data.get("feature") is not None and number is not None:
                found[str(data["feature"])] = number
    return found


class PipelineCollector:
    """Prometheus collector of a code location's pipelines.

    Args:
        definitions: The code location's definitions (every pipeline's assets and checks).
        instance: The Dagster instance the pipelines run in.
        store_factory: Returns the snapshot store (called at each refresh).
        trust_factory: Returns the trust policy (called at each refresh).
        refresh_seconds: How often the background thread refreshes the audit and champion
            status.
        pipelines: The pipeline specs by name (``compose.pipelines_of()`` once the definitions
            are built): a champion is verified against today's spec. A pipeline of the
            definitions without one shows its champion's evidence as not valid.

    Raises:
        ConfigurationError: When ``refresh_seconds`` is not positive.
    """

    def __init__(
        self,
        definitions: "dg.Definitions",
        instance: "dg.DagsterInstance",
        store_factory: Callable[[], "SnapshotStore"],
        trust_factory: Callable[[], "TrustPolicy"],
        refresh_seconds: float = 60,
        *,
        pipelines: Mapping[str, "PipelineSpec"] | None = None,
    ) -> None:
        if not refresh_seconds > 0:
            raise ConfigurationError(
                f"refresh_seconds must be a positive number of seconds, found {refresh_seconds!r}"
            )
        self.instance = instance
        self.store_factory = store_factory
        self.trust_factory = trust_factory
        self.refresh_seconds = float(refresh_seconds)
        self.pipelines: dict[str, PipelineSpec] = dict(pipelines or {})
        self.assets, self.checks = self._read_graph(definitions)
        self.pipeline_names = sorted({a.pipeline for a in self.assets})
        self._lock = threading.Lock()
        self._errors = dict.fromkeys(PARTS, 0)
        self._refreshed: Refreshed | None = None
        self._evaluated: dict[dg.AssetCheckKey, _Evaluated] = {}
        self._failed_severity: dict[int, str] = {}  # execution row -> severity it failed at
        # Partitioned asset -> (its last materialization's id, its newest day's time).
        self._newest_day: dict[dg.AssetKey, tuple[int | None, float]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the code location -----------------------------------------------------------------

    @staticmethod
    def _read_graph(definitions: "dg.Definitions") -> tuple[list[_Asset], list[_Check]]:
        graph = definitions.resolve_asset_graph()
        assets: list[_Asset] = []
        checks: list[_Check] = []
        for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
            node = graph.get(key)
            if node.is_external:
                continue
            pipeline = node.tags.get(PIPELINE_TAG) or key.path[0]
            label = _asset_label(key, pipeline)
            stale_after = _stale_after(node.freshness_policy_or_from_metadata)
            partitioned = node.partitions_def is not None
            assets.append(_Asset(key, pipeline, label, stale_after, partitioned))
            for check_key in sorted(node.check_keys, key=lambda k: k.name):
                checks.append(_Check(check_key, pipeline, label, check_key.name))
        return assets, checks

    # -- prometheus-client's collector protocol --------------------------------------------

    def describe(self) -> Iterator[Metric]:
        """Every family, without samples (so a registry and tests can list the names)."""
        for name in FAMILIES:
            yield _family(name)

    def collect(self) -> Iterator[Metric]:
        """Every family with this scrape's samples."""
        started = time.perf_counter()
        families = {name: _family(name) for name in FAMILIES}
        try:
            view = self._read_dagster(with_anchors=False)
        except Exception:  # noqa: BLE001 - any failure of the instance is this part's failure
            # Counted and logged; its gauges are left out of this scrape, never replaced by
            # the values of an earlier one.
            self._failed("dagster", "reading the Dagster instance failed")
        else:
            self._add_dagster(families, view)
        self._add_refreshed(families, self.refreshed)
        families["exporter_scrape_duration_seconds"].add_metric([], time.perf_counter() - started)
        with self._lock:
            errors = dict(self._errors)
        for part, count in errors.items():
            families["exporter_errors"].add_metric([part], count)
        yield from families.values()

    # -- Dagster, per scrape ---------------------------------------------------------------

    def _read_dagster(self, *, with_anchors: bool) -> _DagsterView:
        """One batch read: asset records, latest check evaluations, the runs they name."""
        import dagster as dg

        from secure_pipeline.storage.io_manager import AUDIT_RECORD

        view = _DagsterView()
        last_run: dict[str, str] = {}
        partitioned = {a.key for a in self.assets if a.partitioned}
        for record in self.instance.get_asset_records([a.key for a in self.assets]):
            entry = record.asset_entry
            name = entry.asset_key.to_string()
            materialization = entry.last_materialization
            if materialization is not None:
                view.materialized[name] = (
                    self._newest_day_materialized(entry)
                    if entry.asset_key in partitioned
                    else float(materialization.timestamp)
                )
                if with_anchors and materialization.asset_materialization is not None:
                    anchor = _anchor(materialization.asset_materialization.metadata, AUDIT_RECORD)
                    if anchor is not None:
                        view.anchors[anchor[0]] = anchor[1]
            if entry.last_run_id:
                last_run[name] = entry.last_run_id
        view.evaluations, view.failed_partitions = self._latest_evaluations()
        if with_anchors:
            for evaluated in view.evaluations.values():
                if evaluated.anchor is not None:
                    view.anchors[evaluated.anchor[0]] = evaluated.anchor[1]
        run_ids = sorted(set(last_run.values()))
        finished: dict[str, bool] = {}
        if run_ids:
            for run in self.instance.get_run_records(dg.RunsFilter(run_ids=run_ids)):
                if run.dagster_run.is_finished:
                    finished[run.dagster_run.run_id] = (
                        run.dagster_run.status == dg.DagsterRunStatus.SUCCESS
                    )
        for name, run_id in last_run.items():
            # A run still going has no outcome yet: its sample is left out until it ends.
            if run_id in finished:
                view.run_success[name] = finished[run_id]
        return view

    def _newest_day_materialized(self, entry: Any) -> float:
        """When the newest materialized day of a partitioned asset was last materialized.

        Its freshness is the newest day's: a backfill of older days materializes the asset
        without today's batch having arrived. Two queries, made again only after the asset's
        next materialization.
        """
        import dagster as dg

        key, last = entry.asset_key, entry.last_materialization_storage_id
        with self._lock:
            cached = self._newest_day.get(key)
        if cached is not None and cached[0] == last:
            return cached[1]
        by_day = self.instance.get_latest_storage_id_by_partition(
            key, dg.DagsterEventType.ASSET_MATERIALIZATION
        )
        moment = float(entry.last_materialization.timestamp)
        if by_day:
            newest = max(by_day)  # daily partition keys are ISO dates
            records = self.instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, storage_ids=[by_day[newest]]), limit=1
            ).records
            if records:
                moment = float(records[0].timestamp)
        with self._lock:
            self._newest_day[key] = (last, moment)
        return moment

    def _latest_evaluations(
        self,
    ) -> tuple[dict["dg.AssetCheckKey", "_Evaluated"], "_FailedPartitions"]:
        """The evaluation of every check to show (`_Latest`), and failed partitions.

        The second mapping holds, for each check of a partitioned asset, how many partitions'
        latest evaluation failed, by severity. An evaluation's event carries all its metadata
        (tables, reports, JSON): deserializing 200 of them per scrape would cost more than the
        scrape's budget. So the ids of the latest completed executions are read (one indexed
        query) and only the executions not seen before are loaded; on an event log storage
        that is not SQL, every latest one is (partitions aside: that storage's API has no
        batch query of them).
        """
        keys = [c.key for c in self.checks]
        if not keys:
            return {}, {}
        storage = self.instance.event_log_storage
        shown = _latest_completed_ids(storage, keys, {a.key for a in self.assets if a.partitioned})
        if shown is None:
            records = _latest_completed_records(storage, keys)
            return {k: _evaluated(r) for k, r in records.items()}, {}
        ids = {key: latest.id for key, latest in shown.items()}
        with self._lock:
            cached, severities = self._evaluated, self._failed_severity
        failed_ids = {i for latest in shown.values() for i in latest.failed or ()}
        wanted = {i for k, i in ids.items() if k not in cached or cached[k].id != i}
        wanted |= failed_ids - severities.keys()
        loaded = _records_by_id(storage, wanted) if wanted else {}
        latest = {
            key: cached[key] if key in cached and cached[key].id == i else _evaluated(loaded[i])
            for key, i in ids.items()
            if i in loaded or (key in cached and cached[key].id == i)
        }
        # A completed execution row never changes: each failed day's severity is read once,
        # and kept while that day's latest evaluation is the failed one.
        severities = {
            i: severities[i] if i in severities else _evaluated(loaded[i]).severity
            for i in failed_ids
            if i in severities or i in loaded
        }
        failed: _FailedPartitions = {}
        for key, day in shown.items():
            if day.failed is not None:
                counts = failed[key] = dict.fromkeys(_SEVERITIES, 0)  # both shown, at 0 too
                for i in day.failed:
                    if i in severities:
                        counts[severities[i]] = counts.get(severities[i], 0) + 1
        with self._lock:
            self._evaluated, self._failed_severity = latest, severities
        return latest, failed

    def _add_dagster(self, families: dict[str, Any], view: _DagsterView) -> None:
        for asset in self.assets:
            labels = [asset.pipeline, asset.asset]
            name = asset.key.to_string()
            if name in view.materialized:
                families["asset_last_materialization_timestamp_seconds"].add_metric(
                    labels, view.materialized[name]
                )
            if name in view.run_success:
                families["asset_last_run_success"].add_metric(
                    labels, 1.0 if view.run_success[name] else 0.0
                )
            if asset.stale_after is not None:
                families["asset_stale_after_seconds"].add_metric(labels, asset.stale_after)
        for check in self.checks:
            evaluated = view.evaluations.get(check.key)
            if evaluated is None:
                continue
            labels = [check.pipeline, check.asset, check.check]
            for severity, count in view.failed_partitions.get(check.key, {}).items():
                families["check_failed_partitions"].add_metric([*labels, severity], count)
            families["check_passed"].add_metric(
                [*labels, evaluated.severity], 1.0 if evaluated.passed else 0.0
            )
            families["check_last_evaluation_timestamp_seconds"].add_metric(
                labels, evaluated.timestamp
            )
            for metric, number in evaluated.values:
                families["check_value"].add_metric([*labels, metric], number)
            for feature, number in evaluated.psi:
                families["feature_psi"].add_metric([*labels, feature], number)

    # -- the audit trail and the champions, refreshed in the background --------------------

    @property
    def refreshed(self) -> Refreshed | None:
        """What the last refresh established (None before the first)."""
        with self._lock:
            return self._refreshed

    def errors(self) -> dict[str, int]:
        """Failures counted so far, by part."""
        with self._lock:
            return dict(self._errors)

    def refresh(self) -> Refreshed:
        """Verify the audit trail and each pipeline's champion now; cache and return the result."""
        audit = self._refresh_audit()
        champions = {name: self._refresh_champion(name) for name in self.pipeline_names}
        result = Refreshed(audit, champions, time.time())
        with self._lock:
            self._refreshed = result
        return result

    def _refresh_audit(self) -> AuditStatus:
        from secure_pipeline.storage.audit import AuditLog

        try:
            # The audit records the latest Dagster events name: a trail rewritten from one of
            # them on, or cut before it, fails even where its checkpoints were rewritten too.
            try:
                anchors = self._read_dagster(with_anchors=True).anchors
            except Exception:  # noqa: BLE001 - the trail is still verified, without anchors
                self._failed("dagster", "reading audit anchors from the Dagster instance failed")
                anchors = {}
            status = AuditLog(self.store_factory()).verify(anchors, self.trust_factory())
        except IntegrityError as exc:
            self._failed("audit", f"the audit trail does not verify: {exc}", trace=False)
            return AuditStatus(False, None, str(exc))
        except Exception as exc:  # noqa: BLE001 - unverifiable is shown as not valid
            self._failed("audit", "verifying the audit trail failed")
            return AuditStatus(False, None, f"{type(exc).__name__}: {exc}")
        return AuditStatus(True, status.count, f"{status.count} records, head {status.head_hash}")

    def _refresh_champion(self, pipeline: str) -> ChampionStatus:
        try:
            return self._champion(pipeline)
        except Exception as exc:  # noqa: BLE001 - unverifiable is shown as not valid
            self._failed("champion", f"verifying the champion of {pipeline} failed")
            return ChampionStatus(
                pipeline, evidence_valid=False, problems=(f"{type(exc).__name__}: {exc}",)
            )

    def _champion(self, pipeline: str) -> ChampionStatus:
        from secure_pipeline.registry.decisions import champion, decisions
        from secure_pipeline.registry.evidence import verify_reference
        from secure_pipeline.registry.mlflow_registry import alias_version

        spec = self.pipelines.get(pipeline)
        if spec is None:
            raise ConfigurationError(
                f"the exporter has no spec for pipeline {pipeline!r} (its champion is verified "
                "against today's policy): pass the code location's pipelines "
                "(compose.pipelines_of()) as pipelines="
            )
        store, trust = self.store_factory(), self.trust_factory()
        name = spec.names.model_name
        history, rejected = decisions(store, trust, name)
        current = champion(history)
        problems: list[str] = []
        if rejected:
            # Decisions are create-only and signed: one that does not verify was forged or
            # edited, and an edited latest decision would otherwise hand the crown back to an
            # older one without a word.
            problems.append(
                f"{rejected} stored promotion decision(s) for {name} do not verify (forged or "
                "edited in the store)"
            )
        if current is None:
            if problems:
                logger.warning("champion of %s: %s", pipeline, "; ".join(problems))
            return ChampionStatus(
                pipeline, evidence_valid=False if problems else None, problems=tuple(problems)
            )
        reference = f"models:/{name}/{current.version}"
        with verify_reference(
            reference, pipeline=spec, trust=trust, store=store, require="promoted"
        ) as evidence:
            problems.extend(evidence.problems)
            verified_sha = evidence.verification.model_sha256
        if verified_sha != current.model_sha256:
            problems.append(
                f"{reference} is model {str(verified_sha)[:12]}, the champion decision names "
                f"{str(current.model_sha256)[:12]}"
            )
        alias = alias_version(name, CHAMPION)
        if alias != current.version:
            # Serving follows the alias and refuses a version it disagrees with the decision on.
            problems.append(
                f"the registry alias {name}@{CHAMPION} points to {alias or 'nothing'}, the signed "
                f"champion decision to version {current.version}: it was moved outside the gate"
            )
        if problems:
            logger.warning("champion of %s: %s", pipeline, "; ".join(problems))
        return ChampionStatus(
            pipeline,
            version=current.version,
            model_sha256=current.model_sha256,
            promoted_at=_timestamp(current.time),
            evidence_valid=not problems,
            problems=tuple(problems),
        )

    def _add_refreshed(self, families: dict[str, Any], refreshed: Refreshed | None) -> None:
        if refreshed is None:
            return
        families["monitoring_refresh_timestamp_seconds"].add_metric([], refreshed.at)
        families["audit_chain_valid"].add_metric([], 1.0 if refreshed.audit.valid else 0.0)
        if refreshed.audit.records is not None:
            families["audit_records"].add_metric([], float(refreshed.audit.records))
        now = time.time()
        for pipeline, status in sorted(refreshed.champions.items()):
            if status.evidence_valid is not None:
                families["champion_evidence_valid"].add_metric(
                    [pipeline], 1.0 if status.evidence_valid else 0.0
                )
            if status.version is None:
                continue
            version = _number_of_version(status.version)
            if version is not None:
                families["champion_version"].add_metric([pipeline], version)
            families["champion_info"].add_metric(
                [pipeline, status.version, status.model_sha256 or ""], 1.0
            )
            if status.promoted_at is not None:
                families["champion_promoted_timestamp_seconds"].add_metric(
                    [pipeline], status.promoted_at
                )
                families["champion_age_seconds"].add_metric(
                    [pipeline], max(0.0, now - status.promoted_at)
                )

    def _failed(self, part: str, message: str, *, trace: bool = True) -> None:
        with self._lock:
            self._errors[part] += 1
        if trace:
            logger.exception("exporter part %s: %s", part, message)
        else:
            logger.error("exporter part %s: %s", part, message)

    # -- the background thread -------------------------------------------------------------

    def start(self, *, refresh_now: bool = False) -> None:
        """Start the background refresh.

        The first one runs now when ``refresh_now``, else after one period (a caller that
        refreshed synchronously does not verify twice).
        """
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._loop, args=(refresh_now,), name="pipeline-exporter-refresh", daemon=True
        )
        self._thread.start()

    def _loop(self, refresh_now: bool) -> None:
        if refresh_now:
            self.refresh()
        while not self._stop.wait(self.refresh_seconds):
            self.refresh()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the background refresh (waits for a refresh in progress)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


def _number_of_version(version: str) -> float | None:
    """A registry version as a number (MLflow versions are integers)."""
    try:
        number = float(version)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def registry_of(collector: PipelineCollector) -> CollectorRegistry:
    """A registry holding the collector alone (no process metrics of the default registry)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


# -- serving -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExporterTls:
    """The exporter's server certificate and key (PEM)."""

    cert: Path
    key: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "cert", Path(self.cert))
        object.__setattr__(self, "key", Path(self.key))


def exporter_ssl_context(tls: ExporterTls) -> ssl.SSLContext:
    """The server context: TLS 1.3 minimum, the given certificate.

    Raises:
        ConfigurationError: When a file is missing or the pair does not load.
    """
    missing = [f"{n} {p}" for n, p in (("cert", tls.cert), ("key", tls.key)) if not p.is_file()]
    if missing:
        raise ConfigurationError(
            "the exporter's TLS files are not readable files: " + ", ".join(missing)
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        context.load_cert_chain(tls.cert, tls.key)
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigurationError(
            f"the exporter's certificate {tls.cert} and key {tls.key} do not load as a PEM pair "
            f"({type(exc).__name__}): give a server certificate and its private key"
        ) from None
    return context


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Handler(WSGIRequestHandler):
    """Quiet request handler; a TLS connection shakes hands here, in its own thread."""

    timeout = REQUEST_TIMEOUT_SECONDS

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(self.timeout)
            self.request.do_handshake()
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base signature
        logger.debug("%s " + format, self.address_string(), *args)


class _Server(ThreadingMixIn, WSGIServer):
    """A threading WSGI server; TLS sockets are wrapped without shaking hands on accept."""

    daemon_threads = True
    ssl_context: ssl.SSLContext | None = None

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = self.socket.accept()
        if self.ssl_context is not None:
            connection = self.ssl_context.wrap_socket(
                connection, server_side=True, do_handshake_on_connect=False
            )
        return connection, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that fails the handshake or times out is its own problem, not the server's.
        logger.debug("request from %s failed", client_address, exc_info=True)


class _Server6(_Server):
    address_family = socket.AF_INET6


@dataclass
class MetricsServer:
    """A running exporter endpoint.

    Attributes:
        host: The address it listens on.
        port: Its port (the one chosen when 0 was asked for).
        tls: Whether it serves TLS.
    """

    host: str
    port: int
    tls: bool
    _server: _Server
    _thread: threading.Thread

    @property
    def url(self) -> str:
        """The ``/metrics`` URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/metrics"

    def wait(self) -> None:
        """Block until the server stops."""
        self._thread.join()

    def close(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> "MetricsServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _only_metrics(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    """Serve ``/metrics`` and nothing else."""

    def routed(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") in ("/metrics", "/metrics/"):
            return app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: the exporter serves /metrics\n"]

    return routed


def serve_metrics(
    collector: PipelineCollector,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    tls: ExporterTls | None = None,
) -> MetricsServer:
    """Serve ``collector`` on ``/metrics`` in a background thread.

    Args:
        collector: The collector (registered alone in a registry of its own).
        host: The address to listen on; anything but loopback needs ``tls``.
        port: The port (0: any free one).
        tls: Certificate and key for HTTPS (TLS 1.3 minimum).

    Returns:
        The running server; `MetricsServer.close` stops it.

    Raises:
        ConfigurationError: When a non-loopback host is asked for without TLS, or the TLS
            files do not load.
    """
    if tls is None and not is_loopback(host):
        raise ConfigurationError(
            f"the exporter would serve plain HTTP on {host}, which is not a loopback address: "
            "give --tls-cert and --tls-key (TLS 1.3), or listen on 127.0.0.1"
        )
    context = exporter_ssl_context(tls) if tls is not None else None
    server_class = _Server6 if ":" in host else _Server
    app = _only_metrics(make_wsgi_app(registry_of(collector)))
    server = make_server(host, port, app, server_class, handler_class=_Handler)
    server.ssl_context = context
    thread = threading.Thread(
        target=server.serve_forever, name="pipeline-exporter-http", daemon=True
    )
    thread.start()
    return MetricsServer(host, int(server.server_address[1]), context is not None, server, thread)


@contextlib.contextmanager
def serving(
    collector: PipelineCollector,
    host: str = "127.0.0.1",
    port: int = 0,
    tls: ExporterTls | None = None,
) -> Iterator[MetricsServer]:
    """`serve_metrics` as a context manager (stopped on exit)."""
    server = serve_metrics(collector, host, port, tls)
    try:
        yield server
    finally:
        server.close()


__all__ = [
    "AuditStatus",
    "ChampionStatus",
    "ExporterTls",
    "MetricsServer",
    "PipelineCollector",
    "Refreshed",
    "metric_names",
    "psi_by_feature",
    "registry_of",
    "serve_metrics",
    "serving",
]
