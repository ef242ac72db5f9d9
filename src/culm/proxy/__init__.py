"""The forward proxy: OpenAI- and Anthropic-compatible endpoints that meter what they forward.

endpoints.py what each route (``culm.api.routes.proxy``) forwards to, and its usage format
forward.py   the forwarder (one upstream client) and the exchange (one request, as an ASGI
             response: relay, watch the client, meter)
taps.py      read the usage out of a response's bytes on the way through
headers.py   which headers cross, and whose credentials go upstream
trace.py     ``x-culm-run-id`` / ``traceparent`` → the metrics trace id (the run)
"""
