"""`PipelineSpec`: one declarative description of a secure ML pipeline, validated as a whole."""

from dataclasses import dataclass, field

from secure_pipeline.errors import ConfigurationError
from secure_pipeline.names import PipelineNames
from secure_pipeline.spec._patterns import ENV_NAME, NAME
from secure_pipeline.spec.catalog import feature_catalog
from secure_pipeline.spec.data import RESERVED_SPLIT_COLUMN, DatasetSchema, SourceSpec
from secure_pipeline.spec.policy import CanaryPolicy, SecurityPolicy
from secure_pipeline.spec.stages import FeatureSpec, ModelSpec, OrchestrationSpec


@dataclass(frozen=True)
class PipelineSpec:
    """A secure ML pipeline, declared once: what every stage builder reads.

    The stages take a spec; `secure_pipeline.SecurePipeline` is this spec with
    ``build_definitions()`` on top (composition sits above the stages, the spec below them).

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
        model: How the model is trained.
        orchestration: Stage jobs, their isolation, schedules and sensors.
        canary: When a blue-green release's canary may take all the traffic.
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
        found.extend(self.orchestration.problems())
        found.extend(f"canary: {p}" for p in self.canary.problems())
        found.extend(self._model_problems())
        return found

    def _model_problems(self) -> list[str]:
        found: list[str] = []
        if self.schema.label is None or self.schema.positive_label is None:
            found.append(
                "the pipeline trains a classifier: the schema needs a category label column "
                "and a positive_label"
            )
            return found
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
