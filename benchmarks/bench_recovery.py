"""Time to recover: from a bad champion starting to serve to traffic back on the previous one.

The scenario of `secure_pipeline_tests.monitoring.recovery_scenario`, every part real: a serving
deployment (nginx gateway, two slot processes, mutual TLS) with a client sending predictions
through it all along; version B released through the canary becomes champion; its traffic turns
bad (inputs far outside the training data); the slot writes a signed batch of it; the monitor
job's ``live_input_drift`` fails; the rollback sensor ticks; the rollback job verifies the
monitor's signed verdict and the previous champion, signs the decision and moves all traffic;
the client's answers come from the previous champion's slot only.

The slots record in 2-second batches and the monitor job and sensor are run as soon as the
batch is written, so the figure is the machinery's own time. In a deployment the wait before
each step is a setting, and bounds the time to recover:

    batch_seconds (slot batches, default 3600)
  + time to the next monitor run (schedule_cron, default hourly at :15)
  + the sensor's interval (orchestration.chain_interval_seconds, default 60)
  + the machinery measured here.

Run several times (``--runs N``, default 3); prints each phase's seconds and the median total,
and the machinery's total as a ratio of the monitor job alone (the phase that grows with the
window judged).
"""

import argparse
import shutil
import statistics
import sys
from pathlib import Path

from _common import temporary_home


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    work, home = temporary_home("bench-recovery-")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    try:
        import dagster as dg

        from secure_pipeline_tests.helpers import materialize_all
        from secure_pipeline_tests.monitoring import recovery_scenario

        with dg.DagsterInstance.get() as instance:
            assert materialize_all(recovery_scenario.PIPELINE, instance).success
            event = instance.get_latest_materialization_event(
                dg.AssetKey(["adult", "registered_model"])
            )
        version = str(event.asset_materialization.metadata["model_version"].value)
        totals: list[float] = []
        monitor: list[float] = []
        for run in range(runs):
            copy = work / f"run-{run}" / "home"
            shutil.copytree(home, copy, symlinks=True)
            (copy / "dagster.yaml").write_text(f"storage:\n  sqlite:\n    base_dir: {copy}\n")
            recovery = recovery_scenario.run(copy, work / f"run-{run}" / "work", version)
            phases = recovery.phases()
            print(f"\nrun {run + 1}: champion {recovery.versions[1]} on {recovery.slots[1]} -> "
                  f"{recovery.versions[0]} on {recovery.slots[0]}")  # fmt: skip
            for name, seconds in phases.items():
                print(f"  {name:<50} {seconds:7.2f} s")
            totals.append(phases["time to recover"])
            monitor.append(phases["monitor job (live checks judged)"])
            assert recovery.answers_after, "no answers after the rollback"
        total, judged = statistics.median(totals), statistics.median(monitor)
        print(f"\ntime to recover, median of {runs}: {total:.2f} s "
              f"(ratio to the monitor job alone: {total / judged:.2f}x); with the defaults add "
              "up to 3600 s (batch) + 3600 s (schedule) + 60 s (sensor)")  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
