"""Fairness audit with fairlearn: per-group rates and the gaps between groups.

For every sensitive feature, fairlearn's ``MetricFrame`` gives each group's selection rate,
true- and false-positive rate and accuracy on the evaluation set; ``demographic_parity_
difference`` and ``equalized_odds_difference`` summarise the gaps. The gate then asks two
questions of each gated feature:

* **Equalized odds**: is a gap in true- or false-positive rate between two groups larger than
  the policy's limit *beyond sampling error*? A gap counts by the lower bound of its one-sided
  confidence interval, so a small group's noisy rate neither hides a real gap nor invents one.
  Groups with too few positives or negatives to estimate those rates are reported, not gated.
* **Demographic parity**: does the model widen the gap in positive rates already present in the
  labels by more than the policy allows? (A perfect classifier reproduces the labels' gap; the
  gate forbids amplifying it.)

Each feature's outcome is ``passed``, ``failed`` or ``cannot_be_judged``: the last when fewer
than two groups have enough positives and negatives among the evaluated rows. It still fails a
gating feature (a gate that cannot judge must not pass), but it is a distinct outcome, and for
every group too small to gate the audit states how many evaluated rows it would take, at the
group's share of positives or negatives, to reach the policy's minimum: ``min_group_size`` /
that share. The message says what to do: evaluate on more rows (more data, or cross-validation,
which evaluates every training row), merge small groups, or report the feature only.
"""

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

PASSED, FAILED, CANNOT_BE_JUDGED = "passed", "failed", "cannot_be_judged"


@dataclass(frozen=True)
class GroupRates:
    """One group's rates.

    Attributes:
        group: Group name.
        rows: Records in the group.
        positives: Of which labelled positive.
        selection_rate: Share predicted positive.
        true_positive_rate: Share of positives predicted positive.
        false_positive_rate: Share of negatives predicted positive.
        accuracy: Share predicted correctly.
        gated: Whether the group is large enough to gate on.
    """

    group: str
    rows: int
    positives: int
    selection_rate: float
    true_positive_rate: float
    false_positive_rate: float
    accuracy: float
    gated: bool


@dataclass
class FeatureAudit:
    """The audit of one sensitive feature.

    Attributes:
        feature: The sensitive feature.
        column: The feature-table column audited (a band for numeric attributes).
        gating: Whether this feature can fail the gate (else it is reported only).
        groups: Per-group rates.
        demographic_parity_difference: Largest gap in selection rate (gated groups).
        label_parity_difference: The same gap in the labels themselves.
        equalized_odds_difference: fairlearn's equalized-odds difference (gated groups).
        gap_beyond_noise: Largest lower confidence bound of a TPR/FPR gap (gated groups).
        problems: Why the feature fails, if it does (including why it cannot be judged).
        evaluated_rows: Rows the audit evaluated.
        unjudged: Why equalized odds cannot be judged, when it cannot.
        rows_needed: Per group too small to gate: evaluated rows it would take, at its share of
            positives or negatives, to reach the policy's minimum (None: the group has no
            positives or no negatives at all, so more rows of the same mix never will).
        rows_needed_for_verdict: Evaluated rows at which two groups would be gated (None when
            fewer than two groups ever could be).
    """

    feature: str
    column: str
    gating: bool
    groups: list[GroupRates] = field(default_factory=list)
    demographic_parity_difference: float = 0.0
    label_parity_difference: float = 0.0
    equalized_odds_difference: float = 0.0
    gap_beyond_noise: float = 0.0
    problems: list[str] = field(default_factory=list)
    evaluated_rows: int = 0
    unjudged: str | None = None
    rows_needed: dict[str, int | None] = field(default_factory=dict)
    rows_needed_for_verdict: int | None = None

    @property
    def outcome(self) -> str:
        """``failed`` (a problem shown), ``cannot_be_judged`` (only that) or ``passed``."""
        if any(p != self.unjudged for p in self.problems):
            return FAILED
        return CANNOT_BE_JUDGED if self.unjudged else PASSED


@dataclass
class FairnessResult:
    """The audit of every sensitive feature.

    Attributes:
        audits: One per sensitive feature.
    """

    audits: list[FeatureAudit]

    @property
    def passed(self) -> bool:
        """True when no gating feature has a problem."""
        return not any(a.problems for a in self.audits if a.gating)

    @property
    def outcome(self) -> str:
        """The outcome over the gating features.

        ``failed`` if one fails, else ``cannot_be_judged`` if one cannot be judged, else
        ``passed``.
        """
        outcomes = {a.outcome for a in self.audits if a.gating}
        for outcome in (FAILED, CANNOT_BE_JUDGED):
            if outcome in outcomes:
                return outcome
        return PASSED


def audit_fairness(
    y_true: "np.ndarray",
    y_pred: "np.ndarray",
    sensitive: Mapping[str, tuple[str, "np.ndarray", Sequence[str]]],
    *,
    max_equalized_odds_difference: float,
    max_parity_amplification: float,
    min_group_size: int,
    confidence: float,
    report_only: Sequence[str] = (),
) -> FairnessResult:
    """Audit predictions for each sensitive feature.

    Args:
        y_true: Labels (0/1) of the evaluation records.
        y_pred: Predictions (0/1).
        sensitive: Feature name to ``(column, codes, category names)``; code -1 is missing.
        max_equalized_odds_difference: Limit on a TPR/FPR gap beyond noise.
        max_parity_amplification: Limit on model parity gap minus label parity gap.
        min_group_size: Positives and negatives a group needs to be gated.
        confidence: Confidence of the lower bound a gap must clear.
        report_only: Features audited but not gating.

    Returns:
        The audit.
    """
    import numpy as np
    from fairlearn.metrics import (
        MetricFrame,
        false_positive_rate,
        selection_rate,
        true_positive_rate,
    )
    from scipy.stats import norm
    from sklearn.metrics import accuracy_score

    z = float(norm.ppf(confidence))
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    audits = []
    for feature, (column, codes, names) in sensitive.items():
        # code -1 (missing) indexes the last name
        labels = np.asarray([*names, "missing"], dtype=object)[np.asarray(codes, dtype=int)]
        frame = MetricFrame(
            metrics={
                "selection_rate": selection_rate,
                "true_positive_rate": true_positive_rate,
                "false_positive_rate": false_positive_rate,
                "accuracy": accuracy_score,
            },
            y_true=y_true,
            y_pred=y_pred,
            sensitive_features=labels,
        )
        audit = FeatureAudit(feature, column, feature not in report_only)
        audit.evaluated_rows = int(len(y_true))
        for group, row in frame.by_group.iterrows():
            members = labels == group
            positives = int(y_true[members].sum())
            negatives = int(members.sum()) - positives
            audit.groups.append(
                GroupRates(
                    group=str(group),
                    rows=int(members.sum()),
                    positives=positives,
                    selection_rate=float(row["selection_rate"]),
                    true_positive_rate=float(row["true_positive_rate"]),
                    false_positive_rate=float(row["false_positive_rate"]),
                    accuracy=float(row["accuracy"]),
                    gated=min(positives, negatives) >= min_group_size,
                )
            )
        gated = [g for g in audit.groups if g.gated]
        # Selection rates need only enough people; error rates need enough of each label.
        sizable = [g.group for g in audit.groups if g.rows >= min_group_size]
        if len(sizable) >= 2:
            # The differences fairlearn's demographic_parity_difference and
            # equalized_odds_difference give (largest minus smallest group rate), read from the
            # rates this MetricFrame already holds: each of those functions builds a
            # MetricFrame of its own, which was most of the audit's time on small data.
            chosen = [g for g in audit.groups if g.group in sizable]
            audit.demographic_parity_difference = _spread(g.selection_rate for g in chosen)
            audit.label_parity_difference = _spread(g.positives / g.rows for g in chosen)
            amplification = audit.demographic_parity_difference - audit.label_parity_difference
            if amplification > max_parity_amplification:
                audit.problems.append(
                    f"{feature}: selection-rate gap {audit.demographic_parity_difference:.3f} "
                    f"exceeds the labels' own gap {audit.label_parity_difference:.3f} by "
                    f"{amplification:.3f} (limit {max_parity_amplification})"
                )
        _rows_needed(audit, min_group_size)
        if len(gated) < 2:
            # A gate that cannot judge must not pass: too few people with each label per group.
            audit.unjudged = _unjudged(audit, feature, min_group_size)
            audit.problems.append(audit.unjudged)
        else:
            audit.equalized_odds_difference = max(
                _spread(g.true_positive_rate for g in gated),
                _spread(g.false_positive_rate for g in gated),
            )
            audit.gap_beyond_noise, worst = _gap_beyond_noise(gated, z)
            if audit.gap_beyond_noise > max_equalized_odds_difference:
                audit.problems.append(
                    f"{feature}: {worst} differs by more than {max_equalized_odds_difference} "
                    f"beyond sampling error (lower bound {audit.gap_beyond_noise:.3f} at "
                    f"{confidence:.0%} confidence)"
                )
        audits.append(audit)
    return FairnessResult(audits)


def _spread(rates: Iterable[float]) -> float:
    """Largest minus smallest of group rates (fairlearn's ``between_groups`` difference)."""
    values = list(rates)
    return float(max(values) - min(values))


def _rows_needed(audit: FeatureAudit, min_group_size: int) -> None:
    """Evaluated rows each group needs to be gated, at its share of its rarer label."""
    total = audit.evaluated_rows
    needs = []
    for g in audit.groups:
        rarer = min(g.positives, g.rows - g.positives)
        need = math.ceil(min_group_size * total / rarer) if rarer else None
        if need is not None:
            needs.append(need)
        if not g.gated:
            audit.rows_needed[g.group] = need
    audit.rows_needed_for_verdict = sorted(needs)[1] if len(needs) >= 2 else None


def _unjudged(audit: FeatureAudit, feature: str, min_group_size: int) -> str:
    """Why equalized odds cannot be judged, with what it would take."""
    short = []
    for g in audit.groups:
        if g.gated:
            continue
        need = audit.rows_needed.get(g.group)
        negatives = g.rows - g.positives
        short.append(
            f"{g.group!r} has {g.positives} positives and {negatives} negatives"
            + (
                f" (about {need} evaluated rows at its share)"
                if need is not None
                else f" (no {'positives' if not g.positives else 'negatives'}: merge it)"
            )
        )
    if audit.rows_needed_for_verdict is not None:
        more = f"evaluate on at least {audit.rows_needed_for_verdict} rows"
    else:
        more = "evaluate on more rows"
    return (
        f"{feature}: cannot be judged: fewer than two groups have {min_group_size} positives "
        f"and {min_group_size} negatives in the evaluation set ({audit.evaluated_rows} rows; "
        f"{'; '.join(short)}), so equalized odds cannot be judged. To judge it, {more} (more "
        "data, or model.evaluation: cross_validation, which evaluates every training row), "
        "merge small groups into fewer categories, or list the feature in "
        "fairness_report_only."
    )


def _gap_beyond_noise(groups: list[GroupRates], z: float) -> tuple[float, str]:
    """Largest lower confidence bound of a TPR or FPR gap between two groups."""
    import math

    worst, where = 0.0, "no rate"
    for a, b in combinations(groups, 2):
        for rate, size_a, size_b, name in (
            (lambda g: g.true_positive_rate, a.positives, b.positives, "true-positive rate"),
            (
                lambda g: g.false_positive_rate,
                a.rows - a.positives,
                b.rows - b.positives,
                "false-positive rate",
            ),
        ):
            ra, rb = rate(a), rate(b)
            error = math.sqrt(ra * (1 - ra) / size_a + rb * (1 - rb) / size_b)
            bound = abs(ra - rb) - z * error
            if bound > worst:
                worst = bound
                where = f"{name} of {a.group!r} ({ra:.3f}) and {b.group!r} ({rb:.3f})"
    return worst, where
