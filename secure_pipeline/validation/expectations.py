"""Statistical expectations with Great Expectations 1.x, generated from the spec.

pandera judges rows; these expectations judge the batch as a whole: how many rows arrived, how
many values are missing, whether means and ranges look like this dataset, whether every label
class is present. They run on the validated (post-quarantine) rows in an ephemeral GX context:
nothing is written to disk and nothing is sent anywhere; the full result document is returned
for the caller to store as a snapshot.

A batch larger than one chunk is judged by `stream_expectations` instead, a row group at a
time, so memory stays bounded by the chunk: every expectation in the suite is a statistic that
adds up exactly over row groups (row and null counts, extremes, the sum behind a mean, the set
of labels), judged against the same bounds with the rules Great Expectations applies. Both give
the same outcomes on the same rows (``test_expectations`` proves it on passing and failing
batches), but for the mean of a float column, equal to the last bits only (the sums are added
in another order; integer sums are exact); the streamed result document has the same
``results`` layout, marked by its ``meta.engine``.

great_expectations takes seconds to import, so it is imported only inside `run_expectations`.
"""

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from secure_pipeline.spec import DatasetSchema

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

# What `ExpectationsReport.document["meta"]["engine"]` says judged the batch.
GX_ENGINE = "great_expectations"
STREAMED_ENGINE = "streamed_row_groups"


@dataclass(frozen=True)
class ExpectationOutcome:
    """One expectation's verdict.

    Attributes:
        expectation: GX expectation type.
        column: Column it is about (None for table-level ones).
        success: Whether it held.
        observed: The observed value, as text.
        expected: The expected range or set, as text.
    """

    expectation: str
    column: str | None
    success: bool
    observed: str
    expected: str


@dataclass
class ExpectationsReport:
    """The suite's verdict and the full GX result document.

    Attributes:
        success: Whether every expectation held.
        outcomes: One entry per expectation.
        document: The GX validation result as JSON-compatible data.
    """

    success: bool
    outcomes: list[ExpectationOutcome] = field(default_factory=list)
    document: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> list[ExpectationOutcome]:
        """The expectations that did not hold."""
        return [o for o in self.outcomes if not o.success]


@dataclass(frozen=True)
class _Rule:
    """One expectation of the suite: its GX class name and keyword arguments."""

    kind: str
    kwargs: dict[str, Any]

    @property
    def type(self) -> str:
        """GX's snake-case expectation type (``ExpectTableRow...`` -> ``expect_table_row...``)."""
        return re.sub(r"(?<!^)(?=[A-Z])", "_", self.kind).lower()

    @property
    def column(self) -> str | None:
        """The column it is about (None for table-level ones)."""
        return self.kwargs.get("column")


def _rules(schema: DatasetSchema) -> list[_Rule]:
    """The suite as data, shared by the GX objects and the streamed evaluation."""
    rules = [_Rule("ExpectTableRowCountToBeBetween",
                   {"min_value": schema.min_rows, "max_value": schema.max_rows})]  # fmt: skip
    for column in schema.kept_columns:
        name = column.name
        if column.max_null_fraction is not None:
            mostly = 1.0 - column.max_null_fraction
            rules.append(_Rule("ExpectColumnValuesToNotBeNull", {"column": name, "mostly": mostly}))
        if column.mean_between is not None and column.role != "personal":
            # floats, as GX holds them (its result document shows them so)
            bounds = {"min_value": _float(column.minimum), "max_value": _float(column.maximum)}
            low, high = column.mean_between
            rules += [
                _Rule("ExpectColumnMinToBeBetween", {"column": name, **bounds}),
                _Rule("ExpectColumnMaxToBeBetween", {"column": name, **bounds}),
                _Rule("ExpectColumnMeanToBeBetween",
                      {"column": name, "min_value": float(low), "max_value": float(high)}),
            ]  # fmt: skip
        if name == schema.label and column.allowed is not None:
            # every class must be present, or a model cannot learn (or be judged on) it
            rules.append(_Rule("ExpectColumnDistinctValuesToEqualSet",
                               {"column": name, "value_set": list(column.allowed)}))  # fmt: skip
    # An unset bound is no argument at all, as GX records it (and an unbounded side to both).
    return [_Rule(r.kind, {k: v for k, v in r.kwargs.items() if v is not None}) for r in rules]


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)


def expectation_suite(schema: DatasetSchema) -> list[Any]:
    """The GX expectations a schema implies: what the batch as a whole must look like.

    Per-value rules (types, ranges, allowed categories, date bounds, string lengths and
    patterns) are pandera's, row by row; these are about the batch: its size, its share of
    missing values, the distribution of the columns the schema describes with a mean (their
    observed range and mean), and the label set. Only the columns ``validated_*`` holds are
    judged: ignored and personal ones were dropped at entry, and a pseudonymised one is a hash
    whose share of missing values is all that can be expected of it. Dates get no range
    expectation here: their bounds are row rules, already enforced.

    Args:
        schema: The declared schema.

    Returns:
        GX expectation objects, table-level first.
    """
    import great_expectations.expectations as gxe

    return [getattr(gxe, rule.kind)(**rule.kwargs) for rule in _rules(schema)]


def _speed_up_gx() -> None:
    """Remove two whole-frame passes GX makes that cannot change any verdict.

    * ``HASH_THRESHOLD``: GX fingerprints every frame under 1 GB with an md5 of all its bytes,
      only to label the batch; the batch's identity here is the snapshot's SHA-256.
    * ``does_ndarray_contain_decimal_dtype`` loops in Python over every value of a column
      (twice per mean expectation) looking for ``decimal.Decimal`` objects; a numeric numpy
      array cannot hold any, so only object arrays need the loop.

    Both are private GX internals: ``test_expectations`` fails if either disappears in an
    upgrade, rather than this silently becoming slow (or wrong).
    """
    import great_expectations.execution_engine.pandas_execution_engine as engine
    import great_expectations.util as gx_util

    engine.HASH_THRESHOLD = 0
    original = gx_util.does_ndarray_contain_decimal_dtype
    if getattr(original, "_secure_pipeline", False):
        return

    def contains_decimal(data: Any) -> bool:  # GX calls it with data=...
        return data.dtype.kind == "O" and original(data=data)

    contains_decimal._secure_pipeline = True  # type: ignore[attr-defined]
    gx_util.does_ndarray_contain_decimal_dtype = contains_decimal


def _text(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 120 else text[:117] + "..."


def run_expectations(frame: "pd.DataFrame", schema: DatasetSchema) -> ExpectationsReport:
    """Run the schema's expectation suite on a validated frame.

    Args:
        frame: The validated rows.
        schema: The declared schema.

    Returns:
        The verdict with the full result document.
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    _speed_up_gx()
    context = gx.get_context(
        mode="ephemeral",
        project_config=DataContextConfig(
            # no data-docs site in a temp directory, no progress bars on stderr, no analytics
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
            progress_bars=ProgressBarsConfig(globally=False),
            analytics_enabled=False,
        ),
    )
    source = context.data_sources.add_pandas(name="secure_pipeline")
    asset = source.add_dataframe_asset(name=schema.name)
    batch = asset.add_batch_definition_whole_dataframe("batch").get_batch(
        batch_parameters={"dataframe": frame}
    )
    suite = context.suites.add(gx.ExpectationSuite(name=f"{schema.name}_expectations"))
    for expectation in expectation_suite(schema):
        suite.add_expectation(expectation)
    # BASIC gives observed values and unexpected counts; SUMMARY's extra partial index lists
    # cost about as much again on a million rows and add nothing the report uses.
    result = batch.validate(suite, result_format="BASIC")
    document = result.to_json_dict()
    document.setdefault("meta", {})["engine"] = GX_ENGINE
    return ExpectationsReport(bool(document["success"]), _outcomes(document), document)


def _outcomes(document: dict[str, Any]) -> list[ExpectationOutcome]:
    """One outcome per result of a GX (or streamed) result document, observed values as text."""
    outcomes = []
    for item in document["results"]:
        config = item["expectation_config"]
        kwargs = {k: v for k, v in config["kwargs"].items() if k not in ("batch_id", "column")}
        outcomes.append(
            ExpectationOutcome(
                expectation=config["type"],
                column=config["kwargs"].get("column"),
                success=bool(item["success"]),
                observed=_text(_observed(item.get("result", {}), item["success"])),
                expected=_text(kwargs),
            )
        )
    return outcomes


def _observed(result: dict[str, Any], success: bool) -> Any:
    """What a result observed, for a reader: a value, a share missing, or the classes at fault."""
    observed = result.get("observed_value")
    if observed is not None:
        return observed
    if "missing_count" in result and "partial_missing_list" in result:
        # a distinct-values set: the classes absent from the batch, or present but not expected
        parts = []
        if result.get("partial_missing_list"):
            parts.append(f"missing {result['partial_missing_list']}")
        if result.get("partial_unexpected_list"):
            parts.append(f"unexpected {result['partial_unexpected_list']}")
        return "; ".join(parts) or "as expected"
    if result.get("unexpected_percent") is not None:
        return (f"{result['unexpected_percent']:.2f}% unexpected ({result['unexpected_count']:,} "
                f"of {result['element_count']:,} rows)")  # fmt: skip
    return "as expected" if success else "not as expected"


def stream_expectations(tables: "Iterable[pa.Table]", schema: DatasetSchema) -> ExpectationsReport:
    """Judge the schema's suite on a batch read a table (row group) at a time.

    Memory holds one table and the running statistics. Each expectation is judged as Great
    Expectations judges it: bounds inclusive and a missing bound unbounded; a column's minimum,
    maximum and mean over its non-null values (none: the expectation fails); ``mostly`` against
    the share of rows not null (an empty batch holds vacuously); the distinct non-null labels
    equal to the set. A float NaN counts as null, as pandas counts it. Integer sums are exact
    (no int64 wrap-around); a float column's mean equals the whole-table one to the last bits.

    Args:
        tables: The batch's row groups, each with (at least) the suite's columns.
        schema: The declared schema.

    Returns:
        The verdict, with a result document in GX's ``results`` layout (``meta.engine`` is
        `STREAMED_ENGINE`).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    rules = _rules(schema)
    nulls: dict[str, int] = {}
    extremes: dict[str, _Extremes] = {}
    distinct: dict[str, set[Any]] = {}
    for rule in rules:
        if rule.kind == "ExpectColumnValuesToNotBeNull":
            nulls[rule.column] = 0
        elif rule.kind == "ExpectColumnMeanToBeBetween":
            extremes[rule.column] = _Extremes()
        elif rule.kind == "ExpectColumnDistinctValuesToEqualSet":
            distinct[rule.column] = set()
    rows = groups = 0
    for table in tables:
        groups += 1
        rows += table.num_rows
        for name in {*nulls, *extremes, *distinct}:
            values = table.column(name)
            if pa.types.is_floating(values.type):
                values = pc.if_else(pc.is_nan(values), None, values)
            if name in nulls:
                nulls[name] += values.null_count
            if name in extremes:
                extremes[name].add(values)
            if name in distinct:
                distinct[name].update(v for v in pc.unique(values).to_pylist() if v is not None)
    results = []
    for rule in rules:
        low, high = rule.kwargs.get("min_value"), rule.kwargs.get("max_value")
        if rule.kind == "ExpectTableRowCountToBeBetween":
            result: dict[str, Any] = {"observed_value": rows}
            success = _between(rows, low, high)
        elif rule.kind == "ExpectColumnValuesToNotBeNull":
            missing = nulls[rule.column]
            success = rows == 0 or (rows - missing) / rows >= rule.kwargs["mostly"]
            result = {"element_count": rows, "unexpected_count": missing,
                      "unexpected_percent": missing / rows * 100 if rows else None}  # fmt: skip
        elif rule.kind == "ExpectColumnDistinctValuesToEqualSet":
            expected = set(rule.kwargs["value_set"])
            unexpected = sorted(map(str, distinct[rule.column] - expected))
            missing_values = sorted(map(str, expected - distinct[rule.column]))
            success = not unexpected and not missing_values
            result = {"observed_value": None, "unexpected_count": len(unexpected),
                      "missing_count": len(missing_values), "partial_unexpected_list": unexpected,
                      "partial_missing_list": missing_values}  # fmt: skip
        else:
            seen = extremes[rule.column]
            observed = {"ExpectColumnMinToBeBetween": seen.smallest,
                        "ExpectColumnMaxToBeBetween": seen.largest,
                        "ExpectColumnMeanToBeBetween": seen.mean,
                        }[rule.kind]  # fmt: skip
            result = {"observed_value": observed}
            success = observed is not None and _between(observed, low, high)
        results.append({"expectation_config": {"type": rule.type, "kwargs": dict(rule.kwargs)},
                        "success": success, "result": result})  # fmt: skip
    passed = sum(item["success"] for item in results)
    document = {
        "success": passed == len(results),
        "results": results,
        "suite_name": f"{schema.name}_expectations",
        "statistics": {
            "evaluated_expectations": len(results),
            "successful_expectations": passed,
            "unsuccessful_expectations": len(results) - passed,
            "success_percent": passed / len(results) * 100 if results else None,
        },
        "meta": {"engine": STREAMED_ENGINE, "row_groups": groups, "rows": rows},
    }
    return ExpectationsReport(document["success"], _outcomes(document), document)


@dataclass
class _Extremes:
    """A numeric column's non-null values so far: extremes, sums and count.

    Attributes:
        smallest: The minimum (None until a value is seen).
        largest: The maximum.
        integers: The exact sum of an integer column.
        floats: Each row group's float64 sum of a float column.
        count: Values seen.
    """

    smallest: Any = None
    largest: Any = None
    integers: int = 0
    floats: list[float] = field(default_factory=list)
    count: int = 0

    def add(self, values: "pa.ChunkedArray") -> None:
        """Fold in a row group's column (nulls already standing for NaN)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        count = len(values) - values.null_count
        if not count:
            return
        extremes = pc.min_max(values)
        smallest, largest = extremes["min"].as_py(), extremes["max"].as_py()
        self.smallest = smallest if self.smallest is None else min(self.smallest, smallest)
        self.largest = largest if self.largest is None else max(self.largest, largest)
        if pa.types.is_integer(values.type):
            # Exact: an int64 sum wraps silently past 9.2e18, so a row group whose values could
            # get there is summed as 38-digit decimals (its sum is below 1e38); Python ints carry
            # the sums over the row groups.
            if max(abs(smallest), abs(largest)) * count < 2**63:
                self.integers += pc.sum(values).as_py()
            else:
                self.integers += int(pc.sum(pc.cast(values, pa.decimal128(38, 0))).as_py())
        else:
            # Each row group's float64 sum, added without rounding over the row groups (`mean`):
            # equal to the whole-table mean up to the last bits (a different summation order).
            self.floats.append(pc.sum(values).as_py())
        self.count += count

    @property
    def mean(self) -> float | None:
        """The mean of the values seen (None when none was)."""
        if not self.count:
            return None
        if not self.floats:
            return self.integers / self.count  # exact integers: one rounding, in the division
        return math.fsum([*self.floats, float(self.integers)]) / self.count


def _between(value: Any, low: Any, high: Any) -> bool:
    """GX's inclusive range test: a missing bound is no bound; NaN is never in range."""
    if isinstance(value, float) and math.isnan(value):
        return False
    return (low is None or value >= low) and (high is None or value <= high)
