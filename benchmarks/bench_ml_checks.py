"""The four ML security checks on the reference model, relative to training it.

Goal: all four checks together <= 5x the training time, and each sample-capped check growing
linearly with its cap (1k, 2k, 4k, 8k rows). Each side does what its Dagster step does with
the data in hand: training fits and serialises the model; each check loads the model from its
skops bytes, recomputes the seeded splits and evaluates. (Process start, imports and MLflow
logging are the same fixed costs for every step and are left out.)
"""

import statistics
import time

import numpy as np
from _common import interleaved, report

from secure_pipeline.features.engineering import LABEL_COLUMN, build_features
from secure_pipeline.mlsec.fairness import audit_fairness
from secure_pipeline.mlsec.privacy import evaluate_membership
from secure_pipeline.mlsec.robustness import evaluate_robustness
from secure_pipeline.reference.adult import DATA_DIR, adult_pipeline
from secure_pipeline.training.models import classification_metrics, model_inputs, split_rows, train
from secure_pipeline.training.serialization import dump_model, load_model
from secure_pipeline.validation.parsing import parse_fileset

PIPELINE = adult_pipeline()
POLICY = PIPELINE.policy


def main() -> None:
    files = {"train": (DATA_DIR / "adult.data").read_bytes(),
             "test": (DATA_DIR / "adult.test").read_bytes()}  # fmt: skip
    features = build_features(parse_fileset(files, PIPELINE.schema).frame, PIPELINE)
    model_bytes = dump_model(train(features, PIPELINE).model)
    inputs, catalog = model_inputs(PIPELINE)
    x, y = features[inputs.columns], features[LABEL_COLUMN].to_numpy()

    def judged():
        return load_model(model_bytes), split_rows(features, PIPELINE)

    def training() -> None:
        dump_model(train(features, PIPELINE).model)

    def performance() -> None:
        model, splits = judged()
        rows = splits.evaluation
        classification_metrics(y[rows], model.predict_proba(x.iloc[rows])[:, 1])

    def robustness(cap: int = POLICY.robustness_sample_cap):
        def run() -> None:
            model, splits = judged()
            rows, fit = splits.evaluation, splits.fit
            evaluate_robustness(model, x.iloc[rows], y[rows], len(inputs.numeric),
                                epsilon=POLICY.robustness_epsilon, cap=cap, seed=0,
                                surrogate_x=x.iloc[fit], surrogate_y=y[fit])  # fmt: skip

        return run

    def membership(cap: int = POLICY.privacy_sample_cap):
        def run() -> None:
            model, splits = judged()
            others = np.concatenate([splits.holdout, splits.test])
            evaluate_membership(model, x.iloc[splits.fit], y[splits.fit], x.iloc[others],
                                y[others], cap=cap, seed=0)  # fmt: skip

        return run

    def fairness() -> None:
        model, splits = judged()
        rows = splits.evaluation
        sensitive = {
            name: (column, features[column].to_numpy()[rows], catalog[column].categories)
            for name, column in (("sex", "sex"), ("race", "race"), ("age", "age_band"))
        }
        audit_fairness(y[rows], model.predict(x.iloc[rows]), sensitive,
                       max_equalized_odds_difference=POLICY.max_equalized_odds_difference,
                       max_parity_amplification=POLICY.max_parity_amplification,
                       min_group_size=POLICY.fairness_min_group_size,
                       confidence=POLICY.fairness_confidence,
                       report_only=POLICY.fairness_report_only)  # fmt: skip

    checks = {
        "performance_meets_policy": performance,
        "adversarial_robustness": robustness(),
        "membership_inference_risk": membership(),
        "fairness_audit": fairness,
    }

    def all_checks() -> None:
        for check in checks.values():
            check()

    times = interleaved({"training": training, "all four checks": all_checks, **checks}, 5)
    report("reference model: checks vs training", times, "training", goal=5.0)

    print("\nscaling with the sample cap (median of 5; linear means ~2x per doubling)")
    for name, factory in (("adversarial_robustness", robustness),
                          ("membership_inference_risk", membership)):  # fmt: skip
        caps = (1000, 2000, 4000, 8000)
        medians = []
        for cap in caps:
            samples = []
            run = factory(cap)
            run()
            for _ in range(5):
                start = time.perf_counter()
                run()
                samples.append(time.perf_counter() - start)
            medians.append(statistics.median(samples))
        slope, intercept = np.polyfit(caps, medians, 1)
        fitted = np.polyval([slope, intercept], caps)
        r2 = 1 - np.sum((np.array(medians) - fitted) ** 2) / np.sum(
            (np.array(medians) - np.mean(medians)) ** 2
        )
        steps = " ".join(f"{b / a:.2f}x" for a, b in zip(medians, medians[1:], strict=False))
        pairs = zip(caps, medians, strict=True)
        cells = ", ".join(f"{c // 1000}k {m * 1000:.0f} ms" for c, m in pairs)
        print(f"  {name:<28} {cells}")
        print(f"  {'':<28} per doubling {steps}; linear fit R^2 {r2:.3f}, "
              f"{slope * 1e6:.0f} us/row + {intercept * 1000:.0f} ms fixed")  # fmt: skip


if __name__ == "__main__":
    main()
