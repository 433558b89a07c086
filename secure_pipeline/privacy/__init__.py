"""Personal data in the pipeline: the subject index, entry exclusion, erasure and retention.

* `secure_pipeline.privacy.subjects`: keyed subject hashes, the streaming filter every source
  file of a pipeline with identifier columns passes at ingestion (erased subjects are dropped,
  the others indexed), the per-ingestion subject index and the signed erasure list.
* `secure_pipeline.privacy.erasure`: erasure requests, crypto-shredding and retention.
* `secure_pipeline.privacy.flags`: flags on models trained on data since erased or expired.
* `secure_pipeline.privacy.record`: the record of processing activities (Art. 30).

Kept import-light: each module is imported where it is used.
"""
