"""The `SecurePipeline` spec: one declarative description of a secure ML pipeline.

A library user describes *their* pipeline — data source, schema, sensitive features — and calls
`SecurePipeline.build_definitions()` to get Dagster definitions carrying every control. The
reference Adult pipeline (`secure_pipeline.reference.adult`) is just one instance.

This module stays light: building a spec imports nothing heavy, and the stage builders are
imported only when definitions are built.
"""

import functools
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from secure_pipeline.errors import ConfigurationError
from secure_pipeline.promotion.canary import CanaryPolicy
from secure_pipeline.trust.identities import IDENTITY_TAG

if TYPE_CHECKING:
    import dagster as dg

    from secure_pipeline.environment import Environment
    from secure_pipeline.names import PipelineNames

RESERVED_SPLIT_COLUMN = "split"

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
_ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")

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

    Each threshold states what it means; none is a number fitted to a particular model.

    Attributes:
        max_reject_rate: Largest share of rows that may be quarantined before the batch fails.
        drift_warn_psi: Population stability index at which a feature's drift is a warning.
        drift_fail_psi: Population stability index at which drift fails the batch.
        drift_bins: Quantile bins per numeric feature for the stability index.
        min_roc_auc: Smallest ROC AUC on the evaluation set (0.5 is a coin flip).
        min_balanced_accuracy: Smallest balanced accuracy (0.5 is predicting one class).
        robustness_epsilon: Perturbation budget of the evasion attack, in standard deviations
            of each numeric model input, all perturbed at once (L-infinity). Categorical
            inputs are not perturbed.
        max_robustness_drop: Largest loss of accuracy under that attack (absolute).
        robustness_sample_cap: Evaluation rows attacked.
        max_membership_auc: Largest ROC AUC of the membership-inference attack (0.5: the
            attacker cannot tell training rows from others).
        max_membership_advantage: Largest attack advantage (max TPR - FPR).
        privacy_sample_cap: Member and non-member rows each given to the attack.
        max_equalized_odds_difference: Largest gap in true- or false-positive rate between
            groups of a gated sensitive feature, beyond sampling error.
        max_parity_amplification: How much the model's demographic-parity difference may
            exceed the one already in the labels (the model must not widen the gap).
        fairness_min_group_size: Positives and negatives a group needs to be gated (smaller
            groups are reported, their rates being too noisy to judge).
        fairness_confidence: Confidence of the interval a gap must clear to fail the gate.
        fairness_report_only: Sensitive features that are audited and shown but do not gate.
        approvals_required: Signed approvals (by distinct approver keys of the trust policy)
            a model needs before promotion.
    """

    max_reject_rate: float = 0.01
    drift_warn_psi: float = 0.1
    drift_fail_psi: float = 0.25
    drift_bins: int = 10
    min_roc_auc: float = 0.80
    min_balanced_accuracy: float = 0.70
    robustness_epsilon: float = 0.1
    max_robustness_drop: float = 0.05
    robustness_sample_cap: int = 2000
    max_membership_auc: float = 0.60
    max_membership_advantage: float = 0.10
    privacy_sample_cap: int = 2000
    max_equalized_odds_difference: float = 0.10
    max_parity_amplification: float = 0.02
    fairness_min_group_size: int = 50
    fairness_confidence: float = 0.95
    fairness_report_only: tuple[str, ...] = ()
    approvals_required: int = 0

    def fingerprint(self) -> str:
        """SHA-256 of the judging thresholds: two policies match only if every one does.

        ``approvals_required`` is left out: it applies when a model is promoted, not when it is
        judged, so changing it does not make earlier verdicts stale.
        """
        return _fingerprint(self)

    def problems(self) -> list[str]:
        """Contradictions in the policy, one line each."""
        found = []
        for name in ("min_roc_auc", "min_balanced_accuracy", "max_membership_auc"):
            if not 0.5 <= getattr(self, name) <= 1:
                found.append(f"{name} must be in [0.5, 1], found {getattr(self, name)}")
        for name in ("max_robustness_drop", "max_membership_advantage",
                     "max_equalized_odds_difference", "max_parity_amplification"):  # fmt: skip
            if not 0 <= getattr(self, name) <= 1:
                found.append(f"{name} must be in [0, 1], found {getattr(self, name)}")
        if self.robustness_epsilon <= 0:
            found.append("robustness_epsilon must be positive")
        for name in ("robustness_sample_cap", "privacy_sample_cap", "fairness_min_group_size"):
            if getattr(self, name) < 1:
                found.append(f"{name} must be at least 1")
        if self.approvals_required < 0:
            found.append("approvals_required must not be negative")
        if not 0.5 < self.fairness_confidence < 1:
            found.append("fairness_confidence must be between 0.5 and 1")
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


@functools.lru_cache(maxsize=64)
def _fingerprint(policy: SecurityPolicy) -> str:
    # Cached: every verdict and every verification asks for it, and the policy is frozen.
    thresholds = {k: v for k, v in asdict(policy).items() if k != "approvals_required"}
    return hashlib.sha256(
        json.dumps(thresholds, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()


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
class IsolationSpec:
    """Where and as whom one stage's steps run on Kubernetes (the production executor).

    Attributes:
        namespace: Kubernetes namespace of the stage's step pods.
        service_account: Its dedicated least-privilege service account (in that namespace).
        cpu_request: CPU requested per step pod.
        memory_request: Memory requested per step pod.
        cpu_limit: CPU limit per step pod.
        memory_limit: Memory limit per step pod.
        env_secrets: Secrets (in the namespace) whose keys become the step's environment:
            the stage's own configuration and credentials, and nothing another stage needs.
        tmp_size: Size of the writable ``/tmp`` volume (the root filesystem is read-only).
    """

    namespace: str = "sp-train"
    service_account: str = "sp-train"
    cpu_request: str = "1"
    memory_request: str = "2Gi"
    cpu_limit: str = "2"
    memory_limit: str = "4Gi"
    env_secrets: tuple[str, ...] = ("sp-train-env",)
    tmp_size: str = "2Gi"

    def dagster_tags(self, identity: str | None = None) -> dict[str, object]:
        """Op tags the dagster-k8s executor reads (``dagster-k8s/config``) plus the namespace.

        Args:
            identity: The signing identity of the step (``ingest``, ``train``, ``release``,
                ``gate``): the key it signs its records and attestations with.
        """
        return {
            **({IDENTITY_TAG: identity} if identity else {}),
            "secure_pipeline/k8s_namespace": self.namespace,
            "dagster-k8s/config": {
                "pod_spec_config": {
                    "service_account_name": self.service_account,
                    "automount_service_account_token": False,
                    "security_context": POD_SECURITY_CONTEXT,
                },
                "container_config": {
                    "resources": {
                        "requests": {"cpu": self.cpu_request, "memory": self.memory_request},
                        "limits": {"cpu": self.cpu_limit, "memory": self.memory_limit},
                    },
                    "security_context": CONTAINER_SECURITY_CONTEXT,
                },
            },
        }


# The "restricted" Pod Security Standard, plus a fixed unprivileged user and a read-only root.
POD_SECURITY_CONTEXT: Mapping[str, Any] = {
    "run_as_non_root": True,
    "run_as_user": 10001,
    "run_as_group": 10001,
    "fs_group": 10001,
    "seccomp_profile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT: Mapping[str, Any] = {
    "allow_privilege_escalation": False,
    "read_only_root_filesystem": True,
    "run_as_non_root": True,
    "privileged": False,
    "capabilities": {"drop": ["ALL"]},
}


@dataclass(frozen=True)
class OrchestrationSpec:
    """How the pipeline runs by itself: stage jobs, where they run, schedules and sensors.

    Attributes:
        ingest: Isolation of the ingest job (raw, validated, features and their checks).
        train: Isolation of the train job (the model and its ML security checks).
        registry: Isolation of the release job (signing, registration, promotion): the only
            stage given the signing key and registry write access.
        control_namespace: Namespace of Dagster itself and of run pods, which only launch
            step pods; an ad-hoc run outside the stage jobs has its steps placed here, where
            no stage's credentials exist, so it fails closed instead of borrowing them.
        run_service_account: Service account of run pods (may create step jobs, nothing else).
        image: Container image of step pods; unset means the code location's own image.
        ingest_cron: Cron schedule of the ingest job (None: no schedule).
        timezone: Time zone of the schedule.
        landing_env_var: Variable naming an ``s3://bucket/prefix/`` landing zone; a sensor
            launches the ingest job once for each complete batch that arrives under it.
        landing_interval_seconds: Seconds between landing-zone sensor ticks.
        landing_max_runs_per_tick: Most batches one tick launches (the rest wait their turn).
        landing_tick_seconds: Time one tick may spend listing before it saves its place.
        landing_stale_hours: How long an incomplete batch is waited for.
        chain_interval_seconds: Seconds between ticks of the sensors chaining the stages.
        transient_retries: Retries of a step after a transient I/O failure (never after a
            refusal).
        retry_delay_seconds: Wait before the first such retry (doubling after each).
        max_runtime_seconds: Longest a stage run may take before run monitoring stops it.
    """

    ingest: IsolationSpec = IsolationSpec(
        namespace="sp-ingest", service_account="sp-ingest", cpu_request="500m",
        memory_request="1Gi", cpu_limit="1", memory_limit="3Gi", env_secrets=("sp-ingest-env",),
    )  # fmt: skip
    train: IsolationSpec = IsolationSpec()
    registry: IsolationSpec = IsolationSpec(
        namespace="sp-registry", service_account="sp-registry", cpu_request="500m",
        memory_request="1Gi", cpu_limit="1", memory_limit="2Gi",
        env_secrets=("sp-registry-env", "sp-registry-signing"),
    )  # fmt: skip
    control_namespace: str = "sp-dagster"
    run_service_account: str = "sp-run"
    image: str | None = None
    ingest_cron: str | None = "0 2 * * *"
    timezone: str = "UTC"
    landing_env_var: str | None = None
    landing_interval_seconds: int = 60
    landing_max_runs_per_tick: int = 25
    landing_tick_seconds: float = 1.5
    landing_stale_hours: float = 24.0
    chain_interval_seconds: int = 60
    transient_retries: int = 3
    max_runtime_seconds: int = 4 * 3600
    retry_delay_seconds: float = 2.0

    def problems(self) -> list[str]:
        """What is wrong with these settings, one line each."""
        found = []
        stages = {"ingest": self.ingest, "train": self.train, "registry": self.registry}
        namespaces = [s.namespace for s in stages.values()]
        if len(set(namespaces)) != len(namespaces) or self.control_namespace in namespaces:
            found.append(
                "each stage needs its own Kubernetes namespace, separate from the control "
                f"namespace; found {namespaces} and {self.control_namespace!r}"
            )
        for name, stage in stages.items():
            for label, value in (("namespace", stage.namespace),
                                 ("service account", stage.service_account)):  # fmt: skip
                if not _K8S_NAME.match(value):
                    found.append(f"{name} {label} {value!r} is not a valid Kubernetes name")
        if self.landing_env_var is not None and not _ENV_NAME.match(self.landing_env_var):
            found.append(f"landing_env_var {self.landing_env_var!r} is not a valid name")
        if self.ingest_cron is not None and len(self.ingest_cron.split()) != 5:
            found.append(f"ingest_cron {self.ingest_cron!r} must have five fields")
        for label, number in (("landing_max_runs_per_tick", self.landing_max_runs_per_tick),
                              ("landing_tick_seconds", self.landing_tick_seconds),
                              ("landing_interval_seconds", self.landing_interval_seconds),
                              ("chain_interval_seconds", self.chain_interval_seconds),
                              ("max_runtime_seconds", self.max_runtime_seconds)):  # fmt: skip
            if number <= 0:
                found.append(f"{label} must be positive")
        if self.transient_retries < 0 or self.retry_delay_seconds < 0:
            found.append("transient_retries and retry_delay_seconds must not be negative")
        return found


Estimator = Literal["logistic_regression", "hist_gradient_boosting", "random_forest",
                    "decision_tree"]  # fmt: skip


@dataclass(frozen=True)
class ModelSpec:
    """How ``trained_model`` is trained.

    Attributes:
        estimator: The scikit-learn estimator after the shared preprocessing (scaling of
            numeric features, one-hot encoding of categorical codes).
        params: Its hyperparameters.
        exclude_features: Features the model must not see (protected attributes, redundant
            views). They stay available to the fairness audit.
        train_member: Source file whose rows train the model (the rest of it is held out).
        test_member: Source file used as the external test set, if any.
        holdout_fraction: Share of the training file held out for evaluation.
        seed: Seed of every random choice (split, estimator, attacks).
    """

    estimator: Estimator = "logistic_regression"
    params: Mapping[str, Any] = field(default_factory=dict)
    exclude_features: tuple[str, ...] = ()
    train_member: str = "train"
    test_member: str | None = "test"
    holdout_fraction: float = 0.2
    seed: int = 0


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
        found.extend(self.orchestration.problems())
        found.extend(f"canary: {p}" for p in self.canary.problems())
        found.extend(self._model_problems())
        return found

    def _model_problems(self) -> list[str]:
        from secure_pipeline.features.engineering import feature_catalog

        found: list[str] = []
        if self.schema.label is None or self.schema.positive_label is None:
            found.append(
                "the pipeline trains a classifier: the schema needs a category label column "
                "and a positive_label"
            )
            return found
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
    def names(self) -> "PipelineNames":
        """Every name this pipeline defines: asset keys (prefixed by its name), jobs, sensors."""
        from secure_pipeline.names import PipelineNames

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

    def build_definitions(self, environment: "Environment | None" = None) -> "dg.Definitions":
        """Build the Dagster definitions of this pipeline.

        Args:
            environment: Build for this environment; the current one (``SECURE_PIPELINE_ENV``)
                when None.

        Returns:
            Assets, checks, stage jobs, schedule, sensors and resources, ready for a code
            location.

        Raises:
            ConfigurationError: When the environment is missing variables (all are listed).
        """
        from secure_pipeline.compose import build_definitions

        return build_definitions([self], environment)
