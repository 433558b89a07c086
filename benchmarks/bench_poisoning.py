"""The poisoning screen on 250k, 500k and 1M Adult rows vs training the reference model on them.

Goal: the screen <= 3x training at 1M rows, and linear in rows (about 2x per doubling, or less:
its fold models are fitted on at most `FIT_ROWS` rows, so past that only prediction and the
neighbour search grow). Both sides get the same feature table: the reference Adult features
resampled with replacement to the size, two thirds training member and one third test member.
Training is what the ``trained_model`` step does with the table (`train`: seeded split, fit,
holdout and test metrics); the screen is what the ``poisoning_screen`` check does with it
(`screen_features`: out-of-fold probabilities, confident learning, outliers). Sizes are run
in turn, each side once per repeat, alternating (a 1M-row training takes a minute or more).
"""

import time

import numpy as np
import pandas as pd
from _common import interleaved, report

from secure_pipeline.features.engineering import build_features
from secure_pipeline.mlsec.poisoning import FIT_ROWS, screen_features
from secure_pipeline.reference.adult import DATA_DIR, adult_pipeline
from secure_pipeline.training.models import train
from secure_pipeline.validation.parsing import parse_fileset

PIPELINE = adult_pipeline()
SIZES = (250_000, 500_000, 1_000_000)
REPEATS = 2


def resampled(base: pd.DataFrame, rows: int, seed: int = 0) -> pd.DataFrame:
    """``rows`` rows of ``base`` drawn with replacement, two thirds of them training rows."""
    rng = np.random.default_rng(seed)
    table = base.iloc[rng.integers(0, len(base), rows)].reset_index(drop=True)
    member = np.where(rng.random(rows) < 2 / 3, PIPELINE.model.train_member, "test")
    table["split"] = pd.Series(member, dtype="string")
    return table


def main() -> None:
    files = {"train": (DATA_DIR / "adult.data").read_bytes(),
             "test": (DATA_DIR / "adult.test").read_bytes()}  # fmt: skip
    base = build_features(parse_fileset(files, PIPELINE.schema).frame, PIPELINE)
    clean = screen_features(base, PIPELINE)
    shares = ", ".join(f"{m.member} {m.share:.4f}" for m in clean.members)
    print(f"clean Adult ({clean.rows} rows): suspected share {shares}")
    screens, trainings = [], []
    for rows in SIZES:
        table = resampled(base, rows)
        found: list[float] = []

        def training(table: pd.DataFrame = table) -> None:
            train(table, PIPELINE)

        def screen(table: pd.DataFrame = table, found: list[float] = found) -> None:
            found.append(screen_features(table, PIPELINE).worst.share)

        times = interleaved({"training": training, "poisoning screen": screen}, REPEATS, 0)
        worst = report(f"{rows:,} rows: screen vs training", times, "training",
                       3.0 if rows == SIZES[-1] else None)  # fmt: skip
        print(f"  suspected share (worst member) {found[-1]:.4f}; ratio {worst:.2f}x")
        screens.append(float(np.median(times["poisoning screen"])))
        trainings.append(float(np.median(times["training"])))
    print(f"\nscaling with rows (linear is 2x per doubling; fold fits capped at {FIT_ROWS:,})")
    for name, medians in (("poisoning screen", screens), ("training", trainings)):
        steps = " ".join(f"{b / a:.2f}x" for a, b in zip(medians, medians[1:], strict=False))
        per_row = ", ".join(
            f"{r // 1000}k {m / r * 1e6:.1f} us/row" for r, m in zip(SIZES, medians, strict=True)
        )
        print(f"  {name:<18} per doubling {steps}; {per_row}")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"  (benchmark took {time.perf_counter() - start:.0f} s)")
