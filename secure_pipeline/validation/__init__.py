"""Validation: parsing raw files, schema checks (pandera), expectations (GX), quarantine."""
