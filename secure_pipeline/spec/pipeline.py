"""`PipelineSpec`: one declarative description of a secure ML pipeline, validated as a whole."""

import datetime as _dt
import re
from dataclasses import dataclass, field

from secure_pipeline.errors import ConfigurationError
from secure_pipeline.names import PipelineNames
from secure_pipeline.spec._imports import import_path_problem
from secure_pipeline.spec._patterns import DOTTED_NAME, ENV_NAME, NAME
from secure_pipeline.spec.catalog import feature_catalog
from secure_pipeline.spec.data import (
    PARTITION_PLACEHOLDER,
    RESERVED_SPLIT_COLUMN,
    DatasetSchema,
    SourceSpec,
)
from secure_pipeline.spec.policy import CanaryPolicy, MonitoringSpec, PrivacySpec, SecurityPolicy
from secure_pipeline.spec.stages import (
    BUILTIN_ESTIMATORS,
    FeatureSpec,
    ModelSpec,
    OrchestrationSpec,
)


@dataclass(frozen=True)
class PipelineSpec:
    """A secure ML pipeline, declared once: what every stage builder reads.

    The stages take a spec; `secure_pipeline.SecurePipeline` is this spec with
    ``build_definitions()`` on top (composition sits above the stages, the spec below them).

    Attributes:
        name: Pipeline name (snake_case); used in job names and audit records.
        source: Where the data comes from.
        schema: What the data must look like.
        sensitive_features: Columns (or derived features) that identify protected groups,
            for fairness audits; they are never written to logs or the audit trail. Columns
            with role ``sensitive`` and derived features marked ``sensitive`` are added.
        owners: Dagster owners (``team:...`` or e-mail addresses) shown on every asset.
        description: What the pipeline does.
        code_version: Version of the pipeline's code, recorded in every manifest; assets are
            shown stale in the UI when it changes.
        policy: Thresholds of every gate.
        features: How features are derived from the validated table.
        model: How the model is trained.
        orchestration: Stage jobs, their isolation, schedules and sensors.
        canary: When a blue-green release's canary may take all the traffic.
        privacy: The record of processing and the erasure and retention policy.
        monitoring: How the served model's live traffic is recorded and judged.
    """

    name: str
    source: SourceSpec
    schema: DatasetSchema
    sensitive_features: tuple[str, ...] = ()
    owners: tuple[str, ...] = ()
    description: str = ""
    code_version: str = "1"
    policy: SecurityPolicy = field(default_factory=SecurityPolicy)
    features: FeatureSpec = field(default_factory=FeatureSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    orchestration: OrchestrationSpec = field(default_factory=OrchestrationSpec)
    canary: CanaryPolicy = field(default_factory=CanaryPolicy)
    privacy: PrivacySpec = field(default_factory=PrivacySpec)
    monitoring: MonitoringSpec = field(default_factory=MonitoringSpec)

    @property
    def holds_personal_data(self) -> bool:
        """Whether its row-level snapshots are envelope-encrypted (see `DatasetSchema`)."""
        return self.schema.holds_personal_data

    def __post_init__(self) -> None:
        marked = [c.name for c in self.schema.columns if c.role == "sensitive"]
        marked += [d.name for d in self.features.derived if d.sensitive]
        merged = tuple(dict.fromkeys((*self.sensitive_features, *marked)))
        if merged != tuple(self.sensitive_features):
            object.__setattr__(self, "sensitive_features", merged)
        problems = self._problems()
        if problems:
            raise ConfigurationError(
                f"pipeline spec {self.name!r} is invalid:\n"
                + "\n".join(f"  - {p}" for p in problems)
            )

    def _partition_problems(self) -> list[str]:
        """A partitioned source names its day; an unpartitioned one has no day to name."""
        source, partitions = self.source, self.source.partitions
        places = [source.location, *(f.path for f in source.files)]
        named = [PARTITION_PLACEHOLDER in p for p in places]
        if partitions is None:
            return (
                [
                    f"the source names {PARTITION_PLACEHOLDER} in its location or file paths but "
                    "has no partitions: add partitions (start, window) or write the paths out"
                ]
                if any(named)
                else []
            )
        found = []
        days = []
        for label, value in (("start", partitions.start), ("end", partitions.end)):
            try:
                days.append(_dt.date.fromisoformat(value) if value is not None else None)
            except (TypeError, ValueError):
                found.append(f"source partitions {label} {value!r} is not an ISO date (2026-01-31)")
        if len(days) == 2 and days[1] is not None and days[1] <= days[0]:
            found.append(
                f"source partitions end {partitions.end} must be after start {partitions.start}"
            )
        if partitions.window < 1:
            found.append(f"source partitions window must be at least 1, found {partitions.window}")
        if not named[0] and not all(named[1:]):
            found.append(
                f"a partitioned source must name the day with {PARTITION_PLACEHOLDER} in its "
                "location, or in every file path: without it every day would read the same files"
            )
        if self.orchestration.landing_env_var and any(named[1:]):
            found.append(
                f"with a landing zone, name the day with {PARTITION_PLACEHOLDER} in the "
                "location, not in the file paths: a batch folder named after its day holds "
                "the files under their own names"
            )
        return found

    def _problems(self) -> list[str]:
        found: list[str] = []
        for label, value in (("pipeline name", self.name), ("source name", self.source.name)):
            if not NAME.match(value):
                found.append(
                    f"{label} {value!r} must be snake_case: a lowercase letter, then lowercase "
                    "letters, digits or '_' (at most 48 characters)"
                )
        if not self.source.files:
            found.append("the source lists no files")
        members = [f.member for f in self.source.files]
        if len(set(members)) != len(members):
            found.append(f"source file members must be unique, found {members}")
        for source_file in self.source.files:
            if not NAME.match(source_file.member):
                found.append(f"source file member {source_file.member!r} must be snake_case")
            if source_file.path.startswith("/") or ".." in source_file.path.split("/"):
                found.append(
                    f"source file path {source_file.path!r} must be relative to the location "
                    "and stay inside it"
                )
        if self.source.location_env_var and not ENV_NAME.match(self.source.location_env_var):
            found.append(f"location_env_var {self.source.location_env_var!r} is not a valid name")
        if self.source.max_bytes <= 0:
            found.append("source max_bytes must be positive")
        if self.source.chunk_bytes <= 0:
            found.append("source chunk_bytes must be positive (bytes of a file parsed at a time)")
        names = self.schema.column_names
        if len(set(names)) != len(names):
            duplicated = sorted({n for n in names if names.count(n) > 1})
            found.append(
                f"schema column names must be unique; duplicated: {', '.join(duplicated)} "
                "(to read a header that repeats a name, give each column its own name and "
                "map it with source and occurrence)"
            )
        if not names:
            found.append("the schema has no columns")
        by_name = {c.name: c for c in self.schema.columns}
        found.extend(self._column_problems(by_name))
        found.extend(self._sensitive_problems(by_name))
        if RESERVED_SPLIT_COLUMN in by_name:
            found.append(f"column name {RESERVED_SPLIT_COLUMN!r} is reserved for the file member")
        label = by_name.get(self.schema.label or "")
        if self.schema.positive_label is not None and (
            label is None or self.schema.positive_label not in (label.allowed or ())
        ):
            found.append(
                f"positive_label {self.schema.positive_label!r} is not an allowed value of the "
                "label column"
            )
        if self.schema.min_rows < 0 or (
            self.schema.max_rows is not None and self.schema.max_rows < self.schema.min_rows
        ):
            found.append("row bounds must satisfy 0 <= min_rows <= max_rows")
        for name in (*self.features.exclude, *self.features.bands, *self.features.log1p):
            if name not in by_name:
                found.append(f"feature setting names {name!r}, which is not a column")
            elif not by_name[name].kept or by_name[name].role == "personal":
                found.append(
                    f"feature setting names {name!r}, a column with role "
                    f"{by_name[name].role!r}, which never reaches the feature table"
                )
        found.extend(self._derived_problems(by_name))
        for name, cuts in self.features.bands.items():
            if name in by_name and by_name[name].dtype not in ("int", "float"):
                found.append(f"band column {name!r} must be numeric")
            if list(cuts) != sorted(set(cuts)) or not cuts:
                found.append(f"band cut points of {name!r} must be strictly ascending")
        found.extend(self.policy.problems())
        found.extend(self.orchestration.problems())
        found.extend(self.privacy.problems())
        if self.source.retention_days is not None:
            if self.source.retention_days < 1:
                found.append(
                    f"source retention_days must be at least 1, found {self.source.retention_days}"
                )
            elif not self.schema.holds_personal_data:
                found.append(
                    "source retention_days is set, but no column has role 'identifier' or "
                    "'personal': only snapshots of personal data are encrypted, and so only "
                    "they can expire under immutable storage. Mark the columns that identify "
                    "people, or drop retention_days"
                )
        found.extend(self._partition_problems())
        found.extend(f"canary: {p}" for p in self.canary.problems())
        found.extend(f"monitoring: {p}" for p in self.monitoring.problems())
        found.extend(self._model_problems())
        return found

    def _column_problems(self, by_name: dict) -> list[str]:
        found: list[str] = []
        schema = self.schema
        marked_labels = [c.name for c in schema.columns if c.role == "label"]
        if len(marked_labels) > 1:
            found.append(f"only one column may have role 'label', found {marked_labels}")
        elif marked_labels and schema.label != marked_labels[0]:
            found.append(
                f"column {marked_labels[0]!r} has role 'label' but the schema's label is "
                f"{schema.label!r}: name one label"
            )
        if schema.label is not None and schema.label not in by_name:
            found.append(f"label {schema.label!r} is not a column of the schema")
        elif schema.label is not None and by_name[schema.label].role not in ("feature", "label"):
            found.append(
                f"label {schema.label!r} has role {by_name[schema.label].role!r}: the label "
                "must reach the feature table"
            )
        headers: dict[tuple[str, int], str] = {}
        for column in schema.columns:
            name = column.name
            key = (column.header_name, column.occurrence)
            if key in headers:
                found.append(
                    f"columns {headers[key]!r} and {name!r} both read header name "
                    f"{column.header_name!r} occurrence {column.occurrence}"
                )
            headers[key] = name
            if column.source is not None and not schema.has_header:
                found.append(
                    f"column {name!r}: source names a header column, but has_header is False"
                )
            if column.occurrence < 1:
                found.append(f"column {name!r}: occurrence counts from 1")
            if column.pseudonymise and column.role != "personal":
                found.append(f"column {name!r}: pseudonymise applies to personal columns")
            if column.role == "personal" and column.dtype not in ("string", "category", "int",
                                                                   "date"):  # fmt: skip
                found.append(f"personal column {name!r} must be a string, category, int or date")
            if column.allowed is not None and column.dtype != "category":
                found.append(f"column {name!r}: allowed values need dtype 'category'")
            if column.dtype == "category" and not column.allowed:
                found.append(f"category column {name!r} must list its allowed values")
            numeric = column.dtype in ("int", "float")
            if not numeric and (
                column.minimum is not None
                or column.maximum is not None
                or column.mean_between is not None
            ):
                found.append(f"column {name!r}: ranges and means need a numeric dtype")
            if column.max_null_fraction is not None and not column.nullable:
                found.append(f"column {name!r}: max_null_fraction needs nullable=True")
            for raw, canonical in column.aliases:
                if column.allowed is not None and canonical not in column.allowed:
                    found.append(
                        f"column {name!r}: alias {raw!r} maps to {canonical!r}, which is "
                        "not an allowed value"
                    )
            found.extend(_date_problems(column))
            found.extend(_string_problems(column))
        # Each repeated header name must be declared once per occurrence, 1..n.
        occurrences: dict[str, list[int]] = {}
        for header, occurrence in headers:
            occurrences.setdefault(header, []).append(occurrence)
        for header, seen in occurrences.items():
            if sorted(seen) != list(range(1, len(seen) + 1)):
                found.append(
                    f"header name {header!r} is declared for occurrences {sorted(seen)}: "
                    f"declare occurrences 1 to {max(seen)}, one column each"
                )
        return found

    def _sensitive_problems(self, by_name: dict) -> list[str]:
        found: list[str] = []
        derived = {d.name: d for d in self.features.derived}
        for feature in self.sensitive_features:
            column = by_name.get(feature)
            if column is None and feature not in derived:
                found.append(
                    f"sensitive feature {feature!r} is not a column or derived feature "
                    f"(columns: {', '.join(by_name)})"
                )
                continue
            if column is None:
                if derived[feature].kind == "date_difference":
                    found.append(
                        f"sensitive feature {feature!r} is a date difference: audit a band of "
                        "it instead (a derived band)"
                    )
                continue
            if column.role in ("identifier", "personal", "ignore"):
                found.append(
                    f"sensitive feature {feature!r} has role {column.role!r}: a protected "
                    "attribute must reach the feature table to be audited"
                )
            elif column.dtype in ("string", "date", "datetime", "bool"):
                found.append(
                    f"sensitive feature {feature!r} is a {column.dtype} column: the fairness "
                    "audit needs groups; declare it a category with its allowed values, or "
                    "derive a value map or band from it"
                )
            elif column.dtype in ("int", "float") and feature not in self.features.bands:
                found.append(
                    f"sensitive feature {feature!r} is numeric: give it bands in the feature "
                    "spec (features.bands) so that the audit has groups"
                )
            if feature in self.features.exclude:
                found.append(
                    f"sensitive feature {feature!r} is excluded from the feature table "
                    "(features.exclude), so it cannot be audited; to keep it out of the model "
                    "only, list it in model.exclude_features"
                )
        return found

    def _derived_problems(self, by_name: dict) -> list[str]:
        found: list[str] = []
        columns = set(by_name)
        generated = {f"{n}_band" for n in self.features.bands}
        generated |= {f"log1p_{n}" for n in self.features.log1p}
        seen: set[str] = set()
        for derived in self.features.derived:
            name = derived.name
            if not NAME.match(name):
                found.append(f"derived feature name {name!r} must be snake_case")
            if name in columns or name in generated or name in seen:
                found.append(f"derived feature {name!r} clashes with a column or feature name")
            seen.add(name)
            for source in derived.sources:
                column = by_name.get(source)
                if column is None:
                    found.append(f"derived feature {name!r} reads {source!r}, not a column")
                elif not column.kept or column.role == "personal":
                    found.append(
                        f"derived feature {name!r} reads {source!r}, a column with role "
                        f"{column.role!r}, which never reaches the feature table"
                    )
            source = by_name.get(derived.source)
            if derived.kind == "map":
                if not derived.values:
                    found.append(f"derived map {name!r} lists no values")
                keys = [k for k, _ in derived.values]
                if len(set(keys)) != len(keys):
                    found.append(f"derived map {name!r} maps a source value twice")
                unknown = [v for _, v in derived.values if v not in derived.output_categories]
                if derived.default is not None and derived.default not in (
                    derived.output_categories
                ):
                    unknown.append(derived.default)
                if unknown:
                    found.append(
                        f"derived map {name!r}: {sorted(set(unknown))} not among its "
                        f"categories {list(derived.output_categories)}"
                    )
                if source is not None and source.dtype in ("float", "date", "datetime"):
                    found.append(f"derived map {name!r}: a {source.dtype} source cannot be mapped")
                if source is not None and source.dtype in ("int", "bool"):
                    # keys are the value as text: decimal integers, or true/false
                    if source.dtype == "int":
                        strays = [k for k in keys if not re.fullmatch(r"-?(0|[1-9][0-9]*)", k)]
                    else:
                        strays = [k for k in keys if k not in ("true", "false")]
                    if strays:
                        written = "decimal integers" if source.dtype == "int" else "true or false"
                        found.append(
                            f"derived map {name!r} maps {strays}, which no {source.dtype} value "
                            f"of {source.name!r} is written as (keys are {written})"
                        )
                if source is not None and source.dtype == "category":
                    allowed = set(source.allowed or ())
                    strays = [k for k in keys if k not in allowed]
                    if strays:
                        found.append(
                            f"derived map {name!r} maps {strays}, not allowed values of "
                            f"{source.name!r}"
                        )
                    unmapped = [a for a in source.allowed or () if a not in keys]
                    if unmapped and derived.default is None:
                        found.append(
                            f"derived map {name!r} leaves {unmapped} of {source.name!r} "
                            "unmapped: map them, or give a default"
                        )
            elif derived.values or derived.default is not None or derived.categories:
                found.append(f"derived {derived.kind} {name!r}: values and categories are for maps")
            if derived.kind == "band":
                if source is not None and source.dtype not in ("int", "float"):
                    found.append(f"derived band {name!r} needs a numeric source")
                if not derived.cuts or list(derived.cuts) != sorted(set(derived.cuts)):
                    found.append(f"derived band {name!r}: cut points must be strictly ascending")
            elif derived.cuts:
                found.append(f"derived {derived.kind} {name!r}: cuts are for bands")
            if derived.kind == "date_difference":
                if derived.end is None:
                    found.append(f"date difference {name!r} needs an end column")
                for column_name in derived.sources:
                    column = by_name.get(column_name)
                    if column is not None and column.dtype not in ("date", "datetime"):
                        found.append(
                            f"date difference {name!r} reads {column_name!r}, a {column.dtype} "
                            "column (expected date or datetime)"
                        )
            elif derived.end is not None:
                found.append(f"derived {derived.kind} {name!r}: end is for date differences")
        return found

    def _model_problems(self) -> list[str]:
        found: list[str] = []
        if self.schema.label is None or self.schema.positive_label is None:
            found.append(
                "the pipeline trains a classifier: the schema needs a category label column "
                "and a positive_label"
            )
            return found
        label = next((c for c in self.schema.columns if c.name == self.schema.label), None)
        if label is not None and label.allowed is not None and len(label.allowed) != 2:
            found.append(
                f"label {label.name!r} has {len(label.allowed)} allowed values "
                f"({', '.join(label.allowed)}): the pipeline trains binary classifiers and "
                "refuses to treat a multiclass label as one-vs-rest silently. Declare the two "
                "classes as allowed values and map the others onto them with aliases "
                "(e.g. medium: high)"
            )
        estimator = self.model.estimator_path
        problem = import_path_problem(estimator)
        if problem is not None:
            builtins = ", ".join(BUILTIN_ESTIMATORS)
            found.append(
                f"model estimator {self.model.estimator!r}: {problem}. Use a built-in name "
                f"({builtins}) or the import path of a scikit-learn classifier"
            )
        for trusted in self.model.trusted_types:
            if not DOTTED_NAME.match(trusted):
                found.append(f"model trusted type {trusted!r} is not a dotted type name")
        if self.model.folds < 2:
            found.append("model folds must be at least 2")
        if self.model.cross_validation_below < 0:
            found.append("model cross_validation_below must not be negative")
        # The catalog names a band's labels by its cut points: with a band that has none (a
        # problem already listed) the features are unknown, so they are not checked.
        if all(self.features.bands.values()):
            names = {f.name for f in feature_catalog(self)}
            for name in self.model.exclude_features:
                if name not in names:
                    found.append(f"model exclude_features names {name!r}, which is not a feature")
            if not names - set(self.model.exclude_features):
                found.append("the model has no input features left")
        members = {f.member for f in self.source.files}
        for label, member in (("train_member", self.model.train_member),
                              ("test_member", self.model.test_member)):  # fmt: skip
            if member is not None and member not in members:
                found.append(f"model {label} {member!r} is not a source file member")
        if not 0 < self.model.holdout_fraction < 1:
            found.append("model holdout_fraction must be between 0 and 1")
        for name in self.policy.fairness_report_only:
            if name not in self.sensitive_features:
                found.append(f"fairness_report_only names {name!r}, not a sensitive feature")
        return found

    @property
    def names(self) -> PipelineNames:
        """Every name this pipeline defines: asset keys (prefixed by its name), jobs, sensors."""
        return PipelineNames(self.name, self.source.name)

    @property
    def raw_asset_name(self) -> str:
        """Name of the raw ingestion asset (the last component of its key)."""
        return f"raw_{self.source.name}"

    @property
    def validated_asset_name(self) -> str:
        """Name of the validated table asset (the last component of its key)."""
        return f"validated_{self.source.name}"

    def source_variables(self) -> dict[str, str]:
        """Variables naming source locations (required in production), with their meaning."""
        if self.source.location_env_var:
            return {
                self.source.location_env_var: f"Location of the {self.source.name!r} source "
                "files (https:// or s3://)."
            }
        return {}


def _iso(value: str, dtype: str) -> "_dt.date | _dt.datetime | None":
    try:
        parsed = _dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.date() if dtype == "date" else parsed


def _date_problems(column) -> list[str]:  # noqa: ANN001 - a Column
    found: list[str] = []
    dated = column.dtype in ("date", "datetime")
    if not dated:
        if column.format is not None or column.earliest is not None or column.latest is not None:
            found.append(f"column {column.name!r}: format, earliest and latest need a date type")
        return found
    if column.format is not None:
        try:
            _dt.datetime.now().strftime(column.format)
        except ValueError as exc:
            found.append(f"column {column.name!r}: format {column.format!r} is invalid ({exc})")
        if "%" not in column.format:
            found.append(f"column {column.name!r}: format {column.format!r} has no % directive")
    bounds = []
    for label in ("earliest", "latest"):
        value = getattr(column, label)
        if value is None:
            continue
        parsed = _iso(value, column.dtype)
        if parsed is None:
            found.append(
                f"column {column.name!r}: {label} {value!r} is not an ISO 8601 "
                f"{column.dtype} (e.g. 2013-01-01)"
            )
        bounds.append(parsed)
    if len(bounds) == 2 and None not in bounds and bounds[0] > bounds[1]:
        found.append(f"column {column.name!r}: earliest is after latest")
    return found


def _string_problems(column) -> list[str]:  # noqa: ANN001 - a Column
    found: list[str] = []
    rules = (column.min_length, column.max_length, column.pattern)
    if column.dtype != "string":
        if any(r is not None for r in rules):
            found.append(f"column {column.name!r}: lengths and patterns need dtype 'string'")
        return found
    if column.min_length is not None and column.min_length < 0:
        found.append(f"column {column.name!r}: min_length must not be negative")
    if (column.min_length is not None and column.max_length is not None
            and column.min_length > column.max_length):  # fmt: skip
        found.append(f"column {column.name!r}: min_length is above max_length")
    if column.pattern is not None:
        try:
            re.compile(column.pattern)
        except re.error as exc:
            found.append(f"column {column.name!r}: pattern {column.pattern!r} is invalid ({exc})")
    return found
