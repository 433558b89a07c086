"""Features: the feature table derived from validated rows, and drift against a reference."""
