"""The `SecurePipeline` spec: one declarative description of a secure ML pipeline.

A library user describes *their* pipeline — data source, schema, sensitive features — and calls
`SecurePipeline.build_definitions()` to get Dagster definitions carrying every control. The
reference Adult pipeline (`secure_pipeline.reference.adult`) is just one instance.

This module stays light: building a spec imports nothing heavy, and the stage builders are
imported only when definitions are built.
"""

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal

from secure_pipeline.errors import ConfigurationError

if TYPE_CHECKING:
    import dagster as dg

    from secure_pipeline.environment import Environment

RESERVED_SPLIT_COLUMN = "split"

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
_ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")

ColumnType = Literal["int", "float", "string", "category", "bool"]


@dataclass(frozen=True)
class Column:
    """One column the data must have.

    Attributes:
        name: Column name after parsing (snake_case).
        dtype: Logical type: ``int``, ``float``, ``string``, ``category`` or ``bool``.
        nullable: Whether missing values are allowed.
        allowed: For categories: the complete set of allowed values.
        minimum: Smallest allowed value (numeric columns).
        maximum: Largest allowed value (numeric columns).
        description: What the column means.
        aliases: Raw spellings mapped to their canonical value before validation, e.g. the
            Adult test file's ``<=50K.`` for ``<=50K``. Listed explicitly so that nothing is
            normalised by accident.
        max_null_fraction: Largest share of missing values a batch may have (a statistical
            expectation; per-row nullability is ``nullable``).
        mean_between: Range the batch mean of a numeric column must fall in.
    """

    name: str
    dtype: ColumnType
    nullable: bool = False
    allowed: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    description: str = ""
    aliases: tuple[tuple[str, str], ...] = ()
    max_null_fraction: float | None = None
    mean_between: tuple[float, float] | None = None


@dataclass(frozen=True)
class DatasetSchema:
    """The columns of a dataset, in file order, and how its files are written.

    Attributes:
        name: Schema name, recorded in provenance.
        columns: Columns in the order they appear in a header-less file.
        label: The target column, if the data is labelled.
        positive_label: The label value encoded as 1 in the features.
        missing_values: Tokens that mean "missing" in the raw files (Adult uses ``?``).
        delimiter: Field separator of the raw files.
        has_header: Whether each file starts with a header row naming the columns; the names
            must then match ``columns`` exactly (any order).
        comment_prefix: Lines starting with this are comments (the Adult test file's first
            line), dropped before parsing and counted.
        min_rows: Fewest rows a batch may have.
        max_rows: Most rows a batch may have.
    """

    name: str
    columns: tuple[Column, ...]
    label: str | None = None
    positive_label: str | None = None
    missing_values: tuple[str, ...] = ()
    delimiter: str = ","
    has_header: bool = False
    comment_prefix: str | None = None
    min_rows: int = 1
    max_rows: int | None = None

    @property
    def column_names(self) -> tuple[str, ...]:
        """Names of the columns, in order."""
        return tuple(c.name for c in self.columns)

    @property
    def version(self) -> str:
        """A fingerprint of the whole schema: any change to it gives a new version."""
        digest = hashlib.sha256(
            json.dumps(asdict(self), sort_keys=True, default=list).encode()
        ).hexdigest()
        return f"{self.name}@{digest[:12]}"


@dataclass(frozen=True)
class SourceFile:
    """One file of a source.

    Attributes:
        member: Logical name of the file within the source (``train``, ``test``).
        path: Path of the file relative to the source location.
    """

    member: str
    path: str


@dataclass(frozen=True)
class SourceSpec:
    """Where a dataset comes from.

    The location is a directory-like URI (``file://``, ``https://``, ``s3://``); each file's
    path is resolved against it. At run time the variable ``location_env_var``, when set,
    replaces ``location``, so a deployment points the same pipeline at its own data.

    Attributes:
        name: Source name; the raw asset is ``raw_<name>``.
        files: The files to ingest.
        location: Default location of the files.
        location_env_var: Variable that overrides ``location`` (required in production).
        format: Format of the files, recorded in manifests and used as key extension.
        max_bytes: Largest accepted file; a larger one is refused before it is stored.
        description: What the data is, shown in the Dagster UI.
        tls_pins: SHA-256 fingerprints of the https server certificates to accept (on top of
            normal verification); ``SECURE_PIPELINE_SOURCE_TLS_PINS`` adds more at run time.
        read_timeout_seconds: How long one network read may wait (https, s3).
    """

    name: str
    files: tuple[SourceFile, ...]
    location: str
    location_env_var: str | None = None
    format: str = "csv"
    max_bytes: int = 512 * 1024 * 1024
    description: str = ""
    tls_pins: tuple[str, ...] = ()
    read_timeout_seconds: float = 60.0


@dataclass(frozen=True)
class SecurityPolicy:
    """Thresholds every gate of the pipeline applies, shown in the Dagster UI.

    Attributes:
        max_reject_rate: Largest share of rows that may be quarantined before the batch fails.
        drift_warn_psi: Population stability index at which a feature's drift is a warning.
        drift_fail_psi: Population stability index at which drift fails the batch.
        drift_bins: Quantile bins per numeric feature for the stability index.
    """

    max_reject_rate: float = 0.01
    drift_warn_psi: float = 0.1
    drift_fail_psi: float = 0.25
    drift_bins: int = 10

    def problems(self) -> list[str]:
        """Contradictions in the policy, one line each."""
        found = []
        if not 0 <= self.max_reject_rate < 1:
            found.append(f"max_reject_rate must be in [0, 1), found {self.max_reject_rate}")
        if not 0 < self.drift_warn_psi <= self.drift_fail_psi:
            found.append(
                "drift thresholds must satisfy 0 < drift_warn_psi <= drift_fail_psi, found "
                f"{self.drift_warn_psi} and {self.drift_fail_psi}"
            )
        if self.drift_bins < 2:
            found.append(f"drift_bins must be at least 2, found {self.drift_bins}")
        return found


@dataclass(frozen=True)
class FeatureSpec:
    """How the validated table becomes the feature table.

    Every schema column except the label and ``exclude`` becomes a feature: numbers as floats,
    categories as integer codes in the order of the schema's allowed values (stable across
    snapshots, -1 for missing). The label becomes 0/1.

    Attributes:
        exclude: Columns that are not features (identifiers, sampling weights).
        bands: Numeric column to ascending cut points; adds ``<column>_band`` (integer band
            index), e.g. age bands as a sensitive-attribute view for fairness audits.
        log1p: Numeric columns also given as ``log1p_<column>`` (heavy-tailed amounts).
    """

    exclude: tuple[str, ...] = ()
    bands: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    log1p: tuple[str, ...] = ()


@dataclass(frozen=True)
class SecurePipeline:
    """A secure ML pipeline, declared once and turned into Dagster definitions.

    Attributes:
        name: Pipeline name (snake_case); used in job names and audit records.
        source: Where the data comes from.
        schema: What the data must look like.
        sensitive_features: Columns that identify protected groups (for fairness audits);
            they are never written to logs or the audit trail.
        owners: Dagster owners (``team:...`` or e-mail addresses) shown on every asset.
        description: What the pipeline does.
        code_version: Version of the pipeline's code, recorded in every manifest; assets are
            shown stale in the UI when it changes.
        policy: Thresholds of every gate.
        features: How features are derived from the validated table.
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

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise ConfigurationError(
                f"pipeline spec {self.name!r} is invalid:\n"
                + "\n".join(f"  - {p}" for p in problems)
            )

    def _problems(self) -> list[str]:
        found: list[str] = []
        for label, value in (("pipeline name", self.name), ("source name", self.source.name)):
            if not _NAME.match(value):
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
            if not _NAME.match(source_file.member):
                found.append(f"source file member {source_file.member!r} must be snake_case")
            if source_file.path.startswith("/") or ".." in source_file.path.split("/"):
                found.append(
                    f"source file path {source_file.path!r} must be relative to the location "
                    "and stay inside it"
                )
        if self.source.location_env_var and not _ENV_NAME.match(self.source.location_env_var):
            found.append(f"location_env_var {self.source.location_env_var!r} is not a valid name")
        if self.source.max_bytes <= 0:
            found.append("source max_bytes must be positive")
        names = self.schema.column_names
        if len(set(names)) != len(names):
            found.append(f"schema column names must be unique, found {list(names)}")
        if not names:
            found.append("the schema has no columns")
        if self.schema.label is not None and self.schema.label not in names:
            found.append(f"label {self.schema.label!r} is not a column of the schema")
        for feature in self.sensitive_features:
            if feature not in names:
                found.append(
                    f"sensitive feature {feature!r} is not a column of the schema "
                    f"(columns: {', '.join(names)})"
                )
        by_name = {c.name: c for c in self.schema.columns}
        for column in self.schema.columns:
            if column.allowed is not None and column.dtype != "category":
                found.append(f"column {column.name!r}: allowed values need dtype 'category'")
            if column.dtype == "category" and not column.allowed:
                found.append(f"category column {column.name!r} must list its allowed values")
            numeric = column.dtype in ("int", "float")
            if not numeric and (
                column.minimum is not None
                or column.maximum is not None
                or column.mean_between is not None
            ):
                found.append(f"column {column.name!r}: ranges and means need a numeric dtype")
            if column.max_null_fraction is not None and not column.nullable:
                found.append(f"column {column.name!r}: max_null_fraction needs nullable=True")
            for raw, canonical in column.aliases:
                if column.allowed is not None and canonical not in column.allowed:
                    found.append(
                        f"column {column.name!r}: alias {raw!r} maps to {canonical!r}, which is "
                        "not an allowed value"
                    )
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
        for name, cuts in self.features.bands.items():
            if name in by_name and by_name[name].dtype not in ("int", "float"):
                found.append(f"band column {name!r} must be numeric")
            if list(cuts) != sorted(set(cuts)) or not cuts:
                found.append(f"band cut points of {name!r} must be strictly ascending")
        found.extend(self.policy.problems())
        return found

    @property
    def raw_asset_name(self) -> str:
        """Name of the raw ingestion asset."""
        return f"raw_{self.source.name}"

    def source_variables(self) -> dict[str, str]:
        """Variables naming source locations (required in production), with their meaning."""
        if self.source.location_env_var:
            return {
                self.source.location_env_var: f"Location of the {self.source.name!r} source "
                "files (https:// or s3://)."
            }
        return {}

    def build_definitions(self, environment: "Environment | None" = None) -> "dg.Definitions":
        """Build the Dagster definitions of this pipeline.

        Args:
            environment: Build for this environment; the current one (``SECURE_PIPELINE_ENV``)
                when None.

        Returns:
            Assets, resources and checks, ready for a code location.

        Raises:
            ConfigurationError: When the environment is missing variables (all are listed).
        """
        import dagster as dg

        from secure_pipeline import environment as env
        from secure_pipeline.features.assets import build_features_stage
        from secure_pipeline.ingestion.assets import build_raw_asset
        from secure_pipeline.storage.resources import build_resources
        from secure_pipeline.validation.assets import build_validation_stage

        checked = env.validate(environment, source_variables=self.source_variables())
        validated, validation_checks = build_validation_stage(self)
        features, feature_checks = build_features_stage(self)
        return dg.Definitions(
            assets=[build_raw_asset(self), *validated, *features],
            asset_checks=[*validation_checks, *feature_checks],
            resources=build_resources(checked),
        )
