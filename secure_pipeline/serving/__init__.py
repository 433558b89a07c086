"""Serving: the only way the project loads a model for inference — verify, then load."""
