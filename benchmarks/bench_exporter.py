"""The cost of a scrape of the pipeline exporter: 10 pipelines x 20 checks.

A real SQLite Dagster instance in a temporary home holds, for each of 10 pipelines, 4 assets
with 5 checks each, materialized and evaluated by real runs (twice, so the latest of each is
found among older ones). Each evaluation carries metadata shaped like the reference pipeline's
checks: 6 numbers (the reference's average is 5), a few KB of JSON detail and a text report;
2 checks of 20 (the drift checks) carry a ``psi_by_feature`` JSON of 16 features. A second set
of 10 pipelines is heavier than any real one — 12 numbers and ``psi_by_feature`` on every check
(6,300 samples) — and shown for reference.

One scrape is ``PipelineCollector.collect()`` through ``generate_latest`` of the exporter's
registry: three batch reads of the instance (asset records, latest check executions, run
records) and the exposition of every family; the audit trail and champions come from the cache
the background refresh fills, as in production. Baseline: ``generate_latest`` of
prometheus-client's default registry (process, platform and GC metrics) in the same process.
Goal: median <= 100 ms.
"""

import logging
import shutil
import statistics
import time

from _common import interleaved, report, temporary_home

PIPELINES = 10
ASSETS = 4
CHECKS_PER_ASSET = 5
FEATURES = [f"feature_{i:02d}" for i in range(16)]
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _pipeline_assets(name: str, generation: int, heavy: bool):  # noqa: ANN202 - an asset def
    import dagster as dg

    from secure_pipeline.names import PIPELINE_TAG, STAGE_TAG

    specs = [
        dg.AssetSpec(
            [name, f"asset_{a}"], tags={PIPELINE_TAG: name, STAGE_TAG: "benchmark"},
            deps=[[name, f"asset_{a - 1}"]] if a else [],
        )
        for a in range(ASSETS)
    ]  # fmt: skip
    checks = [
        dg.AssetCheckSpec(f"check_{c}", asset=spec.key)
        for spec in specs
        for c in range(CHECKS_PER_ASSET)
    ]

    @dg.multi_asset(name=f"{name}_assets", specs=specs, check_specs=checks)
    def assets():  # noqa: ANN202 - yields Dagster results
        for spec in specs:
            yield dg.MaterializeResult(
                asset_key=spec.key,
                metadata={"rows": 48842 + generation, "audit_record": f"1:{'0' * 64}"},
            )
        for number, check in enumerate(checks):
            drift = heavy or number in (0, CHECKS_PER_ASSET)
            psi = {"psi_by_feature": dg.MetadataValue.json({f: 0.01 for f in FEATURES})}
            yield dg.AssetCheckResult(
                asset_key=check.asset_key, check_name=check.name, passed=True,
                severity=dg.AssetCheckSeverity.ERROR, metadata={
                    **{f"value_{m}": 0.1 * m + generation for m in range(12 if heavy else 5)},
                    "rows": 48842,
                    **(psi if drift else {}),
                    "detail": dg.MetadataValue.json(
                        {f: {"gap": 0.1, "rows": 1000, "problems": ["x" * 80]} for f in FEATURES}
                    ),
                    "report": dg.MetadataValue.md("```\n" + "[ok] step\n" * 40 + "```"),
                    "attestation": "attestations/verdicts/" + "a" * 64 + "/" + "b" * 64 + ".json",
                },
            )  # fmt: skip

    return assets


def main() -> None:
    work, home = temporary_home("bench-exporter-")
    try:
        import dagster as dg
        from prometheus_client import REGISTRY, generate_latest

        from secure_pipeline.monitoring.exporter import PipelineCollector, registry_of
        from secure_pipeline.storage.local import LocalSnapshotStore
        from secure_pipeline.trust.policy import trust_policy

        logging.getLogger("secure_pipeline.monitoring.exporter").setLevel(logging.CRITICAL)
        sets = {
            heavy: [f"{'heavy' if heavy else 'pipeline'}_{p:02d}" for p in range(PIPELINES)]
            for heavy in (False, True)
        }
        started = time.perf_counter()
        with dg.DagsterInstance.get() as instance:
            for generation in range(2):
                for heavy, names in sets.items():
                    assets = [_pipeline_assets(name, generation, heavy) for name in names]
                    assert dg.materialize(assets, instance=instance, run_config=QUIET).success
            print(f"4 runs written: {time.perf_counter() - started:.1f} s")
            store = LocalSnapshotStore(home / "store")
            registries = {}
            for heavy, names in sets.items():
                definitions = dg.Definitions(assets=[_pipeline_assets(n, 0, heavy) for n in names])
                collector = PipelineCollector(
                    definitions, instance, lambda: store, trust_policy, pipelines={}
                )
                assert len(collector.checks) == PIPELINES * ASSETS * CHECKS_PER_ASSET
                registries[heavy] = registry = registry_of(collector)
                first = time.perf_counter()
                text = generate_latest(registry).decode()  # cold: every evaluation read once
                first = time.perf_counter() - first
                # No trail and no champion specs here (their errors are expected and not
                # logged): the refresh fills the cache a scrape serves, as in production.
                collector.refresh()
                samples = [line for line in text.splitlines() if not line.startswith("#")]
                assert text.count("secure_pipeline_check_passed{") == len(collector.checks)
                print(f"{'heavy' if heavy else 'realistic'}: {len(samples)} samples, "
                      f"{len(text) / 1024:.0f} KB a scrape; the first after start (every "
                      f"evaluation read once) {first * 1000:.0f} ms")  # fmt: skip

            checks = f"{PIPELINES} pipelines x {ASSETS * CHECKS_PER_ASSET} checks"
            baseline = "default registry (process, platform, GC)"
            times = interleaved(
                {
                    baseline: lambda: generate_latest(REGISTRY),
                    f"exporter scrape ({checks})": lambda: generate_latest(registries[False]),
                    f"same, heavy metadata ({checks})": lambda: generate_latest(registries[True]),
                },
                repeats=31,
            )
            report("Pipeline exporter: one scrape vs the default registry's", times, baseline,
                   None)  # fmt: skip
            scrape = statistics.median(times[f"exporter scrape ({checks})"])
            verdict = "meets" if scrape <= 0.100 else "MISSES"
            print(f"  goal: scrape median <= 100 ms: {verdict} ({scrape * 1000:.1f} ms)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
