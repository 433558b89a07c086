"""Schema validation with pandera, and the verdict it gives a batch.

The pandera ``DataFrameModel`` is generated from the spec's `DatasetSchema` (dtypes, ranges,
allowed categories, nullability, a strict column set), so a library user's pipeline gets the
same model without writing one. Validation is lazy: every failing value is collected, then
combined with what parsing already found (rejected lines, values of the wrong type) into one
`SchemaReport`:

* **structural** problems fail the batch outright (blocking): unreadable or empty files, a
  wrong header, a column that fails in every row (a shifted or renamed column in a header-less
  file looks exactly like that);
* **row-level** failures send those rows to quarantine, with the reason for each; whether the
  batch may proceed is the reject-rate gate's decision.

Dates outside ``earliest``/``latest`` and strings outside their length or pattern rules are
row-level failures whose reason names the column and the rule. Values of personal columns are
checked like any other but never quoted as examples; `validated_rows` then keeps exactly the
schema's kept columns, pseudonymised ones as keyed hashes.
"""

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from secure_pipeline.spec import RESERVED_SPLIT_COLUMN, DatasetSchema
from secure_pipeline.validation.parsing import WITHHELD, ParsedBatch

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

_EXAMPLES = 3


_RANGE_CHECK = "in_declared_range"
_CHECKS = frozenset({_RANGE_CHECK, "not_before", "not_after", "length_within", "full_match"})


def _register_checks() -> None:
    """Register the row checks the generated models use (once per process).

    Each costs one pass over the column's values or less: a range is proven by the column's
    min and max when every value is in range (the usual case), and only a batch with failures
    needs the per-row mask that names the failing rows. Missing values pass every one of them:
    nullability is a separate check.
    """
    import pandas as pd
    from pandera import extensions

    if getattr(extensions, "_secure_pipeline_checks", set()) >= _CHECKS:
        return

    @extensions.register_check_method(statistics=["minimum", "maximum"])
    def in_declared_range(series: Any, *, minimum: float | None, maximum: float | None) -> Any:
        return _within(series, minimum, maximum)

    def instant(text: str) -> Any:
        # As parsing stores values: a bound with a UTC offset is compared in UTC.
        bound = pd.Timestamp(text)
        return bound.tz_convert("UTC").tz_localize(None) if bound.tzinfo else bound

    @extensions.register_check_method(statistics=["earliest"])
    def not_before(series: Any, *, earliest: str) -> Any:
        return _within(series, instant(earliest), None)

    @extensions.register_check_method(statistics=["latest"])
    def not_after(series: Any, *, latest: str) -> Any:
        return _within(series, None, instant(latest))

    @extensions.register_check_method(statistics=["min_length", "max_length"])
    def length_within(series: Any, *, min_length: int | None, max_length: int | None) -> Any:
        return _within(series.str.len(), min_length, max_length)

    @extensions.register_check_method(statistics=["pattern"])
    def full_match(series: Any, *, pattern: str) -> Any:
        import re

        compiled = re.compile(pattern)
        # Judged once per distinct value: codes and identifiers repeat.
        verdicts = {v: compiled.fullmatch(v) is not None for v in series.dropna().unique()}
        if all(verdicts.values()):
            return True
        return series.map(verdicts).fillna(True).astype(bool)

    extensions._secure_pipeline_checks = set(_CHECKS)  # type: ignore[attr-defined]
    assert None not in (in_declared_range, not_before, not_after, length_within, full_match)


def _within(series: Any, minimum: Any, maximum: Any) -> Any:
    """True when every present value is in [minimum, maximum], else a per-row mask."""
    low, high = series.min(), series.max()  # missing values are skipped
    if series.isna().all() or (
        (minimum is None or low >= minimum) and (maximum is None or high <= maximum)
    ):
        return True
    inside = series.notna()
    if minimum is not None:
        inside &= series >= minimum
    if maximum is not None:
        inside &= series <= maximum
    return inside | series.isna()  # nullability is a separate check


def dataframe_model(schema: DatasetSchema) -> Any:
    """Generate the pandera ``DataFrameModel`` class for a schema.

    Category columns are typed with exactly the declared categories, so the dtype check is the
    allowed-values check (values outside them were flagged while parsing); numeric ranges and
    date bounds use checks that need only min and max when the batch is clean; strings get
    their length and full-match pattern checks. ``ignore`` columns are not in the model (they
    are never read); personal ones are, as parsed.

    Args:
        schema: The declared schema.

    Returns:
        A ``pandera.pandas.DataFrameModel`` subclass named after the schema.
    """
    import pandas as pd
    import pandera.pandas as pa
    from pandera.engines import pandas_engine
    from pandera.typing import Series

    _register_checks()
    dtypes = {
        "int": pd.Int64Dtype,
        "float": float,
        "string": pd.StringDtype,
        "category": pd.CategoricalDtype,
        "bool": pd.BooleanDtype,
        "date": pandas_engine.DateTime,
        "datetime": pandas_engine.DateTime,
    }
    annotations: dict[str, Any] = {}
    fields: dict[str, Any] = {}
    for column in schema.columns:
        if column.role == "ignore":
            continue
        annotations[column.name] = Series[dtypes[column.dtype]]  # type: ignore[index]
        options: dict[str, Any] = {}
        if column.minimum is not None or column.maximum is not None:
            options[_RANGE_CHECK] = {"minimum": column.minimum, "maximum": column.maximum}
        if column.allowed is not None:
            options["dtype_kwargs"] = {"categories": list(column.allowed), "ordered": False}
        if column.dtype in ("date", "datetime"):
            options["dtype_kwargs"] = {"unit": "us"}  # as parsing.py stores them
            if column.earliest is not None:
                options["not_before"] = {"earliest": column.earliest}
            if column.latest is not None:
                options["not_after"] = {"latest": column.latest}
        if column.min_length is not None or column.max_length is not None:
            options["length_within"] = {
                "min_length": column.min_length,
                "max_length": column.max_length,
            }
        if column.pattern is not None:
            options["full_match"] = {"pattern": column.pattern}
        fields[column.name] = pa.Field(nullable=column.nullable, **options)
    annotations[RESERVED_SPLIT_COLUMN] = Series[pd.StringDtype]
    fields[RESERVED_SPLIT_COLUMN] = pa.Field()

    class Config:
        strict = True
        name = schema.name
        description = f"{schema.name} rows as declared by the pipeline spec"

    namespace = {"__annotations__": annotations, "Config": Config, **fields}
    return type(f"{schema.name.title().replace('_', '')}Model", (pa.DataFrameModel,), namespace)


@dataclass
class SchemaReport:
    """The verdict on one batch.

    Attributes:
        rows: Data lines seen (parsed rows plus lines with the wrong number of fields).
        structural: Problems that fail the whole batch.
        failures: Column to check name to the number of failing values.
        examples: Column to a few failing values, as text.
        rejected: Boolean mask over the parsed frame: rows to quarantine.
        reasons: For each rejected row of the parsed frame (by position), why.
        rejected_lines: Lines that could not be parsed, with reasons.
    """

    rows: int
    structural: list[str] = field(default_factory=list)
    failures: dict[str, dict[str, int]] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    rejected: "np.ndarray | None" = None
    reasons: dict[int, list[str]] = field(default_factory=dict)
    rejected_lines: list[Any] = field(default_factory=list)

    @property
    def rejected_rows(self) -> int:
        """Rows that go to quarantine, including unparseable lines."""
        parsed = int(self.rejected.sum()) if self.rejected is not None else 0
        return parsed + len(self.rejected_lines)

    @property
    def reject_rate(self) -> float:
        """Share of data lines rejected."""
        return self.rejected_rows / self.rows if self.rows else 1.0


def validate_batch(
    batch: ParsedBatch, schema: DatasetSchema, *, whole: bool = True
) -> SchemaReport:
    """Validate a parsed batch against the schema, collecting every failure.

    Args:
        batch: The parsed fileset.
        schema: The declared schema.
        whole: The batch is the whole fileset. A chunk of it (False) is not judged for
            failing a check in every row, nor for having no rows: those are decided over all
            chunks (`all_rows_failing`).

    Returns:
        The report; ``structural`` non-empty means the batch must not be used.
    """
    import numpy as np
    import pandera.pandas as pa

    report = SchemaReport(rows=batch.total_lines, rejected_lines=list(batch.rejected_lines))
    report.structural.extend(batch.problems)
    frame = batch.frame
    if report.structural or frame.empty:
        if not report.structural and whole:
            report.structural.append("the batch has no rows")
        if not report.structural:
            report.rejected = np.zeros(0, dtype=bool)
        return report
    rejected = np.zeros(len(frame), dtype=bool)
    reasons: dict[int, list[str]] = defaultdict(list)
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    expected = {c.name: c.dtype for c in schema.columns}
    formats = {c.name: _date_format(c) for c in schema.columns if c.dtype in ("date", "datetime")}
    for name, mask in batch.type_failures.items():
        category = expected[name] == "category"
        check = "isin(allowed values)" if category else f"dtype({expected[name]})"
        reason = (
            f"{name}: not an allowed value" if category else f"{name}: not a valid {expected[name]}"
        )
        if name in formats:
            reason += f" ({formats[name]})"
        counts[name][check] = int(mask.sum())
        report.examples[name] = batch.type_examples.get(name, [])[:_EXAMPLES]
        rejected |= mask
        for position in np.flatnonzero(mask):
            reasons[int(position)].append(reason)
    try:
        # inplace: the frame is ours and validation only reads it; a copy would cost time
        dataframe_model(schema).validate(frame, lazy=True, inplace=True)
    except pa.errors.SchemaErrors as errors:
        personal = {c.name for c in schema.columns if c.role in ("personal", "identifier")}
        _collect(errors.failure_cases, batch, report, rejected, reasons, counts, personal)
    if whole:
        report.structural.extend(all_rows_failing(counts, len(frame), schema))
    report.failures = {k: dict(v) for k, v in counts.items()}
    report.rejected = rejected
    report.reasons = dict(reasons)
    return report


def all_rows_failing(
    counts: Mapping[str, Mapping[str, int]], rows: int, schema: DatasetSchema
) -> list[str]:
    """The structural problem of each column that fails one check in every one of ``rows``."""
    expected = {c.name: c.dtype for c in schema.columns}
    return [
        f"column {name!r} fails {check} in all {count} rows: expected "
        f"{expected.get(name, '?')} values as declared; the column is probably shifted, "
        "renamed or of another type (schema drift)"
        for name, checks in counts.items()
        for check, count in checks.items()
        if count == rows and rows > 1
    ]


def _collect(
    cases: "pd.DataFrame",
    batch: ParsedBatch,
    report: SchemaReport,
    rejected: "np.ndarray",
    reasons: dict[int, list[str]],
    counts: dict[str, dict[str, int]],
    personal: set[str],
) -> None:
    """Merge pandera's failure cases into the report; personal values are never quoted."""
    positions = {label: i for i, label in enumerate(batch.frame.index)}
    for (column, check), group in cases.groupby(["column", "check"], dropna=False, sort=False):
        name = str(column) if column == column else "(table)"
        check_name = str(check)
        indexed = group[group["index"].notna()]
        if check_name == "not_nullable" and name in batch.type_failures:
            # A value of the wrong type is null after conversion; it is already reported as
            # a type failure and must not count twice.
            mistyped = batch.type_failures[name]
            indexed = indexed[[not mistyped[positions[i]] for i in indexed["index"]]]
            if indexed.empty:
                continue
        source = group if indexed.empty else indexed
        failing = source["failure_case"].head(_EXAMPLES)
        shown = [WITHHELD] if name in personal else [str(v) for v in failing]
        if indexed.empty:  # a table- or column-level failure: no row to blame
            report.structural.append(f"{name}: {check_name} failed ({', '.join(shown)})")
            continue
        counts[name][check_name] = counts[name].get(check_name, 0) + len(indexed)
        examples = report.examples.setdefault(name, [])
        for value in shown:
            if len(examples) < _EXAMPLES and not (value == WITHHELD and WITHHELD in examples):
                examples.append(value)
        for label in indexed["index"]:
            position = positions[label]
            rejected[position] = True
            reasons[position].append(f"{name}: {check_name}")


def _date_format(column: Any) -> str:
    if column.format is not None:
        return f"format {column.format}"
    return "ISO 8601, YYYY-MM-DD" if column.dtype == "date" else "ISO 8601"


def validated_rows(
    batch: ParsedBatch, report: SchemaReport, schema: DatasetSchema, key: bytes | None = None
) -> "pd.DataFrame":
    """The rows that passed, as ``validated_*`` holds them.

    Exactly the schema's kept columns (``schema.kept_names``) and ``split``: ignored and
    personal columns are dropped, pseudonymised ones are replaced by the keyed hash of their
    cleaned value (`pseudonymise`; missing values stay missing).

    Args:
        batch: The parsed batch.
        report: Its validation report (without structural problems).
        schema: The declared schema.
        key: The pipeline's pseudonymisation key; needed when a column is pseudonymised.

    Returns:
        The validated frame, index reset.

    Raises:
        ConfigurationError: When a column is pseudonymised and no key is given.
    """
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    from secure_pipeline.validation.pseudonyms import pseudonymise, pseudonymised_columns

    assert report.rejected is not None, "validated_rows needs a report without structural problems"
    keep = ~report.rejected
    frame = batch.frame.loc[keep, [*schema.kept_names, RESERVED_SPLIT_COLUMN]]
    frame = frame.reset_index(drop=True)
    hashed = pseudonymised_columns(schema, key)
    if hashed and batch.text is not None:
        rows = pa.array(np.flatnonzero(keep))
        for name in hashed:
            text = batch.text.column(name).take(rows).to_pylist()
            frame[name] = pd.Series(pseudonymise(text, key or b""), dtype="string")
    return frame
