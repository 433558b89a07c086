"""The code location's defs folder: one component instance per pipeline (``<name>/defs.yaml``).

Loaded by `secure_pipeline.definitions`; ``dg scaffold defs secure_pipeline.SecurePipelineComponent
NAME`` adds a pipeline here.
"""
