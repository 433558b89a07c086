"""The zero-trust inference gateway: a real nginx in front of the blue and green model servers.

The gateway terminates TLS 1.3 with mutual authentication, so every caller is a client
certificate from the gateway's client CA. Its identity is the certificate's SPIFFE-style URI
SAN (``spiffe://secure-pipeline/<name>``), read by a small njs function (stock nginx has no
variable for subject alternative names); a certificate without exactly one such SAN, or with
one that is not configured, has no identity and is refused. Then, per request:

1. RBAC: each route (an exact path, or a prefix ending in ``/``) requires a role; an identity
   without it gets 403 and nothing reaches a model server. Unrouted paths are 404.
2. Rate limit per identity (``limit_req``): excess requests get 429 before the upstream.
3. Bodies over ``max_body_bytes`` get 413; bodies are kept in memory, never written to disk.
4. The request goes to the ``blue``/``green`` upstream by weight; a weight-0 slot is left out
   of the upstream entirely (nginx has no ``weight=0``). A slot answering 503 (not ready) has
   the request replayed on the other slot.
5. The upstream receives the caller's SPIFFE ID in `IDENTITY_HEADER`, set by nginx; a value
   a client sent in that header (or in ``X-SP-Client-Roles`` / ``X-Forwarded-Client-Cert``)
   never arrives.
6. nginx reaches the slots over mutual TLS 1.3 (``proxy_ssl_*``): it presents the gateway's
   client certificate of the slot CA and verifies the slot's certificate against that CA and
   the fixed name `secure_pipeline.serving.certs.SLOT_SERVER_NAME`. The slots accept nothing
   else, so the controls above cannot be bypassed by calling a slot directly. Upstream TLS is
   not optional; connections and TLS sessions to the slots are kept and reused.

The access log is JSON lines: time, identity, method, path (no query), status, upstream address
and status, timings. Never a body. ``GET /healthz`` is answered by the gateway itself for any
known identity (liveness of the gateway; model readiness is the slots' ``/readyz``).

`render_nginx_conf` fills ``nginx/nginx.conf.template`` beside this module; every value is
validated first and quoted where it is a string, so nothing in a `GatewayConfig` can add nginx
syntax. `Gateway` runs nginx with its own prefix directory and reloads it for new weights.
"""

from secure_pipeline.serving.gateway.config import (
    DEFAULT_ROUTES,
    IDENTITY_HEADER,
    GatewayConfig,
    GatewayError,
    Slot,
    client_settings_from_environment,
)
from secure_pipeline.serving.gateway.process import Gateway
from secure_pipeline.serving.gateway.render import find_nginx, render_nginx_conf

__all__ = [
    "DEFAULT_ROUTES",
    "IDENTITY_HEADER",
    "Gateway",
    "GatewayConfig",
    "GatewayError",
    "Slot",
    "client_settings_from_environment",
    "find_nginx",
    "render_nginx_conf",
]
