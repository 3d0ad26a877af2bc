"""The dashboard process: the page, ``/api/*`` and ``/metrics`` over aiohttp, behind a credential.

::

    browser --GET /?token=<credential>--> sets an HttpOnly cookie, redirects to /
            --GET /, /static/*, /api/*, /metrics (cookie, or
              "Authorization: Bearer <credential>")--> answered
            --anything without the credential--> 401; with a wrong one --> 403

    handlers --(thread)--> collect.Collector.snapshot() --> control store, node daemons

Started by the head (``skate._private.dashboard_launch``, as ``python -m
skate.dashboard``) on a socket it
bound; exits when the control store is gone for good, or on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import os
import time
from typing import Any

from aiohttp import web

from skate._private import daemon, dashboard_launch, logs, private_paths, wire
from skate._private.config import CONFIG
from skate._private.gcs.client import gcs_target
from skate.dashboard import collect, metrics

COOKIE = "skate_dashboard"
STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
_NEEDS_LINK = ("This dashboard needs its link with the credential (printed by skate.init() and "
               "`skate start --head`, and in skate.init()'s dashboard_url).\n")


def _presented(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        return auth[7:].strip()
    return request.cookies.get(COOKIE) or request.query.get("token")


def auth_middleware(credential: str) -> Any:
    """Refuses every request without the credential (401) or with a wrong one (403).

    A page request carrying a valid ``?token=`` gets the credential as an
    HttpOnly, SameSite=Strict cookie and is redirected to the same path
    without it, so the credential leaves the address bar.
    """

    @web.middleware
    async def check(request: web.Request, handler: Any) -> web.StreamResponse:
        given = _presented(request)
        if not given:
            raise web.HTTPUnauthorized(text=_NEEDS_LINK, headers={"WWW-Authenticate": 'Bearer realm="skate"'})
        if not hmac.compare_digest(given.encode(), credential.encode()):
            raise web.HTTPForbidden(text="Wrong dashboard credential.\n")
        if "token" in request.query and request.method == "GET":
            query = {k: v for k, v in request.query.items() if k != "token"}
            target = request.rel_url.with_query(query) if query else request.rel_url.with_query(None)
            response = web.HTTPFound(str(target))
            response.set_cookie(COOKIE, credential, httponly=True, samesite="Strict", path="/")
            raise response
        response = await handler(request)
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    return check


class Dashboard:
    """The routes; every view answers from one snapshot of the cluster."""

    def __init__(self, gcs_address: str, token: bytes, session_dir: str) -> None:
        self.collector = collect.Collector(gcs_address, token)
        self.session = os.path.basename(os.path.normpath(session_dir))
        self.logs_dir = logs.session_logs_dir(session_dir)
        self.gcs_address = gcs_address
        self.registry = metrics.registry(self.session, lambda: self._snap)
        self._snap: collect.Snapshot | None = None

    async def snapshot(self) -> collect.Snapshot:
        snap = await asyncio.to_thread(self.collector.snapshot)
        self._snap = snap
        return snap

    def app(self, credential: str) -> web.Application:
        app = web.Application(middlewares=[auth_middleware(credential)])
        app.router.add_get("/", self.index)
        app.router.add_static("/static/", STATIC, show_index=False)
        for name in ("summary", "nodes", "actors", "tasks", "jobs", "placement_groups", "timeline", "waiting"):
            app.router.add_get(f"/api/{name}", getattr(self, "api_" + name))
        app.router.add_get("/api/logs/{pid}", self.api_logs)
        app.router.add_get("/metrics", self.metrics)
        return app

    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(os.path.join(STATIC, "index.html"))

    async def api_summary(self, request: web.Request) -> web.Response:
        snap = await self.snapshot()
        states: dict[str, int] = {}
        for (_, st), c in snap.task_counts.items():
            states[st] = states.get(st, 0) + c
        actor_states: dict[str, int] = {}
        for a in snap.actors:
            actor_states[a["state"]] = actor_states.get(a["state"], 0) + 1
        return _json({
            "session": self.session, "gcs_address": self.gcs_address, "taken": snap.taken,
            "nodes_alive": sum(1 for n in snap.nodes if n["state"] == "ALIVE"), "nodes": len(snap.nodes),
            "tasks": states, "actors": actor_states, "jobs": len(snap.jobs),
            "hang": self.collector.hang(snap), "errors": snap.errors,
        })

    async def api_nodes(self, request: web.Request) -> web.Response:
        return _json((await self.snapshot()).nodes)

    async def api_actors(self, request: web.Request) -> web.Response:
        return _json((await self.snapshot()).actors)

    async def api_tasks(self, request: web.Request) -> web.Response:
        tasks = (await self.snapshot()).tasks
        st = request.query.get("state")
        if st:
            tasks = [t for t in tasks if t["state"] == st]
        return _json(tasks)

    async def api_jobs(self, request: web.Request) -> web.Response:
        return _json((await self.snapshot()).jobs)

    async def api_placement_groups(self, request: web.Request) -> web.Response:
        return _json((await self.snapshot()).placement_groups)

    async def api_timeline(self, request: web.Request) -> web.Response:
        snap = await self.snapshot()
        return _json({"now_ms": snap.taken * 1000, "tasks": collect.timeline(snap)})

    async def api_waiting(self, request: web.Request) -> web.Response:
        snap = await self.snapshot()
        return _json(collect.waiting(snap, self.collector.hang(snap)))

    async def api_logs(self, request: web.Request) -> web.Response:
        """The end of a worker's output files on this host (``worker-<pid>.out`` / ``.err``)."""
        pid = request.match_info["pid"]
        if not pid.isdigit():
            raise web.HTTPBadRequest(text="pid must be a number\n")
        out = []
        for ext in ("out", "err"):
            path = os.path.join(self.logs_dir, f"worker-{int(pid)}.{ext}")
            lines = logs.tail(path, 500)
            out.append(f"==> {os.path.basename(path)} <==\n{lines or '(empty, or not on this host)'}\n")
        return web.Response(text="\n".join(out), content_type="text/plain")

    async def metrics(self, request: web.Request) -> web.Response:
        await self.snapshot()
        body = await asyncio.to_thread(metrics.render, self.registry)
        return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})


def _json(value: Any) -> web.Response:
    return web.Response(text=json.dumps(value, default=str), content_type="application/json")


async def _announce(gcs_address: str, token: bytes, address: str) -> wire.Connection:
    conn = await wire.connect(gcs_address, token, {}, expect=wire.GCS_IDENTITY)
    await conn.request("kv_put", [dashboard_launch.KV_NAMESPACE, dashboard_launch.KV_KEY, True], [address.encode()])
    return conn


async def _watch_gcs(conn: wire.Connection, gcs_address: str, token: bytes, address: str,
                     stop: asyncio.Event) -> None:
    """Sets ``stop`` once the control store is gone for good (a durable one may come back)."""
    while not stop.is_set():
        await asyncio.sleep(1.0)
        if not conn.closed:
            continue
        deadline = time.monotonic() + max(CONFIG.gcs_reconnect_timeout_s if CONFIG.gcs_storage else 3.0, 3.0)
        while time.monotonic() < deadline and not stop.is_set():
            try:
                conn = await _announce(gcs_address, token, address)
                break
            except (OSError, ConnectionError, EOFError, asyncio.TimeoutError, wire.AuthError):
                await asyncio.sleep(0.5)
        else:
            stop.set()


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="skate dashboard (started by the head)")
    p.add_argument("--gcs-address", required=True)
    p.add_argument("--token-file", required=True)
    p.add_argument("--listen-fd", type=int, required=True)
    p.add_argument("--address", required=True, help="host:port the socket is bound to")
    p.add_argument("--session-dir", required=True)
    p.add_argument("--gcs-pid", type=int, required=True, help="the control store's process (see __main__.py)")
    return p.parse_args(argv)


async def _main(stop: asyncio.Event) -> None:
    args = _parse()
    token = private_paths.read_token(args.token_file)
    # The state API used by the collector finds the token here (this process starts no other).
    os.environ["SKATE_CLUSTER_TOKEN"] = token.decode()
    import socket

    sock = socket.socket(fileno=args.listen_fd)
    dash = Dashboard(args.gcs_address, token, args.session_dir)
    runner = web.AppRunner(dash.app(dashboard_launch.credential(token)), access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    target = gcs_target(args.gcs_address, args.session_dir)  # this host's: its Unix socket
    conn = await _announce(target, token, args.address)
    watch = asyncio.ensure_future(_watch_gcs(conn, target, token, args.address, stop))
    try:
        await stop.wait()
    finally:
        watch.cancel()
        await runner.cleanup()


def run() -> None:
    """Runs the dashboard until SIGTERM or the control store's end (``python -m skate.dashboard``)."""
    daemon.run(_main)
