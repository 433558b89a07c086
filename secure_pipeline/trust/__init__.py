"""Who may sign what: stage identities, the signed trust policy, DSSE attestations.

Every stage that judges or decides signs its evidence with a key of its own: ``ingest`` (the
data checks), ``train`` (the model gates), ``release`` (the model bundle, its registration and
``signature_verifies``), ``gate`` (promotion, canary and rollback decisions), ``monitor`` (run
failures seen by a sensor), and each approver. The trust policy names the public keys of each
identity and is itself signed by a root key kept offline (or pinned by digest in the
deployment). Nothing here reads a mutable record as evidence: a verdict, an approval, a
registration or a promotion counts only as a DSSE envelope whose signature verifies with a key
the policy gives to the identity that may make it.

Modules: `identities` (names and which events each identity may write), `keys` (key files,
fingerprints, development keys and their ledger), `policy` (the trust policy), `signers`
(the signer of each identity, from the environment), `attestations` (in-toto statements in
DSSE envelopes, and where they are stored).
"""
