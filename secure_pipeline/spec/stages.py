"""How each stage runs: features, model training, and the stage jobs' orchestration."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from secure_pipeline.names import IDENTITY_TAG
from secure_pipeline.spec._patterns import ENV_NAME, K8S_NAME

DerivationKind = Literal["map", "band", "date_difference"]


@dataclass(frozen=True)
class DerivedColumn:
    """A feature computed from validated columns, by the same code in training and serving.

    Attributes:
        name: Name of the derived feature (snake_case, unlike any column or other feature).
        kind: ``map`` (a value map: each source value to a category), ``band`` (a numeric
            source cut into bands at ``cuts``) or ``date_difference`` (``end`` minus
            ``source``, two date or datetime columns, in ``unit``).
        source: The validated column it is computed from (the earlier date for
            ``date_difference``).
        values: For ``map``: source value (as written after parsing) to derived category, e.g.
            ``A91`` to ``male``.
        default: For ``map``: the category of a source value not listed (unset: missing).
            A category source must then list every allowed value, so that a typo is caught.
        categories: For ``map``: the categories in code order (unset: the mapped values in the
            order first listed).
        cuts: For ``band``: ascending cut points; band ``i`` holds values in
            ``[cuts[i-1], cuts[i])``.
        end: For ``date_difference``: the later date column.
        unit: For ``date_difference``: ``days`` or ``years`` (365.25 days).
        sensitive: Whether it describes a protected group (same as naming it in the
            pipeline's ``sensitive_features``).
        description: What it means, shown in the feature catalog.
    """

    name: str
    kind: DerivationKind
    source: str
    values: tuple[tuple[str, str], ...] = ()
    default: str | None = None
    categories: tuple[str, ...] = ()
    cuts: tuple[float, ...] = ()
    end: str | None = None
    unit: Literal["days", "years"] = "days"
    sensitive: bool = False
    description: str = ""

    @property
    def sources(self) -> tuple[str, ...]:
        """Every validated column it reads."""
        return (self.source, self.end) if self.end is not None else (self.source,)

    @property
    def output_categories(self) -> tuple[str, ...]:
        """For ``map``: the categories in code order."""
        if self.categories:
            return self.categories
        found = [*(v for _, v in self.values), *([self.default] if self.default else [])]
        return tuple(dict.fromkeys(found))


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
        derived: Declarative derived features (value maps, bands, date differences).
    """

    exclude: tuple[str, ...] = ()
    bands: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    log1p: tuple[str, ...] = ()
    derived: tuple[DerivedColumn, ...] = ()


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
        privacy: Isolation of the privacy job (completing erasures, retention): the only stage
            that may destroy data keys.
        monitor: Isolation of the monitor job (the live checks of the served champion): it
            reads the recorded live traffic and the champion's training snapshot, and signs
            its verdicts with the ``monitor`` key.
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
    privacy: IsolationSpec = IsolationSpec(
        namespace="sp-privacy", service_account="sp-privacy", cpu_request="250m",
        memory_request="512Mi", cpu_limit="1", memory_limit="1Gi", env_secrets=("sp-privacy-env",),
    )  # fmt: skip
    monitor: IsolationSpec = IsolationSpec(
        namespace="sp-monitor", service_account="sp-monitor", cpu_request="250m",
        memory_request="1Gi", cpu_limit="1", memory_limit="2Gi", env_secrets=("sp-monitor-env",),
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
        stages = {"ingest": self.ingest, "train": self.train, "registry": self.registry,
                  "privacy": self.privacy, "monitor": self.monitor}  # fmt: skip
        namespaces = [s.namespace for s in stages.values()]
        if len(set(namespaces)) != len(namespaces) or self.control_namespace in namespaces:
            found.append(
                "each stage needs its own Kubernetes namespace, separate from the control "
                f"namespace; found {namespaces} and {self.control_namespace!r}"
            )
        for name, stage in stages.items():
            for label, value in (("namespace", stage.namespace),
                                 ("service account", stage.service_account)):  # fmt: skip
                if not K8S_NAME.match(value):
                    found.append(f"{name} {label} {value!r} is not a valid Kubernetes name")
        if self.landing_env_var is not None and not ENV_NAME.match(self.landing_env_var):
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


# A built-in estimator name, or the import path of any scikit-learn-compatible classifier.
Estimator = str
BUILTIN_ESTIMATORS: Mapping[str, str] = {
    "logistic_regression": "sklearn.linear_model.LogisticRegression",
    "hist_gradient_boosting": "sklearn.ensemble.HistGradientBoostingClassifier",
    "random_forest": "sklearn.ensemble.RandomForestClassifier",
    "decision_tree": "sklearn.tree.DecisionTreeClassifier",
}
Evaluation = Literal["auto", "holdout", "cross_validation"]


@dataclass(frozen=True)
class ModelSpec:
    """How ``trained_model`` is trained.

    Attributes:
        estimator: The classifier after the shared preprocessing (scaling of numeric
            features, one-hot encoding of categorical codes): a built-in name
            (``logistic_regression``, ``hist_gradient_boosting``, ``random_forest``,
            ``decision_tree``) or the import path of any scikit-learn-compatible classifier
            with ``predict_proba`` (``sklearn.ensemble.ExtraTreesClassifier``,
            ``lightgbm.LGBMClassifier``). The path is resolved when the spec is built, without
            importing the estimator.
        params: Its hyperparameters (``random_state`` is set from ``seed`` when it has one).
        trusted_types: Types beyond the project's own that the saved model contains and
            that loading may therefore accept (skops refuses every other type); shown in the
            model card. A library estimator's internal classes, e.g.
            ``lightgbm.basic.Booster``.
        exclude_features: Features the model must not see (protected attributes, redundant
            views). They stay available to the fairness audit.
        train_member: Source file whose rows train the model (the rest of it is held out).
        test_member: Source file used as the external test set, if any.
        holdout_fraction: Share of the training file held out for evaluation.
        seed: Seed of every random choice (split, estimator, attacks).
        evaluation: How the gates judge the model: ``holdout`` (on the evaluation rows),
            ``cross_validation`` (stratified k-fold over every training row, so small data gets
            a verdict from all its rows) or ``auto`` (cross-validation when the training file
            has fewer than ``cross_validation_below`` rows).
        folds: Folds of the cross-validation.
        cross_validation_below: Training rows below which ``auto`` cross-validates.
    """

    estimator: Estimator = "logistic_regression"
    params: Mapping[str, Any] = field(default_factory=dict)
    trusted_types: tuple[str, ...] = ()
    exclude_features: tuple[str, ...] = ()
    train_member: str = "train"
    test_member: str | None = "test"
    holdout_fraction: float = 0.2
    seed: int = 0
    evaluation: Evaluation = "auto"
    folds: int = 5
    cross_validation_below: int = 20_000

    @property
    def estimator_path(self) -> str:
        """Import path of the estimator class (a built-in name resolved)."""
        return BUILTIN_ESTIMATORS.get(self.estimator, self.estimator)

    def cross_validates(self, training_rows: int) -> bool:
        """Whether the gates judge by cross-validation for a training file of this size."""
        if self.evaluation == "auto":
            return training_rows < self.cross_validation_below
        return self.evaluation == "cross_validation"
