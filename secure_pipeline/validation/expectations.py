"""Statistical expectations with Great Expectations 1.x, generated from the spec.

pandera judges rows; these expectations judge the batch as a whole: how many rows arrived, how
many values are missing, whether means and ranges look like this dataset, whether every label
class is present. They run on the validated (post-quarantine) rows in an ephemeral GX context:
nothing is written to disk and nothing is sent anywhere; the full result document is returned
for the caller to store as a snapshot.

great_expectations takes seconds to import, so it is imported only inside `run_expectations`.
"""

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from secure_pipeline.spec import DatasetSchema

if TYPE_CHECKING:
    import pandas as pd


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

    suite: list[Any] = [
        gxe.ExpectTableRowCountToBeBetween(min_value=schema.min_rows, max_value=schema.max_rows)
    ]
    for column in schema.kept_columns:
        if column.max_null_fraction is not None:
            suite.append(
                gxe.ExpectColumnValuesToNotBeNull(
                    column=column.name, mostly=1.0 - column.max_null_fraction
                )
            )
        if column.mean_between is not None and column.role != "personal":
            bounds = {"min_value": column.minimum, "max_value": column.maximum}
            low, high = column.mean_between
            suite += [
                gxe.ExpectColumnMinToBeBetween(column=column.name, **bounds),
                gxe.ExpectColumnMaxToBeBetween(column=column.name, **bounds),
                gxe.ExpectColumnMeanToBeBetween(column=column.name, min_value=low, max_value=high),
            ]
        if column.name == schema.label and column.allowed is not None:
            # every class must be present, or a model cannot learn (or be judged on) it
            suite.append(
                gxe.ExpectColumnDistinctValuesToEqualSet(
                    column=column.name, value_set=list(column.allowed)
                )
            )
    return suite


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
    outcomes = []
    for item in document["results"]:
        config = item["expectation_config"]
        kwargs = {k: v for k, v in config["kwargs"].items() if k not in ("batch_id", "column")}
        result = item.get("result", {})
        observed = result.get("observed_value")
        if observed is None and result.get("partial_unexpected_list"):
            observed = f"unexpected values {result['partial_unexpected_list']}"
        elif observed is None and "unexpected_percent" in result:
            observed = f"{result['unexpected_percent']:.2f}% unexpected"
        elif observed is None:
            observed = "as expected" if item["success"] else "not as expected"
        outcomes.append(
            ExpectationOutcome(
                expectation=config["type"],
                column=config["kwargs"].get("column"),
                success=bool(item["success"]),
                observed=_text(observed),
                expected=_text(kwargs),
            )
        )
    return ExpectationsReport(bool(document["success"]), outcomes, document)
