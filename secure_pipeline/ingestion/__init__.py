"""Ingestion: connectors that fetch source files, provenance records, the raw asset builder."""
