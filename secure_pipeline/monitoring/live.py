"""The live checks' arithmetic: what the served champion scored, judged against its training.

Given the rows a window of signed live batches holds (`secure_pipeline.serving.recording.
LiveWindow`: traffic rows with the model's input features, the sensitive columns a request
carried, score, predicted label and prediction id; feedback rows of id and true label; request
counts), the champion's training features and its scores on its held-out rows, each function
here gives one check's `LiveOutcome`:

* `input_drift`: population stability index (PSI) of every model input recorded, live against
  the training snapshot (`secure_pipeline.features.drift.population_stability`), warned at
  ``drift_warn_psi``, failed at ``drift_fail_psi``.
* `score_drift`: PSI of the live scores against the champion's scores on its held-out rows,
  failed at ``monitoring.score_fail_psi``.
* `error_rate`: share of ``/predict`` requests answered 5xx, failed above
  ``monitoring.max_error_rate``.
* `performance`: ROC AUC and balanced accuracy on the live rows that received a feedback label
  (joined on the prediction id), failed below ``min_roc_auc`` / ``min_balanced_accuracy``.
* `fairness`: equalized odds per sensitive feature on those rows, with fairlearn as the training
  gate does (`secure_pipeline.mlsec.fairness.audit_fairness`: groups with fewer than
  ``fairness_min_group_size`` positives or negatives are not gated; a gap counts by the lower
  bound of its confidence interval, so sampling noise on a few hundred labels neither rolls a
  model back nor hides a real gap), failed above ``max_equalized_odds_difference``; features in
  ``fairness_report_only`` are reported, never gated.

Too little evidence is not a model failure: fewer than ``monitoring.min_rows`` rows (drift), no
requests (error rate), fewer than ``monitoring.min_labelled_rows`` labels (performance,
fairness), or groups too small to compare are *inconclusive*: the check fails with WARN
severity, which blocks nothing and rolls nothing back, and says what it would take.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from secure_pipeline.names import (
    LIVE_ERROR_RATE,
    LIVE_FAIRNESS,
    LIVE_INPUT_DRIFT,
    LIVE_PERFORMANCE,
    LIVE_SCORE_DRIFT,
)
from secure_pipeline.spec import Feature, PipelineSpec, feature_catalog

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

Severity = Literal["ERROR", "WARN"]
ERROR: Severity = "ERROR"
WARN: Severity = "WARN"

# Columns of a traffic row besides the features (recording.py's contract).
SCORE, PREDICTED, ID = "score", "label", "id"
# A score at or above this is predicted positive, as the model server decides.
DECISION_THRESHOLD = 0.5
# The synthetic feature the score distribution is binned as (quantile bins, like a number).
_SCORE_FEATURE = Feature("score", "numeric", "score")


@dataclass(frozen=True)
class LiveOutcome:
    """One live check's outcome.

    Attributes:
        check: The check's name (`secure_pipeline.names.LIVE_CHECKS`).
        passed: Whether it passed.
        severity: ``ERROR`` (a failure blocks and may roll back) or ``WARN`` (reported only:
            a warning, or too little evidence to judge).
        inconclusive: True when there was too little evidence to judge (then never ERROR).
        figures: Headline numbers (floats and ints): for the signed verdict and the UI's plots.
        details: Structured detail for the UI (JSON-serializable).
        problem: Why it did not pass, with what to do; None when it passed.
    """

    check: str
    passed: bool
    severity: Severity
    inconclusive: bool
    figures: Mapping[str, float | int]
    details: Mapping[str, Any] = field(default_factory=dict)
    problem: str | None = None


@dataclass(frozen=True)
class Labelled:
    """The live rows that received a feedback label.

    Attributes:
        rows: The traffic rows, in traffic order, each once.
        y_true: Their true labels (1 positive, 0 not).
        scores: The scores the model gave them.
        conflicting: Prediction ids given contradictory labels by feedback (left out).
        unmatched: Feedback ids no traffic row in the window has (a label for a prediction
            outside the window, not sampled, or made up: left out).
    """

    rows: "pd.DataFrame"
    y_true: "np.ndarray"
    scores: "np.ndarray"
    conflicting: int = 0
    unmatched: int = 0

    @property
    def y_pred(self) -> "np.ndarray":
        """Predicted labels (1 at score >= 0.5), as the server decided."""
        return (self.scores >= DECISION_THRESHOLD).astype("int8")


@dataclass(frozen=True)
class LiveJudgement:
    """Every live check's outcome on one window."""

    input_drift: LiveOutcome
    score_drift: LiveOutcome
    error_rate: LiveOutcome
    performance: LiveOutcome
    fairness: LiveOutcome

    def by_check(self) -> dict[str, LiveOutcome]:
        """Check name to outcome."""
        outcomes = (self.input_drift, self.score_drift, self.error_rate, self.performance,
                    self.fairness)  # fmt: skip
        return {o.check: o for o in outcomes}


def _inconclusive(check: str, figures: Mapping[str, float | int], why: str,
                  details: Mapping[str, Any] | None = None) -> LiveOutcome:  # fmt: skip
    return LiveOutcome(check, False, WARN, True, dict(figures), dict(details or {}), why)


def recorded_features(pipeline: PipelineSpec, traffic: "pd.DataFrame") -> list[Feature]:
    """The catalog features the traffic rows carry encoded (the model's inputs), in order.

    A column of text under a feature's name is the raw value of a sensitive column a request
    carried, not the feature's encoding: it is not compared (`sensitive_codes` encodes it).
    """
    import pandas as pd

    return [
        f
        for f in feature_catalog(pipeline)
        if f.name in traffic.columns
        and (pd.api.types.is_numeric_dtype(traffic[f.name]) or traffic[f.name].isna().all())
    ]


def _as_features(frame: "pd.DataFrame", features: Sequence[Feature]) -> "pd.DataFrame":
    """Feature columns as floats, categorical codes outside the catalog's range as missing.

    A recorded code comes from the same encoder as the training one; one out of range (or
    missing) would otherwise make `population_stability` miscount, so it counts as missing.
    """
    import numpy as np
    import pandas as pd

    columns = {}
    for feature in features:
        values = pd.to_numeric(frame[feature.name], errors="coerce").to_numpy(
            dtype="float64", na_value=np.nan
        )
        if feature.kind == "categorical":
            valid = (
                (values >= 0) & (values < len(feature.categories)) & (values == np.floor(values))
            )
            values = np.where(valid, values, -1.0)
        columns[feature.name] = values
    return pd.DataFrame(columns)


def input_drift(
    pipeline: PipelineSpec,
    traffic: "pd.DataFrame",
    reference: "pd.DataFrame",
    inputs: Sequence[str] | None = None,
) -> LiveOutcome:
    """PSI of every recorded model input, live rows against the champion's training features.

    Args:
        pipeline: The spec (thresholds, bins, catalog).
        traffic: The window's traffic rows.
        reference: The features snapshot the champion was trained on.
        inputs: The champion's input features, when known: only they are compared (a
            sensitive column a request may carry beside them is recorded raw, and is often
            left out of requests altogether).

    Returns:
        The ``live_input_drift`` outcome: ERROR at ``drift_fail_psi``, a WARN failure at
        ``drift_warn_psi`` or with fewer than ``monitoring.min_rows`` rows.
    """
    from secure_pipeline.features.drift import population_stability

    policy, monitoring = pipeline.policy, pipeline.monitoring
    rows = len(traffic)
    features = [
        f for f in recorded_features(pipeline, traffic)
        if f.name in reference.columns and (inputs is None or f.name in inputs)
    ]  # fmt: skip
    psi: dict[str, float] = {}
    if rows and features:
        drift = population_stability(
            _as_features(reference, features), _as_features(traffic, features), features,
            policy.drift_bins,
        )  # fmt: skip
        psi = {d.feature: round(d.psi, 6) for d in drift}
    worst = max(psi, key=lambda k: psi[k]) if psi else None
    max_psi = psi[worst] if worst else 0.0
    figures = {"rows": rows, "max_psi": max_psi, "features": len(features)}
    details = {"psi_by_feature": psi, "most_drifted": worst or "none"}
    if rows and not features:
        # The batches carry no model input this spec knows: nothing can be compared.
        return _inconclusive(
            LIVE_INPUT_DRIFT, figures,
            "the live rows carry none of the pipeline's features (columns: "
            f"{', '.join(map(str, list(traffic.columns)[:12]))}): the slots record another "
            "spec's inputs, or none; check that the served model is this pipeline's",
            details,
        )  # fmt: skip
    if rows < monitoring.min_rows:
        return _inconclusive(
            LIVE_INPUT_DRIFT, figures,
            f"{rows} live rows in the window, {monitoring.min_rows} are needed to judge drift "
            f"(monitoring.min_rows): wait for more traffic, widen window_hours "
            f"({monitoring.window_hours}) or raise sample_rate ({monitoring.sample_rate})",
            details,
        )  # fmt: skip
    failed, warned = max_psi >= policy.drift_fail_psi, max_psi >= policy.drift_warn_psi
    problem = None
    if warned:
        problem = (
            f"live inputs drifted from the champion's training data: {worst} PSI {max_psi:.3f} "
            f"(warn {policy.drift_warn_psi}, fail {policy.drift_fail_psi}) on {rows} rows"
            + ("; the population the model serves changed: retrain or review" if failed else "")
        )
    return LiveOutcome(LIVE_INPUT_DRIFT, not warned, ERROR if failed else WARN, False, figures,
                       details, problem)  # fmt: skip


def score_drift(
    pipeline: PipelineSpec, live_scores: "np.ndarray", reference_scores: "np.ndarray"
) -> LiveOutcome:
    """PSI of the live scores against the champion's scores on its held-out rows.

    Args:
        pipeline: The spec.
        live_scores: The scores of the window's traffic rows.
        reference_scores: The champion's scores on the held-out rows of its training snapshot.

    Returns:
        The ``live_score_drift`` outcome: ERROR at ``monitoring.score_fail_psi``, inconclusive
        (WARN) with fewer than ``monitoring.min_rows`` rows.
    """
    import numpy as np
    import pandas as pd

    from secure_pipeline.features.drift import population_stability

    monitoring = pipeline.monitoring
    live = np.asarray(live_scores, dtype="float64")
    rows = int(live.size)
    psi = 0.0
    if rows:
        reference = pd.DataFrame({"score": np.asarray(reference_scores, dtype="float64")})
        psi = population_stability(reference, pd.DataFrame({"score": live}), [_SCORE_FEATURE],
                                   pipeline.policy.drift_bins)[0].psi  # fmt: skip
    figures = {
        "rows": rows,
        "score_psi": round(float(psi), 6),
        "mean_score": round(float(live.mean()), 6) if rows else 0.0,
        "reference_mean_score": round(float(np.mean(reference_scores)), 6)
        if len(reference_scores)
        else 0.0,
        "fail_at": monitoring.score_fail_psi,
    }
    if rows < monitoring.min_rows:
        return _inconclusive(
            LIVE_SCORE_DRIFT, figures,
            f"{rows} live scores in the window, {monitoring.min_rows} are needed to judge "
            "score drift (monitoring.min_rows)",
        )  # fmt: skip
    failed = psi >= monitoring.score_fail_psi
    problem = (
        f"the champion's live scores drifted: PSI {psi:.3f} against its scores on its held-out "
        f"rows (fail at {monitoring.score_fail_psi}; mean {figures['mean_score']:.3f} live, "
        f"{figures['reference_mean_score']:.3f} held out)"
        if failed
        else None
    )
    return LiveOutcome(LIVE_SCORE_DRIFT, not failed, ERROR, False, figures, {}, problem)


def error_rate(
    pipeline: PipelineSpec, requests: int, errors: int, refusals: int = 0
) -> LiveOutcome:
    """Share of ``/predict`` requests the slots answered with a server error (5xx).

    Refusals (4xx: a request that did not match the schema) are the caller's errors, counted
    and shown, not judged. Every request counts, however few: a server error is the server's
    fault at any volume. No request at all is inconclusive.

    Args:
        pipeline: The spec.
        requests: ``/predict`` answers counted in the window.
        errors: Of which 5xx.
        refusals: Of which 4xx.

    Returns:
        The ``live_error_rate`` outcome.
    """
    limit = pipeline.monitoring.max_error_rate
    rate = errors / requests if requests else 0.0
    figures = {
        "error_rate": round(rate, 6),
        "requests": int(requests),
        "errors": int(errors),
        "refusals": int(refusals),
        "max_error_rate": limit,
    }
    if requests <= 0:
        return _inconclusive(
            LIVE_ERROR_RATE, figures,
            "no /predict request was counted in the window: nothing to judge (the slots "
            "served no traffic, or recorded none: monitoring.record)",
        )  # fmt: skip
    failed = rate > limit
    problem = (
        f"{errors} of {requests} requests answered with a server error ({rate:.2%}); the "
        f"policy allows {limit:.2%} (monitoring.max_error_rate)"
        if failed
        else None
    )
    return LiveOutcome(LIVE_ERROR_RATE, not failed, ERROR, False, figures, {}, problem)


def labelled_rows(
    pipeline: PipelineSpec, traffic: "pd.DataFrame", feedback: "pd.DataFrame"
) -> Labelled:
    """Join the traffic rows with their feedback labels on the prediction id.

    A label is positive when it equals the schema's ``positive_label``. An id labelled twice
    the same way counts once; an id given contradictory labels is left out (which one is true
    cannot be told) and counted.

    Args:
        pipeline: The spec (its positive label).
        traffic: Traffic rows (``id``, ``score`` and the rest).
        feedback: Feedback rows (``id``, ``label``).
    """
    import numpy as np

    positive = str(pipeline.schema.positive_label)
    empty = Labelled(traffic.iloc[0:0], np.zeros(0, dtype="int8"), np.zeros(0))
    if not len(traffic) or not len(feedback) or ID not in traffic or ID not in feedback:
        return empty
    actual = feedback[[ID, PREDICTED]].dropna().astype({ID: "string", PREDICTED: "string"})
    actual = actual.assign(**{ID: actual[ID].str.lower()}).drop_duplicates()
    per_id = actual.groupby(ID)[PREDICTED].nunique()
    contradicted = set(per_id[per_id > 1].index)
    actual = actual[~actual[ID].isin(contradicted)].set_index(ID)[PREDICTED]
    ids = traffic[ID].astype("string").str.lower()
    # A prediction id is unique; a duplicated one (a slot's bug) is judged once.
    first = ~ids.duplicated()
    matched = first & ids.isin(actual.index)
    rows = traffic[matched.to_numpy()]
    truth = actual.loc[ids[matched].to_numpy()].to_numpy()
    return Labelled(
        rows=rows,
        y_true=(truth == positive).astype("int8"),
        scores=rows[SCORE].to_numpy(dtype="float64"),
        conflicting=len(contradicted),
        unmatched=int((~actual.index.isin(set(ids))).sum()),
    )


def _label_counts(labelled: Labelled) -> dict[str, int]:
    return {
        "labelled_rows": len(labelled.y_true),
        "positives": int(labelled.y_true.sum()),
        "conflicting_labels": labelled.conflicting,
        "unmatched_labels": labelled.unmatched,
    }


def performance(pipeline: PipelineSpec, labelled: Labelled) -> LiveOutcome:
    """ROC AUC and balanced accuracy of the champion on the labelled live rows.

    Args:
        pipeline: The spec.
        labelled: The live rows with feedback labels.

    Returns:
        The ``live_performance`` outcome: ERROR below ``min_roc_auc`` or
        ``min_balanced_accuracy``; inconclusive (WARN) with fewer than
        ``monitoring.min_labelled_rows`` labels or labels of one class only.
    """
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    policy, needed = pipeline.policy, pipeline.monitoring.min_labelled_rows
    counts = _label_counts(labelled)
    count, positives = counts["labelled_rows"], counts["positives"]
    figures: dict[str, float | int] = {"roc_auc": 0.0, "balanced_accuracy": 0.0, **counts}
    if count < needed:
        return _inconclusive(
            LIVE_PERFORMANCE, figures,
            f"{count} live predictions have a feedback label in the window, {needed} are "
            "needed to judge live performance (monitoring.min_labelled_rows): send labels "
            "with POST /feedback or `secure-pipeline live feedback`",
        )  # fmt: skip
    if positives in (0, count):
        return _inconclusive(
            LIVE_PERFORMANCE, figures,
            f"all {count} feedback labels are {'positive' if positives else 'negative'}: ROC "
            "AUC and balanced accuracy need labels of both classes",
        )  # fmt: skip
    auc = float(roc_auc_score(labelled.y_true, labelled.scores))
    balanced = float(balanced_accuracy_score(labelled.y_true, labelled.y_pred))
    figures.update(roc_auc=round(auc, 6), balanced_accuracy=round(balanced, 6),
                   min_roc_auc=policy.min_roc_auc,
                   min_balanced_accuracy=policy.min_balanced_accuracy)  # fmt: skip
    failures = []
    if not auc >= policy.min_roc_auc:
        failures.append(f"ROC AUC {auc:.3f} < {policy.min_roc_auc}")
    if not balanced >= policy.min_balanced_accuracy:
        failures.append(f"balanced accuracy {balanced:.3f} < {policy.min_balanced_accuracy}")
    problem = (
        f"the champion performs below the policy on {count} labelled live predictions: "
        + "; ".join(failures)
        if failures
        else None
    )
    return LiveOutcome(LIVE_PERFORMANCE, not failures, ERROR, False, figures, {}, problem)


def sensitive_codes(
    pipeline: PipelineSpec, rows: "pd.DataFrame"
) -> tuple[dict[str, tuple[str, "np.ndarray", Sequence[str]]], list[str]]:
    """Each sensitive feature's group codes on ``rows``, as the fairness audit takes them.

    A feature banded in the spec is audited on its band (as at training); its codes come from
    the band column when the rows carry it, else from the raw number. A categorical one from
    its codes (a number column: the model's input) or its raw values (text: the value the
    request carried), encoded with the training encoder.

    Returns:
        ``{feature: (column, codes, category names)}`` for the features the rows carry, and
        the sensitive features they do not carry (not a request field: not recorded).
    """
    import pandas as pd

    from secure_pipeline.features.engineering import feature_column

    catalog = {f.name: f for f in feature_catalog(pipeline)}
    found: dict[str, tuple[str, Any, Sequence[str]]] = {}
    missing = []
    for name in pipeline.sensitive_features:
        column = f"{name}_band" if name in pipeline.features.bands else name
        feature = catalog.get(column)
        if feature is None or feature.kind != "categorical":
            missing.append(name)
            continue
        if column in rows and pd.api.types.is_numeric_dtype(rows[column]):
            codes = _as_features(rows, [feature])[column].to_numpy().astype("int64")
        elif all(s in rows for s in feature.sources):
            codes = feature_column(feature, rows, pipeline).astype("int64")
        else:
            missing.append(name)
            continue
        found[name] = (column, codes, feature.categories)
    return found, missing


def fairness(pipeline: PipelineSpec, labelled: Labelled) -> LiveOutcome:
    """Equalized odds of the champion per sensitive feature on the labelled live rows.

    Args:
        pipeline: The spec.
        labelled: The live rows with feedback labels.

    Returns:
        The ``live_fairness`` outcome: ERROR when a gating feature's TPR or FPR gap exceeds
        ``max_equalized_odds_difference`` beyond sampling error; inconclusive (WARN) with too
        few labels, or when no gating feature could be judged (not recorded, or fewer than two
        groups with enough positives and negatives).
    """
    from secure_pipeline.mlsec.fairness import audit_fairness

    policy, needed = pipeline.policy, pipeline.monitoring.min_labelled_rows
    counts = _label_counts(labelled)
    count = counts["labelled_rows"]
    figures: dict[str, float | int] = {
        "max_equalized_odds_difference": 0.0,
        "max_gap_beyond_noise": 0.0,
        "limit": policy.max_equalized_odds_difference,
        **counts,
    }
    if count < needed:
        return _inconclusive(
            LIVE_FAIRNESS, figures,
            f"{count} live predictions have a feedback label in the window, {needed} are "
            "needed to judge live fairness (monitoring.min_labelled_rows)",
        )  # fmt: skip
    sensitive, missing = sensitive_codes(pipeline, labelled.rows)
    audit = audit_fairness(
        labelled.y_true, labelled.y_pred, sensitive,
        max_equalized_odds_difference=policy.max_equalized_odds_difference,
        max_parity_amplification=policy.max_parity_amplification,
        min_group_size=policy.fairness_min_group_size,
        confidence=policy.fairness_confidence,
        report_only=policy.fairness_report_only,
    )  # fmt: skip
    gaps = {
        a.feature: {
            "gating": a.gating,
            "equalized_odds_difference": round(a.equalized_odds_difference, 6),
            "gap_beyond_noise": round(a.gap_beyond_noise, 6),
            "judged": a.unjudged is None,
            "groups": {
                g.group: {
                    "rows": g.rows,
                    "positives": g.positives,
                    "gated": g.gated,
                    "tpr": round(g.true_positive_rate, 4),
                    "fpr": round(g.false_positive_rate, 4),
                }
                for g in a.groups
            },  # fmt: skip
            **({"why_not_judged": a.unjudged} if a.unjudged else {}),
        }
        for a in audit.audits
    }
    details = {"gaps": gaps, "not_recorded": missing,
               "reported_only": list(policy.fairness_report_only)}  # fmt: skip
    gating = [a for a in audit.audits if a.gating]
    judged = [a for a in gating if a.unjudged is None]
    if judged:
        figures["max_equalized_odds_difference"] = round(
            max(a.equalized_odds_difference for a in judged), 6
        )
        figures["max_gap_beyond_noise"] = round(max(a.gap_beyond_noise for a in judged), 6)
    figures["features_judged"] = len(judged)
    # Only the equalized-odds gap gates live: the parity rule compares the model with the labels'
    # own gap on the training population, which feedback labels do not sample evenly.
    over = [a for a in judged if a.gap_beyond_noise > policy.max_equalized_odds_difference]
    if over:
        problem = "; ".join(p for a in over for p in a.problems if "beyond sampling error" in p)
        problem = f"live predictions are unfair on {count} labelled rows: {problem}"
        return LiveOutcome(LIVE_FAIRNESS, False, ERROR, False, figures, details, problem)
    unjudged_gating = [a.feature for a in gating if a.unjudged is not None]
    missing_gating = [m for m in missing if m not in policy.fairness_report_only]
    if unjudged_gating or missing_gating:
        why = []
        if missing_gating:
            why.append(
                f"not recorded in the live rows: {', '.join(missing_gating)} (not a request "
                "field of the served model, so the slots cannot record it)"
            )
        why.extend(a.unjudged for a in gating if a.unjudged is not None)
        return _inconclusive(LIVE_FAIRNESS, figures,
                             "live fairness cannot be judged for every gating feature: "
                             + "; ".join(str(w) for w in why), details)  # fmt: skip
    return LiveOutcome(LIVE_FAIRNESS, True, ERROR, False, figures, details, None)


def judge_window(
    pipeline: PipelineSpec,
    *,
    traffic: "pd.DataFrame",
    feedback: "pd.DataFrame",
    requests: int,
    errors: int,
    refusals: int,
    reference_features: "pd.DataFrame",
    reference_scores: "np.ndarray",
    inputs: Sequence[str] | None = None,
) -> LiveJudgement:
    """Every live check's outcome on one window.

    Args:
        pipeline: The spec.
        traffic: The window's traffic rows.
        feedback: Its feedback rows.
        requests: ``/predict`` answers counted in the window.
        errors: Of which 5xx.
        refusals: Of which 4xx.
        reference_features: The champion's training features snapshot.
        reference_scores: The champion's scores on its held-out rows.
        inputs: The champion's input features (see `input_drift`).
    """
    import numpy as np

    labelled = labelled_rows(pipeline, traffic, feedback)
    scores = traffic[SCORE].to_numpy(dtype="float64") if SCORE in traffic else np.zeros(0)
    return LiveJudgement(
        input_drift=input_drift(pipeline, traffic, reference_features, inputs),
        score_drift=score_drift(pipeline, scores, reference_scores),
        error_rate=error_rate(pipeline, requests, errors, refusals),
        performance=performance(pipeline, labelled),
        fairness=fairness(pipeline, labelled),
    )
