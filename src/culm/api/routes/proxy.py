"""The forward proxy's routes: ``/openai/v1/…`` and ``/anthropic/v1/…`` to the providers.

Each route hands the request to the app's :class:`~culm.proxy.forward.Forwarder`; the request
body is not validated here (the upstream judges it, and its answer comes back as it is). What
culm answers itself (502, 504; 401 and 413 from the middleware, through
:meth:`~culm.proxy.forward.Forwarder.refusal`) is an ``ErrorBody`` in the provider's error
shape, so the provider's SDK reads it as its own, and it is metered like a forwarded request.
"""

from __future__ import annotations

from typing import Any, Final

from fastapi import APIRouter, Request, Response
from starlette.requests import ClientDisconnect

from culm.api.openapi import errors
from culm.proxy.endpoints import (
    ANTHROPIC_MODELS,
    CHAT_COMPLETIONS,
    MESSAGES,
    OPENAI_MODELS,
    RESPONSES,
    ROUTES,
)
from culm.proxy.forward import CLIENT_CLOSED, Endpoint, Forwarder

router = APIRouter(tags=["proxy"])

_UPSTREAM_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    "default": {"description": "the upstream's own answer (status, headers and body) as it is"},
    **errors(
        {
            502: "`upstream_unreachable`: the provider could not be reached "
            "(`upstream_misconfigured`: its base URL is not valid)",
            504: "`upstream_timeout`: the provider sent nothing within `CULM_PROXY_READ_TIMEOUT`",
        }
    ),
}
_BODY: Final = {
    "requestBody": {
        "required": True,
        "description": "the provider's request, sent upstream unchanged",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
}


def _route(path: str, endpoint: Endpoint, summary: str) -> None:
    async def forward(request: Request) -> Response:
        forwarder: Forwarder = request.app.state.forwarder
        try:
            body = await request.body()
        except ClientDisconnect:  # gone before the body was in (or refused with 413 for its size)
            return Response(status_code=CLIENT_CLOSED)
        return forwarder.exchange(endpoint, request.scope, body)

    router.add_api_route(
        path,
        forward,
        methods=[endpoint.method],
        summary=summary,
        operation_id=endpoint.name.replace(".", "_"),
        response_class=Response,
        responses=_UPSTREAM_ERRORS,
        openapi_extra=_BODY if endpoint.method == "POST" else None,
    )


_SUMMARIES: Final = {
    CHAT_COMPLETIONS: "OpenAI Chat Completions, forwarded",
    RESPONSES: "OpenAI Responses, forwarded",
    OPENAI_MODELS: "OpenAI models list, forwarded",
    MESSAGES: "Anthropic Messages, forwarded",
    ANTHROPIC_MODELS: "Anthropic models list, forwarded",
}
for _path, _endpoint in ROUTES.items():
    _route(_path, _endpoint, _SUMMARIES[_endpoint])
