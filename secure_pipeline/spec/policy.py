"""Gate thresholds, when a blue-green canary may take all traffic, how a served model is watched."""

import functools
import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Literal


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
        membership_confidence: Confidence of the interval the attack's AUC and advantage must
            clear to fail the gate: the attack is judged beyond its sampling error, which is
            large when few records are attacked (a chance-level attack on 100 vs 100 records
            often shows an advantage of 0.15).
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
        poisoning_screen: Whether the poisoning screen gates the features (label issues and
            outliers found from cross-validated predictions).
        max_suspected_poisoning: Largest share of training rows the screen may flag as
            suspected label issues before the features fail (clean tabular data has some
            label noise of its own; set this above the share your clean data shows).
        max_poisoning_increase: When set, a batch also fails when its suspected share exceeds
            the share the screen found in the current champion's training data (read from that
            snapshot's signed verdict) by more than this: where the inputs decide the label only
            weakly, the data's own share is large, and an increase is what tells poisoning
            apart. Without a champion only ``max_suspected_poisoning`` applies.
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
    membership_confidence: float = 0.95
    poisoning_screen: bool = True
    max_suspected_poisoning: float = 0.05
    max_poisoning_increase: float | None = None

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
        for name in ("fairness_confidence", "membership_confidence"):
            if not 0.5 < getattr(self, name) < 1:
                found.append(f"{name} must be between 0.5 and 1")
        if self.max_poisoning_increase is not None and not 0 <= self.max_poisoning_increase <= 1:
            found.append(
                f"max_poisoning_increase must be in [0, 1], found {self.max_poisoning_increase}"
            )
        if not 0 <= self.max_suspected_poisoning <= 1:
            found.append(
                f"max_suspected_poisoning must be in [0, 1], found {self.max_suspected_poisoning}"
            )
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
class CanaryPolicy:
    """When a canary may take all the traffic.

    Attributes:
        canary_weight: Share of traffic (percent) the new slot gets while it is judged.
        min_requests: Canary ``/predict`` requests needed before judging.
        observe_seconds: Longest wait for that traffic; then the canary fails as inconclusive.
        max_error_rate: Largest share of non-2xx canary answers.
        max_error_rate_increase: Largest increase of that share over the live slot's.
        max_p95_ratio: Largest canary p95 latency as a multiple of the live slot's ...
        min_p95_slack_seconds: ... ignored while the canary's p95 is within this of the live
            one (a few milliseconds of bucket noise is not a regression).
        max_score_psi: Largest population stability index between the slots' score
            distributions.
        ready_timeout_seconds: How long the new slot may take to verify and load its model.
    """

    canary_weight: int = 10
    min_requests: int = 100
    observe_seconds: float = 600.0
    max_error_rate: float = 0.01
    max_error_rate_increase: float = 0.005
    max_p95_ratio: float = 1.5
    min_p95_slack_seconds: float = 0.010
    max_score_psi: float = 0.1
    ready_timeout_seconds: float = 180.0

    def problems(self) -> list[str]:
        """What is inconsistent in these settings."""
        found = []
        if not 1 <= self.canary_weight <= 50:
            found.append(f"canary_weight must be 1..50 percent, found {self.canary_weight}")
        if self.min_requests < 1:
            found.append(f"min_requests must be at least 1, found {self.min_requests}")
        for name in ("max_error_rate", "max_error_rate_increase"):
            if not 0 <= getattr(self, name) <= 1:
                found.append(f"{name} must be a share in [0, 1]")
        if self.max_p95_ratio < 1:
            found.append(f"max_p95_ratio must be >= 1, found {self.max_p95_ratio}")
        if self.observe_seconds <= 0 or self.ready_timeout_seconds <= 0:
            found.append("observe_seconds and ready_timeout_seconds must be positive")
        return found


@dataclass(frozen=True)
class MonitoringSpec:
    """How a served model is watched: live traffic recording, its checks, automatic rollback.

    The serving slots record a sample of what they score (the model's input features, the
    sensitive columns a request carries, the score and label; never a column with role
    ``identifier``, ``personal`` or ``ignore``) and write it to the snapshot store in signed
    batches; the ``live_traffic`` asset judges the recent batches on a schedule against the
    champion's training snapshot. The drift thresholds are the policy's (``drift_warn_psi``,
    ``drift_fail_psi``), the performance and fairness ones too (``min_roc_auc``,
    ``min_balanced_accuracy``, ``max_equalized_odds_difference``).

    Attributes:
        record: Whether the slots record live traffic at all.
        sample_rate: Share of scored rows recorded (0 < rate <= 1).
        batch_seconds: A slot closes its batch and writes it after this long (hourly by
            default), or sooner when it is full.
        max_batch_rows: Most rows one batch holds: a slot's memory for recording is bounded by
            it (rows beyond it before the batch closes are counted, not kept).
        schedule_cron: When ``live_traffic`` is materialized (its job's schedule).
        window_hours: Batches closed within this many hours before the run are judged.
        min_rows: Rows a window needs before drift is judged (fewer: a warning, not a failure:
            no traffic is not a model failure).
        min_labelled_rows: Rows with feedback labels needed before live performance and
            fairness are judged.
        score_fail_psi: Population stability index of the score distribution (live vs the
            champion on its training snapshot) at which score drift fails.
        max_error_rate: Largest share of ``/predict`` requests answered 5xx in the window.
        auto_rollback: Whether a failed blocking live check rolls the champion back to the
            previous one automatically (verified again, signed, audited, traffic moved).
        stale_after_hours: ``live_traffic`` is shown overdue (its freshness policy fails) when
            it has not been materialized for this long.
    """

    record: bool = True
    sample_rate: float = 1.0
    batch_seconds: int = 3600
    max_batch_rows: int = 50_000
    schedule_cron: str = "15 * * * *"
    window_hours: int = 24
    min_rows: int = 200
    min_labelled_rows: int = 200
    score_fail_psi: float = 0.25
    max_error_rate: float = 0.01
    auto_rollback: bool = False
    stale_after_hours: int = 3

    def problems(self) -> list[str]:
        """What is inconsistent in these settings."""
        found = []
        if not 0 < self.sample_rate <= 1:
            found.append(f"sample_rate must be in (0, 1], found {self.sample_rate}")
        if self.batch_seconds < 1:
            found.append(f"batch_seconds must be at least 1, found {self.batch_seconds}")
        if self.max_batch_rows < 1:
            found.append(f"max_batch_rows must be at least 1, found {self.max_batch_rows}")
        if len(self.schedule_cron.split()) != 5:
            found.append(
                f"schedule_cron must be a five-field cron expression, found {self.schedule_cron!r}"
            )
        for name in ("window_hours", "stale_after_hours"):
            if getattr(self, name) < 1:
                found.append(f"{name} must be at least 1, found {getattr(self, name)}")
        for name in ("min_rows", "min_labelled_rows"):
            if getattr(self, name) < 1:
                found.append(f"{name} must be at least 1, found {getattr(self, name)}")
        if self.score_fail_psi <= 0:
            found.append(f"score_fail_psi must be positive, found {self.score_fail_psi}")
        if not 0 <= self.max_error_rate <= 1:
            found.append(f"max_error_rate must be a share in [0, 1], found {self.max_error_rate}")
        return found


ErasedDataModels = Literal["refuse", "warn"]


@dataclass(frozen=True)
class PrivacySpec:
    """How the pipeline processes personal data: the record of processing and erasure policy.

    The descriptive fields feed the GDPR Art. 30 record (``secure-pipeline privacy record``);
    the categories of personal data come from the column roles, the retention from the source.

    Attributes:
        purpose: Why the data is processed (Art. 30(1)(b)).
        controller: Who decides the purpose: name and contact of the controller (and of its
            data protection officer).
        legal_basis: The lawful basis (Art. 6), e.g. ``contract`` or ``legitimate interests``.
        data_subjects: Categories of data subjects, e.g. ``loan applicants``.
        recipients: Recipients beyond the pipeline's own stages and the model's callers.
        erased_data_models: What promotion and serving do with a model trained on data that
            was since erased or expired: ``refuse`` (default: it may not be promoted or served
            until a retrained model replaces it) or ``warn`` (allowed, with a warning step in
            its evidence).
        retention_overrides_champion: Whether retention also expires snapshots the current
            champion was trained on (its model is then flagged as trained on erased data);
            by default those are kept until a newer champion replaces it.
        key_deletion_window_days: Waiting period of a KMS key deletion (7 to 30 days); the
            key is unusable from the moment it is scheduled.
        enforce_cron: Cron schedule of the privacy job that completes pending erasures and
            applies retention (None: no schedule).
    """

    purpose: str = ""
    controller: str = ""
    legal_basis: str = ""
    data_subjects: tuple[str, ...] = ()
    recipients: tuple[str, ...] = ()
    erased_data_models: ErasedDataModels = "refuse"
    retention_overrides_champion: bool = False
    key_deletion_window_days: int = 7
    enforce_cron: str | None = "30 3 * * *"

    def problems(self) -> list[str]:
        """What is wrong with these settings, one line each."""
        found = []
        if self.erased_data_models not in ("refuse", "warn"):
            found.append(
                f"privacy erased_data_models must be 'refuse' or 'warn', found "
                f"{self.erased_data_models!r}"
            )
        if not 7 <= self.key_deletion_window_days <= 30:
            found.append(
                "privacy key_deletion_window_days must be between 7 and 30 (the waiting "
                f"period AWS KMS allows), found {self.key_deletion_window_days}"
            )
        if self.enforce_cron is not None and len(self.enforce_cron.split()) != 5:
            found.append(f"privacy enforce_cron {self.enforce_cron!r} must have five fields")
        return found
