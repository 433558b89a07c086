"""Watching the served champion: its live traffic and live checks, and the pipeline exporter."""
