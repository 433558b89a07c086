"""ML security checks: adversarial robustness and membership inference (ART), fairness."""
