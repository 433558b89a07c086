"""Training: the model pipeline, safe serialization (skops), experiment tracking (MLflow)."""
