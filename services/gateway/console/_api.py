"""The console's JSON API: each route is one call through the gateway, with the caller's bearer token.

Nothing here decides who may see what: a missing token is 401 before any call, and the gateway's answer
(UNAUTHENTICATED, PERMISSION_DENIED for a missing scope, RESOURCE_EXHAUSTED, ...) becomes the HTTP status.
Replies are the contract's messages as JSON (proto field names), so the pages read what ExplainTask says.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message

from agentmesh.services.gateway.console._upstream import GatewayClient
from agentmesh.v1 import registry_pb2, task_pb2

__all__ = ["CLIENT_KEY", "WATCHES_KEY", "Watches", "api_routes", "cancel_watches", "http_status"]

logger = logging.getLogger(__name__)

CLIENT_KEY: web.AppKey[GatewayClient] = web.AppKey("gateway_client", GatewayClient)
_AUTHORIZATION: web.RequestKey[str] = web.RequestKey("authorization", str)
# Open WatchAgents calls, cancelled when the console shuts down (a browser's stream must not hold the stop).
class Watches(set[Any]):
    """The open WatchAgents calls of one console."""


WATCHES_KEY: web.AppKey[Watches] = web.AppKey("watches", Watches)
_BEARER = re.compile(r"^Bearer [A-Za-z0-9\-_.~+/]+=*$")
_TIMEOUT = 15.0
# A watch is re-opened by the page when it ends; bounded so a stream never outlives a token for long.
_WATCH_SECONDS = 300.0
_MAX_LIST = 200
_STATUS = {
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def http_status(code: grpc.StatusCode) -> int:
    """The HTTP status the console answers for a gateway status code (502 for the unexpected)."""
    return _STATUS.get(code, 502)


def _error(status: int, message: str) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="agentmesh"'} if status == 401 else None
    return web.json_response({"error": message}, status=status, headers=headers)


def _to_json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _metadata(request: web.Request) -> list[tuple[str, str]]:
    return [("authorization", request[_AUTHORIZATION])]


def _client(request: web.Request) -> GatewayClient:
    return request.app[CLIENT_KEY]


@web.middleware
async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    """401 for an API call without a well-formed bearer token; gateway errors become HTTP statuses."""
    header = request.headers.get("Authorization", "")
    if not _BEARER.match(header):
        return _error(401, "sign in: this API needs an OAuth2 bearer token (Authorization: Bearer ...)")
    request[_AUTHORIZATION] = header
    try:
        return await handler(request)
    except grpc.aio.AioRpcError as exc:
        return _error(http_status(exc.code()), exc.details() or exc.code().name)


async def list_agents(request: web.Request) -> web.Response:
    """ListAgents (every instance, DRAINING too), all pages up to a bound."""
    instances: list[dict[str, Any]] = []
    token = ""
    while len(instances) < _MAX_LIST:
        reply = await _client(request).registry.ListAgents(
            registry_pb2.ListAgentsRequest(page_size=100, page_token=token, include_not_serving=True),
            metadata=_metadata(request),
            timeout=_TIMEOUT,
        )
        instances += [_to_json(i) for i in reply.instances]
        token = reply.next_page_token
        if not token:
            break
    return web.json_response({"instances": instances})


def _words(value: str) -> list[str]:
    return [w for w in re.split(r"[,\s]+", value) if w]


async def discover(request: web.Request) -> web.Response:
    """DiscoverAgents with the search form: visibility patterns, intent, purpose, skill, required policies."""
    q = request.query
    query = registry_pb2.DiscoverAgentsRequest(
        visibility=registry_pb2.VisibilityScope(patterns=_words(q.get("pattern", "")) or [".*"]),
        characteristics=registry_pb2.CharacteristicsScope(
            intent=q.get("intent", ""),
            purpose=q.get("purpose", ""),
            skill=q.get("skill", ""),
            required_policies=_words(q.get("policies", "")),
        ),
        max_results=50,
        view=registry_pb2.INSTANCE_VIEW_FULL,
    )
    reply = await _client(request).registry.DiscoverAgents(query, metadata=_metadata(request), timeout=_TIMEOUT)
    return web.json_response(_to_json(reply))


async def watch_agents(request: web.Request) -> web.StreamResponse:
    """WatchAgents relayed as server-sent events (read by fetch, which can send the Authorization header)."""
    try:
        since = int(request.query.get("since", "0") or 0)
    except ValueError:
        since = -1
    if not 0 <= since < 2**63:  # a revision (int64): anything else was a 500 from int() or protobuf
        return _error(400, "since must be a revision number (0 for a snapshot first)")
    call = _client(request).registry.WatchAgents(
        registry_pb2.WatchAgentsRequest(since_revision=since), metadata=_metadata(request), timeout=_WATCH_SECONDS
    )
    watches = request.app[WATCHES_KEY]
    watches.add(call)
    try:
        # The first event tells whether the gateway admitted the call, before any byte of the answer is sent.
        iterator = call.__aiter__()
        try:
            first = await iterator.__anext__()
        except StopAsyncIteration:
            first = None
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        await response.prepare(request)
        try:
            if first is not None:
                await response.write(_event(first))
                async for event in iterator:
                    await response.write(_event(event))
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                await response.write(f"event: end\ndata: {json.dumps({'error': exc.code().name})}\n\n".encode())
        except (asyncio.CancelledError, ConnectionResetError, OSError):  # shutting down, or the page went away
            pass
        return response
    finally:
        watches.discard(call)
        call.cancel()


async def cancel_watches(app: web.Application) -> None:
    """on_shutdown: end every open watch so stopping never waits for a browser to hang up."""
    watches: Watches = app[WATCHES_KEY]
    for call in tuple(watches):
        call.cancel()


def _event(event: Message) -> bytes:
    return f"data: {json.dumps(_to_json(event), separators=(',', ':'))}\n\n".encode()


async def list_tasks(request: web.Request) -> web.Response:
    """ListTasks, newest first as the planner returns them."""
    reply = await _client(request).tasks.ListTasks(
        task_pb2.ListTasksRequest(page_size=100, page_token=request.query.get("page", "")),
        metadata=_metadata(request),
        timeout=_TIMEOUT,
    )
    return web.json_response(_to_json(reply))


async def explain_task(request: web.Request) -> web.Response:
    """ExplainTask: plan, choices, substitutions, attempts, approvals, plan versions, sub-tasks."""
    reply = await _client(request).tasks.ExplainTask(
        task_pb2.ExplainTaskRequest(task_id=request.match_info["task_id"], max_depth=5),
        metadata=_metadata(request),
        timeout=_TIMEOUT,
    )
    return web.json_response(_to_json(reply))


async def _decide(request: web.Request, approve: bool) -> web.Response:
    try:
        body = await request.json() if request.can_read_body else {}
    except ValueError:  # not JSON, or not UTF-8 at all (UnicodeDecodeError was a 500)
        return _error(400, "the body must be JSON: {\"comment\": \"...\"}")
    comment = str(body.get("comment", "")) if isinstance(body, dict) else ""
    fields = {"task_id": request.match_info["task_id"], "step_id": request.match_info["step_id"], "comment": comment}
    stub = _client(request).tasks
    reply: task_pb2.ApproveStepResponse | task_pb2.RejectStepResponse
    if approve:
        reply = await stub.ApproveStep(task_pb2.ApproveStepRequest(**fields), metadata=_metadata(request), timeout=_TIMEOUT)
    else:
        reply = await stub.RejectStep(task_pb2.RejectStepRequest(**fields), metadata=_metadata(request), timeout=_TIMEOUT)
    return web.json_response(_to_json(reply))


async def approve_step(request: web.Request) -> web.Response:
    """ApproveStep (the gateway requires the `approve` scope and audits the decision)."""
    return await _decide(request, approve=True)


async def reject_step(request: web.Request) -> web.Response:
    """RejectStep (the gateway requires the `approve` scope and audits the decision)."""
    return await _decide(request, approve=False)


def api_routes() -> list[web.RouteDef]:
    """The JSON API's routes (mounted under /api)."""
    return [
        web.get("/agents", list_agents),
        web.get("/agents/discover", discover),
        web.get("/agents/watch", watch_agents),
        web.get("/tasks", list_tasks),
        web.get("/tasks/{task_id}", explain_task),
        web.post("/tasks/{task_id}/steps/{step_id}/approve", approve_step),
        web.post("/tasks/{task_id}/steps/{step_id}/reject", reject_step),
    ]
