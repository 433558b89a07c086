"""Figures logged to MLflow with the check results (matplotlib, headless)."""

from typing import Any

from secure_pipeline.mlsec.fairness import FairnessResult
from secure_pipeline.mlsec.robustness import RobustnessResult


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display in a run worker
    import matplotlib.pyplot as plt

    return plt


def robustness_figure(result: RobustnessResult) -> Any:
    """Clean vs adversarial accuracy, as bars."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5, 3.5))
    bars = axis.bar(
        ["clean", f"under attack (ε={result.epsilon:g} sd)"],
        [result.clean_accuracy, result.adversarial_accuracy],
        color=["#4c72b0", "#c44e52"],
    )
    axis.bar_label(bars, fmt="%.3f")
    axis.set_ylim(0, 1)
    axis.set_ylabel("accuracy")
    axis.set_title(f"Evasion attack on {result.rows} records: drop {result.drop:.3f}")
    figure.tight_layout()
    return figure


def fairness_figure(result: FairnessResult) -> Any:
    """Per-group selection rate, TPR and FPR, one panel per sensitive feature.

    Returns:
        The figure; None for a pipeline that declares no sensitive feature (nothing to draw).
    """
    if not result.audits:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(
        len(result.audits), 1, figsize=(8, 3 * len(result.audits)), squeeze=False
    )
    for axis, audit in zip(axes[:, 0], result.audits, strict=True):
        groups = [g.group for g in audit.groups]
        positions = range(len(groups))
        width = 0.27
        for offset, (label, values) in enumerate(
            (
                ("selection rate", [g.selection_rate for g in audit.groups]),
                ("true-positive rate", [g.true_positive_rate for g in audit.groups]),
                ("false-positive rate", [g.false_positive_rate for g in audit.groups]),
            )
        ):
            axis.bar([p + (offset - 1) * width for p in positions], values, width, label=label)
        axis.set_xticks(list(positions), groups, rotation=20, fontsize=8)
        axis.set_ylim(0, 1)
        gate = "gating" if audit.gating else "reported only"
        axis.set_title(
            f"{audit.feature} ({gate}): equalized-odds diff {audit.equalized_odds_difference:.3f}, "
            f"parity diff {audit.demographic_parity_difference:.3f}",
            fontsize=9,
        )
        axis.legend(fontsize=7)
    figure.tight_layout()
    return figure
