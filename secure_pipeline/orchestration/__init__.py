"""Orchestration: jobs per stage, their executors and retries, schedules and sensors.

`build_orchestration` turns a pipeline spec into the jobs, schedules and sensors of its code
location. Stages run as separate jobs (ingest, train, release) so that, on Kubernetes, each runs
in its own namespace under its own service account; sensors chain them, and each link checks
that the upstream stage's blocking gates passed before it starts the next one.
"""
