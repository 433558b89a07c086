"""Keyed pseudonyms of personal columns: see `secure_pipeline.privacy.pseudonyms`.

The key and the hashing live with the rest of the personal-data handling, below ingestion (the
subject index at entry is keyed from the same secret); validation uses them from here.
"""

from secure_pipeline.privacy.pseudonyms import (
    KEY_VARIABLE,
    MIN_KEY_BYTES,
    local_key_path,
    pseudonym_key,
    pseudonymise,
    pseudonymised_columns,
)

__all__ = [
    "KEY_VARIABLE",
    "MIN_KEY_BYTES",
    "local_key_path",
    "pseudonym_key",
    "pseudonymise",
    "pseudonymised_columns",
]
