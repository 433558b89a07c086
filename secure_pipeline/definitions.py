"""The code location: ``secure_pipeline.definitions:defs``.

Definitions are built lazily, when Dagster asks for them, so importing this module costs little
more than importing dagster itself. Every run worker and step process pays that import.
"""

import dagster as dg


@dg.definitions
def defs() -> dg.Definitions:
    """The reference Adult pipeline for the current environment (``SECURE_PIPELINE_ENV``)."""
    from secure_pipeline.reference.adult import adult_pipeline

    return adult_pipeline().build_definitions()
