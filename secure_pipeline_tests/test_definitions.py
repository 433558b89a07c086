"""The code location: lazy, light to import, and the graph users see."""

import json
import subprocess
import sys

import dagster as dg

from secure_pipeline.definitions import defs

HEAVY = [
    "great_expectations", "mlflow", "art", "sklearn", "boto3", "fairlearn", "pandera", "skops",
    "pandas", "pyarrow",
]  # fmt: skip


def test_import_does_not_load_heavy_libraries() -> None:
    code = (
        "import sys, json, secure_pipeline.definitions as d; "
        "before = [m for m in HEAVY if m in sys.modules]; "
        "d.defs(); "
        "after = [m for m in HEAVY if m in sys.modules]; "
        "print(json.dumps([before, after]))"
    ).replace("HEAVY", repr(HEAVY))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    before, after = json.loads(out.strip().splitlines()[-1])
    assert before == []
    # Building the definitions (what a code server does) stays light too.
    assert after == []


def test_defs_is_lazy_and_loads_the_reference_graph() -> None:
    assert not isinstance(defs, dg.Definitions)  # built only when Dagster asks
    loaded = defs()
    graph = loaded.resolve_asset_graph()
    snapshot = {
        key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()
    }
    assert snapshot == {
        "adult/raw_adult": "ingestion",
        "adult/validated_adult": "ingestion",
        "adult/features": "features",
        "adult/trained_model": "training",
        "adult/registered_model": "registry",
        "adult/promoted_model": "promotion",
        "adult/live_traffic": "monitoring",
    }
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert checks == {
        ("adult/raw_adult", "provenance_complete"),
        ("adult/raw_adult", "schema_conforms"),
        ("adult/validated_adult", "reject_rate_within_limit"),
        ("adult/validated_adult", "expectations_met"),
        ("adult/features", "feature_drift"),
        ("adult/features", "poisoning_screen"),
        ("adult/trained_model", "performance_meets_policy"),
        ("adult/trained_model", "adversarial_robustness"),
        ("adult/trained_model", "membership_inference_risk"),
        ("adult/trained_model", "fairness_audit"),
        ("adult/trained_model", "onnx_equivalent"),
        ("adult/registered_model", "signature_verifies"),
        ("adult/live_traffic", "live_input_drift"),
        ("adult/live_traffic", "live_score_drift"),
        ("adult/live_traffic", "live_error_rate"),
        ("adult/live_traffic", "live_performance"),
        ("adult/live_traffic", "live_fairness"),
    }
    assert set(loaded.resources) == {"snapshot_store", "io_manager"}
