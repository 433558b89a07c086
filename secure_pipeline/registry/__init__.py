"""The signed model registry: bundles, signing and trust, lineage, MLflow model versions."""
