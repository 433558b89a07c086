"""Builders for what the Dagster UI shows: tables, lists, column schemas, links, freshness.

* `declared_table_schema` / `table_column`: ``dagster/column_schema`` values, each column with
  its description, its role (a ``role`` tag, and first in its constraints), its range
  (``min..max``) and its allowed values (shortened), so the UI's column view says what each
  column is for and what it may hold.
* `link`: a ``MetadataValue.url`` for a web address, the plain text otherwise (a local SQLite
  tracking store has no page to link to).
* `ingest_freshness_policy`: a freshness policy from the spec's ingest schedule.
* `daily_partitions` / `partition_of`: the daily partitions of a partitioned source, and the
  partition a step works on.
* `HEADLINE_METRICS`: the number each check's UI plot and the metrics exporter follow.
"""

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import dagster as dg

from secure_pipeline.errors import ConfigurationError
from secure_pipeline.names import (
    EXPECTATIONS_MET,
    FAIRNESS,
    FEATURE_DRIFT,
    MEMBERSHIP,
    ONNX_EQUIVALENT,
    PERFORMANCE,
    POISONING_SCREEN,
    PROVENANCE_COMPLETE,
    REJECT_RATE,
    ROBUSTNESS,
    SCHEMA_CONFORMS,
    SIGNATURE_VERIFIES,
)
from secure_pipeline.spec import RESERVED_SPLIT_COLUMN

if TYPE_CHECKING:
    from secure_pipeline.spec import PipelineSpec

COLUMN_SCHEMA = "dagster/column_schema"
ROLE_TAG = "role"
# Allowed values shown per column: enough to recognise the column, short enough for the UI.
_SHOWN_VALUES = 8
_SHOWN_CHARACTERS = 160

# The float (or int) each check reports as its headline, for the UI's plot of a check over
# time and for the metrics exporter's per-check gauge.
HEADLINE_METRICS: Mapping[str, str] = {
    PROVENANCE_COMPLETE: "problems_found",
    SCHEMA_CONFORMS: "reject_rate",
    REJECT_RATE: "reject_rate",
    EXPECTATIONS_MET: "success_rate",
    FEATURE_DRIFT: "max_psi",
    POISONING_SCREEN: "suspected_share",
    PERFORMANCE: "roc_auc",
    ROBUSTNESS: "accuracy_drop",
    MEMBERSHIP: "attack_auc",
    FAIRNESS: "max_equalized_odds_difference",
    ONNX_EQUIVALENT: "max_abs_diff",
    SIGNATURE_VERIFIES: "problems_found",
}

# What each role means for the column, shown with it in the Dagster UI.
_ROLE_NOTES = {
    "identifier": "identifier: kept for joins and erasure, never a model input",
    "personal": "personal: checked at entry, then dropped (never in validated_*)",
    "ignore": "ignore: presence checked, values never read",
}


def table(rows: Iterable[Mapping[str, Any]], types: Mapping[str, str]) -> dg.TableMetadataValue:
    """A metadata table with the given column types (``string``, ``int``, ``float``, ``bool``)."""
    return dg.MetadataValue.table(
        records=[dg.TableRecord(dict(row)) for row in rows],
        schema=dg.TableSchema(columns=[dg.TableColumn(n, t) for n, t in types.items()]),
    )


def bullets(items: Iterable[str]) -> dg.MarkdownMetadataValue:
    """A Markdown bullet list, or "none"."""
    return dg.MetadataValue.md("\n".join(f"- {item}" for item in items) or "none")


def value_range(minimum: float | None, maximum: float | None) -> str | None:
    """``"range min..max"`` (an open side left empty), or None without either bound."""
    if minimum is None and maximum is None:
        return None
    low = "" if minimum is None else f"{minimum:g}"
    high = "" if maximum is None else f"{maximum:g}"
    return f"range {low}..{high}"


def shortened_values(values: Sequence[str]) -> str:
    """``"values: a, b, c, … (+n more)"``: the first few allowed values, bounded in length."""
    shown: list[str] = []
    length = 0
    for value in values[:_SHOWN_VALUES]:
        length += len(value) + 2
        if shown and length > _SHOWN_CHARACTERS:
            break
        shown.append(value)
    rest = len(values) - len(shown)
    return "values: " + ", ".join(shown) + (f", … (+{rest} more)" if rest else "")


def table_column(
    name: str,
    dtype: str,
    *,
    role: str,
    description: str | None = None,
    nullable: bool = False,
    unique: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
    allowed: Sequence[str] | None = None,
    notes: Sequence[str] = (),
) -> dg.TableColumn:
    """One ``dagster/column_schema`` column: role first in its constraints, then range, values.

    Args:
        name: The column.
        dtype: Its type as the table holds it.
        role: What it is for (feature, sensitive, label, identifier, personal, ignore, split).
        description: What it means.
        nullable: Whether values may be missing.
        unique: Whether every value is distinct.
        minimum: Smallest allowed value.
        maximum: Largest allowed value.
        allowed: The allowed values, in order (shortened in the constraints).
        notes: Further rules, one sentence each.
    """
    other = [f"role: {role}"]
    bounds = value_range(minimum, maximum)
    if bounds is not None:
        other.append(bounds)
    if allowed is not None:
        other.append(shortened_values(list(allowed)))
    other.extend(notes)
    return dg.TableColumn(
        name,
        dtype,
        description=description or None,
        constraints=dg.TableColumnConstraints(nullable=nullable, unique=unique, other=other),
        tags={ROLE_TAG: role},
    )


def declared_table_schema(pipeline: "PipelineSpec", *, validated: bool = False) -> dg.TableSchema:
    """The pipeline's declared schema as Dagster table metadata, with each column's role.

    Args:
        pipeline: The spec.
        validated: Only the columns ``validated_*`` holds, typed as it holds them
            (pseudonymised columns as hex strings), then ``split``; default: every column of
            the raw files.

    Returns:
        The table schema; each column carries a ``role`` tag and its rules as constraints.
    """
    schema = pipeline.schema
    columns = []
    for column in schema.kept_columns if validated else schema.columns:
        notes = []
        if column.allowed is not None:
            notes.append(f"one of {len(column.allowed)} values")
        if column.earliest is not None:
            notes.append(f"not before {column.earliest}")
        if column.latest is not None:
            notes.append(f"not after {column.latest}")
        if column.dtype in ("date", "datetime"):
            notes.append(f"format {column.format}" if column.format else "ISO 8601")
        if column.min_length is not None:
            notes.append(f"at least {column.min_length} characters")
        if column.max_length is not None:
            notes.append(f"at most {column.max_length} characters")
        if column.pattern is not None:
            notes.append(f"matches {column.pattern}")
        if column.source is not None or column.occurrence != 1:
            notes.append(f"header {column.header_name!r}, occurrence {column.occurrence}")
        if column.name in pipeline.sensitive_features:
            notes.append("sensitive")
        role = column.role
        if column.name == schema.label:
            role = "label"  # either spelling of the label: the role or the schema's field
        elif role == "feature" and column.name in pipeline.sensitive_features:
            role = "sensitive"
        dtype = column.dtype
        allowed = column.allowed
        if column.role == "personal" and column.pseudonymise:
            notes.append("personal: kept only as a keyed pseudonym (HMAC-SHA256 hex)")
            dtype = "string" if validated else dtype
        elif role in _ROLE_NOTES:
            notes.append(_ROLE_NOTES[role])
        if column.role in ("personal", "identifier"):
            # The values that identify people are not shown, even as an allowed list.
            allowed = None
        columns.append(
            table_column(
                column.name,
                dtype,
                role=role,
                description=column.description,
                nullable=column.nullable,
                minimum=column.minimum,
                maximum=column.maximum,
                allowed=allowed,
                notes=notes,
            )
        )
    if validated:
        columns.append(split_column())
    return dg.TableSchema(columns=columns)


def split_column() -> dg.TableColumn:
    """The reserved ``split`` column: which source file member a row came from."""
    return table_column(
        RESERVED_SPLIT_COLUMN,
        "string",
        role="split",
        description="The source file member the row came from.",
    )


def link(url: str | None, text: str) -> dg.UrlMetadataValue | str:
    """A clickable link for an http(s) address; ``text`` when there is no page to link to."""
    if url and url.startswith(("https://", "http://")):
        return dg.MetadataValue.url(url)
    return text


def cron_period(cron: str, timezone: str = "UTC") -> timedelta:
    """The longest gap between two ticks of a cron schedule: its period.

    A weekday schedule's period is the weekend's three days, not one, so that a freshness
    window of two periods never fails on a Monday morning. Ticks are sampled from a fixed
    date, so the definitions (and their snapshot) do not change with the day they load.

    Raises:
        ConfigurationError: When the expression is not a cron schedule Dagster can run.
    """
    # Dagster's own cron iterator (the one its schedules tick with; private, no public form):
    # the period is the one the ingest schedule really runs at, in its time zone.
    from dagster._utils.schedules import cron_string_iterator, is_valid_cron_string

    if not is_valid_cron_string(cron):
        raise ConfigurationError(
            f"ingest_cron {cron!r} is not a cron schedule Dagster can run; expected five "
            "fields such as '0 2 * * *'"
        )
    start = datetime(2024, 1, 1, tzinfo=UTC).timestamp()
    ticks = cron_string_iterator(start, cron, timezone)
    previous = next(ticks)
    longest = timedelta(0)
    # A year of ticks covers weekly, monthly and seasonal (time zone) gaps; 1,000 at most.
    for _ in range(1000):
        tick = next(ticks)
        longest = max(longest, tick - previous)
        if tick.timestamp() - start > 366 * 86400:
            break
        previous = tick
    return longest


def ingest_freshness_policy(pipeline: "PipelineSpec") -> dg.FreshnessPolicy | None:
    """Fail when the ingested data is two ingest periods old, warn after one.

    None when the spec schedules no ingestion (no ``ingest_cron``): nothing says how fresh
    the data should be.
    """
    spec = pipeline.orchestration
    if not spec.ingest_cron:
        return None
    period = cron_period(spec.ingest_cron, spec.timezone)
    return dg.FreshnessPolicy.time_window(fail_window=2 * period, warn_window=period)


def daily_partitions(pipeline: "PipelineSpec") -> dg.DailyPartitionsDefinition | None:
    """The daily partitions of raw, validated and features; None when the source has none."""
    partitions = pipeline.source.partitions
    if partitions is None:
        return None
    return dg.DailyPartitionsDefinition(start_date=partitions.start, end_date=partitions.end)


def partition_check_options(pipeline: "PipelineSpec") -> dict[str, Any]:
    """The ``asset_check`` options that judge each partition on its own (none: unpartitioned)."""
    partitions = daily_partitions(pipeline)
    return {} if partitions is None else {"partitions_def": partitions}


def partition_of(context: Any) -> str | None:
    """The partition an asset or check step works on; None for an unpartitioned one."""
    return context.partition_key if context.has_partition_key else None
