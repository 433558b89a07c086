"""The reference pipeline: UCI Adult income, built from the public `SecurePipeline` spec."""
