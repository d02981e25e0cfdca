"""The gateway: a reverse proxy that routes each infer with the twin's own `sim.policy.split.Router`.

Run it with `python -m real.gateway --config run/config.yaml --port P --upstreams URL0,URL1,...`
(upstream i = replica i), or build it in-process with `create_app(cfg, upstreams)`.

Every proxied answer carries the header `x-gateway-s`: the seconds the request spent in the
gateway itself (reading the body, routing, writing the answer), upstream time excluded. It is
a header rather than a field in `parameters` so the gateway never parses or re-encodes a body.
"""

from real.gateway.app import create_app

__all__ = ["create_app"]
