"""The traffic gate: routes each request to its function and streams it there.

Layers, lowest first; a module imports only from layers below it, never a sibling of
its own layer:

1. ``wire``: HTTP/1.1 wire code shared by both transports and the upstream client
   (hop-by-hop list, Connection tokens, response filtering, the ``{code, message}``
   body, direct send).
2. ``adaptor``: the request adaptor, compiled once per route change; ``access``: who
   may call a function and how often (invocation keys, rate limits), pure decisions;
   ``accesslog``: the access log's batched lines.
3. ``decisions``: the gate's decisions over a small request-head record (which
   function, which error, the upstream head), independent of any transport.
4. ``routes`` (the route table, fed by the store's watch) and ``upstream`` (the pooled
   upstream client).
5. ``context``: what every exchange shares (routes, provider, pool, clock, metrics);
   ``asynccall``: accepting an asynchronous call (the exchange is passed in, not
   imported).
6. ``exchange``: one proxied request, transport-independent; ``connlimit``:
   maxConnections and the 503 past it; ``webchannel``: twisted.web's connections with
   the slow-client timeouts.
7. ``lean`` (the lean HTTP/1.1 transport) and ``web`` (the twisted.web transport:
   HTTPS, HTTP/2).
8. ``service``: the ``GateService`` that listens and drains.
9. ``assembly``: the one way a gate is put together (route table loaded, relay, access
   log), for the node and its gate workers.
"""

from faastwist.gate.context import GateContext
from faastwist.gate.decisions import GateError, RequestHead
from faastwist.gate.routes import Route, RouteTable
from faastwist.gate.service import GateService
from faastwist.gate.upstream import UpstreamPool

__all__ = ["GateContext", "GateError", "GateService", "RequestHead", "Route", "RouteTable",
           "UpstreamPool"]
