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
"""

from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from secure_pipeline.spec import RESERVED_SPLIT_COLUMN, DatasetSchema
from secure_pipeline.validation.parsing import ParsedBatch

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

_EXAMPLES = 3


_RANGE_CHECK = "in_declared_range"


def _register_range_check() -> None:
    """Register a range check that costs one min/max pass when every value is in range.

    pandera's ``ge``/``le`` build a boolean mask over every row; for clean batches (the usual
    case) the column's min and max already prove the rule, and only a batch with failures needs
    the per-row mask that names the failing rows.
    """
    from pandera import extensions

    if _RANGE_CHECK in getattr(extensions, "_registered_range_checks", set()):
        return

    @extensions.register_check_method(statistics=["minimum", "maximum"])
    def in_declared_range(series: Any, *, minimum: float | None, maximum: float | None) -> Any:
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

    extensions._registered_range_checks = {_RANGE_CHECK}  # type: ignore[attr-defined]
    assert in_declared_range is not None


def dataframe_model(schema: DatasetSchema) -> Any:
    """Generate the pandera ``DataFrameModel`` class for a schema.

    Category columns are typed with exactly the declared categories, so the dtype check is the
    allowed-values check (values outside them were flagged while parsing); numeric ranges use a
    check that needs only min and max when the batch is clean.

    Args:
        schema: The declared schema.

    Returns:
        A ``pandera.pandas.DataFrameModel`` subclass named after the schema.
    """
    import pandas as pd
    import pandera.pandas as pa
    from pandera.typing import Series

    _register_range_check()
    dtypes = {
        "int": pd.Int64Dtype,
        "float": float,
        "string": pd.StringDtype,
        "category": pd.CategoricalDtype,
        "bool": pd.BooleanDtype,
    }
    annotations: dict[str, Any] = {}
    fields: dict[str, Any] = {}
    for column in schema.columns:
        annotations[column.name] = Series[dtypes[column.dtype]]  # type: ignore[index]
        options: dict[str, Any] = {}
        if column.minimum is not None or column.maximum is not None:
            options[_RANGE_CHECK] = {"minimum": column.minimum, "maximum": column.maximum}
        if column.allowed is not None:
            options["dtype_kwargs"] = {"categories": list(column.allowed), "ordered": False}
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


def validate_batch(batch: ParsedBatch, schema: DatasetSchema) -> SchemaReport:
    """Validate a parsed batch against the schema, collecting every failure.

    Args:
        batch: The parsed fileset.
        schema: The declared schema.

    Returns:
        The report; ``structural`` non-empty means the batch must not be used.
    """
    import numpy as np
    import pandera.pandas as pa

    report = SchemaReport(rows=batch.total_lines, rejected_lines=list(batch.rejected_lines))
    report.structural.extend(batch.problems)
    frame = batch.frame
    if report.structural or frame.empty:
        if not report.structural:
            report.structural.append("the batch has no rows")
        return report
    rejected = np.zeros(len(frame), dtype=bool)
    reasons: dict[int, list[str]] = defaultdict(list)
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    expected = {c.name: c.dtype for c in schema.columns}
    for name, mask in batch.type_failures.items():
        category = expected[name] == "category"
        check = "isin(allowed values)" if category else f"dtype({expected[name]})"
        reason = (
            f"{name}: not an allowed value" if category else f"{name}: not a valid {expected[name]}"
        )
        counts[name][check] = int(mask.sum())
        report.examples[name] = batch.type_examples.get(name, [])[:_EXAMPLES]
        rejected |= mask
        for position in np.flatnonzero(mask):
            reasons[int(position)].append(reason)
    try:
        # inplace: the frame is ours and validation only reads it; a copy would cost time
        dataframe_model(schema).validate(frame, lazy=True, inplace=True)
    except pa.errors.SchemaErrors as errors:
        _collect(errors.failure_cases, batch, report, rejected, reasons, counts)
    for name, checks in counts.items():
        for check, count in checks.items():
            if count == len(frame) and len(frame) > 1:
                report.structural.append(
                    f"column {name!r} fails {check} in all {count} rows: expected "
                    f"{expected.get(name, '?')} values as declared; the column is probably "
                    "shifted, renamed or of another type (schema drift)"
                )
    report.failures = {k: dict(v) for k, v in counts.items()}
    report.rejected = rejected
    report.reasons = dict(reasons)
    return report


def _collect(
    cases: "pd.DataFrame",
    batch: ParsedBatch,
    report: SchemaReport,
    rejected: "np.ndarray",
    reasons: dict[int, list[str]],
    counts: dict[str, dict[str, int]],
) -> None:
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
        if indexed.empty:  # a table- or column-level failure: no row to blame
            values = ", ".join(str(v) for v in group["failure_case"].head(_EXAMPLES))
            report.structural.append(f"{name}: {check_name} failed ({values})")
            continue
        counts[name][check_name] = counts[name].get(check_name, 0) + len(indexed)
        report.examples.setdefault(name, [])
        for value in indexed["failure_case"].head(_EXAMPLES):
            if len(report.examples[name]) < _EXAMPLES:
                report.examples[name].append(str(value))
        for label in indexed["index"]:
            position = positions[label]
            rejected[position] = True
            reasons[position].append(f"{name}: {check_name}")
