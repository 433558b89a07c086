"""The names of everything a pipeline defines, in one place.

Every asset key carries the pipeline's name as its first component (``adult/features``), so any
number of pipelines live in one code location; jobs, schedules and sensors are prefixed with it
(``adult_ingest``), and so are the MLflow registered model and experiment. Check and alias names
are constants here: a rename that misses a place fails at import, not at promotion.
"""

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dagster as dg

# Asset names (the last component of each key). The raw and validated assets are named after the
# pipeline's source: raw_<source>, validated_<source>.
FEATURES = "features"
TRAINED_MODEL = "trained_model"
REGISTERED_MODEL = "registered_model"
PROMOTED_MODEL = "promoted_model"
CANARY_ANALYSIS = "canary_analysis"
LIVE_TRAFFIC = "live_traffic"

# Check names, by the asset they judge.
PROVENANCE_COMPLETE = "provenance_complete"
SCHEMA_CONFORMS = "schema_conforms"
REJECT_RATE = "reject_rate_within_limit"
EXPECTATIONS_MET = "expectations_met"
FEATURE_DRIFT = "feature_drift"
POISONING_SCREEN = "poisoning_screen"
PERFORMANCE = "performance_meets_policy"
ROBUSTNESS = "adversarial_robustness"
MEMBERSHIP = "membership_inference_risk"
FAIRNESS = "fairness_audit"
ONNX_EQUIVALENT = "onnx_equivalent"
SIGNATURE_VERIFIES = "signature_verifies"
# The live checks of ``live_traffic`` (the served champion, judged on what it scores).
LIVE_INPUT_DRIFT = "live_input_drift"
LIVE_SCORE_DRIFT = "live_score_drift"
LIVE_ERROR_RATE = "live_error_rate"
LIVE_PERFORMANCE = "live_performance"
LIVE_FAIRNESS = "live_fairness"
LIVE_CHECKS = (LIVE_INPUT_DRIFT, LIVE_SCORE_DRIFT, LIVE_ERROR_RATE, LIVE_PERFORMANCE, LIVE_FAIRNESS)

# The checks whose verdicts a model needs, by the stage whose snapshot they judge. The poisoning
# screen is always among them: a policy that turns it off gets a signed "turned off" verdict
# (which its fingerprint, in every verdict, records), never a missing one.
REQUIRED_CHECKS: dict[str, tuple[str, ...]] = {
    "raw": (PROVENANCE_COMPLETE, SCHEMA_CONFORMS),
    "validated": (REJECT_RATE, EXPECTATIONS_MET),
    "features": (FEATURE_DRIFT, POISONING_SCREEN),
    "model": (PERFORMANCE, ROBUSTNESS, MEMBERSHIP, FAIRNESS, ONNX_EQUIVALENT),
}

# Registry aliases (mirrors of the gate's signed decisions).
CHAMPION = "champion"
CHALLENGER = "challenger"

# Asset and job tags naming the pipeline and the stage something belongs to.
PIPELINE_TAG = "secure_pipeline/pipeline"
STAGE_TAG = "secure_pipeline/stage"
# Op tag naming the identity whose key a step signs with.
IDENTITY_TAG = "secure_pipeline/identity"


@dataclass(frozen=True)
class PipelineNames:
    """Every name one pipeline defines.

    Attributes:
        pipeline: The pipeline's name (the key prefix).
        source: Its source's name.
    """

    pipeline: str
    source: str

    def asset_tags(self, stage: str) -> dict[str, str]:
        """The tags of an asset of ``stage`` (``ingestion``, ``training``…) of this pipeline."""
        return {STAGE_TAG: stage, PIPELINE_TAG: self.pipeline}

    def key(self, asset: str) -> "dg.AssetKey":
        """The asset key of one of this pipeline's assets."""
        # Imported here: the spec and the signing code read these names without loading Dagster.
        import dagster as dg

        return dg.AssetKey([self.pipeline, asset])

    @property
    def raw_name(self) -> str:
        """The raw asset's name."""
        return f"raw_{self.source}"

    @property
    def validated_name(self) -> str:
        """The validated asset's name."""
        return f"validated_{self.source}"

    @cached_property
    def raw(self) -> "dg.AssetKey":
        """Key of the raw asset."""
        return self.key(self.raw_name)

    @cached_property
    def validated(self) -> "dg.AssetKey":
        """Key of the validated asset."""
        return self.key(self.validated_name)

    @cached_property
    def features(self) -> "dg.AssetKey":
        """Key of the feature table."""
        return self.key(FEATURES)

    @cached_property
    def trained_model(self) -> "dg.AssetKey":
        """Key of the trained model."""
        return self.key(TRAINED_MODEL)

    @cached_property
    def registered_model(self) -> "dg.AssetKey":
        """Key of the registered model."""
        return self.key(REGISTERED_MODEL)

    @cached_property
    def promoted_model(self) -> "dg.AssetKey":
        """Key of the promotion gate's asset."""
        return self.key(PROMOTED_MODEL)

    @cached_property
    def canary_analysis(self) -> "dg.AssetKey":
        """Key of the blue-green release."""
        return self.key(CANARY_ANALYSIS)

    @cached_property
    def live_traffic(self) -> "dg.AssetKey":
        """Key of the live traffic the served champion scored (and its live checks)."""
        return self.key(LIVE_TRAFFIC)

    def stage_key(self, stage: str) -> "dg.AssetKey":
        """The key of the asset whose snapshot a lineage stage names."""
        return {
            "raw": self.raw,
            "validated": self.validated,
            "features": self.features,
            "model": self.trained_model,
        }[stage]

    @property
    def model_name(self) -> str:
        """The MLflow registered model."""
        return self.pipeline

    @property
    def experiment(self) -> str:
        """The MLflow experiment of training runs."""
        return f"secure_pipeline/{self.pipeline}"

    @property
    def ingest_job(self) -> str:
        """The ingest stage job."""
        return f"{self.pipeline}_ingest"

    @property
    def train_job(self) -> str:
        """The train stage job."""
        return f"{self.pipeline}_train"

    @property
    def release_job(self) -> str:
        """The release stage job."""
        return f"{self.pipeline}_release"

    @property
    def monitor_job(self) -> str:
        """The job that materializes ``live_traffic``."""
        return f"{self.pipeline}_monitor"

    @property
    def rollback_job(self) -> str:
        """The job that rolls the champion back after a failed live check."""
        return f"{self.pipeline}_rollback"

    def prefixed(self, name: str) -> str:
        """A schedule or sensor name of this pipeline."""
        return f"{self.pipeline}_{name}"
