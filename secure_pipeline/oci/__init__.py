"""OCI registry transport: references, a TLS 1.3 registry client and the ModelPack layout."""
