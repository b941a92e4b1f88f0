"""The player's web server: one page, one WebSocket for frames and inputs, and the Gymnasium
env as HTTP endpoints. Starlette (ASGI routes, WebSockets, responses) served by uvicorn.

Routes:
    GET  /                  the page (play/page.html)
    WS   /ws                the live session (protocol in play/protocol.py); one at a time: a
                            second browser gets a "busy" message and the socket closes (1013)
    GET  /env               observation and action spaces as JSON
    POST /env/reset         {"seed": int, "clip": int} (both optional) -> {"observation", "info"}
    POST /env/step          {"action": number or list} -> {"observation", "reward",
                            "terminated", "truncated", "info"}; observations are nested lists
                            uint8 [H][W][3]. One env shared by all HTTP clients.
    GET  /recordings/<name> a saved recording

Serving model: per session a loop sends frames at a fixed rate (`fps`; 0: as fast as the model
allows), each made from the latest input (inputs arrive on their own task and only update the
session's state), never one request per frame. A disconnect or reload ends the session, never
the server.

Security: bound to 127.0.0.1 unless told otherwise. A local server answers only requests whose
Host is a loopback name (no DNS rebinding); every request with an Origin header must come from
the page's own origin (no cross-site sockets or posts); a server on another host requires
`token` (from the URL's ?token= or an `Authorization: Bearer` header) on every request.
"""

import asyncio
import json
import logging
import os
import re
import secrets
import socket
import threading
import urllib.parse
from importlib import resources

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from play.env import Contexts, WorldModelEnv, check_actions
from play.keys import key_map
from play.session import Session

log = logging.getLogger("play")
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
MAX_BODY = 65536  # bytes of an HTTP request body
MAX_FRAME = 65536  # bytes of a WebSocket message at the transport level (closes with 1009)
RECORDING = re.compile(r"play-[\w.-]+\.(gif|mp4)")


class Player:
    """What all connections share: the model, context clips and settings, at most one live
    session, and the HTTP env. `token` is required on every request when set; `guidance` (None:
    the world model's own `sampling`) is action guidance."""

    def __init__(self, world_model, contexts: Contexts | None, *, fps: float, steps: int,
                 capacity: int, context_frames: int, recordings: str, local: bool = True,
                 token: str | None = None, guidance: float | None = None):
        self.world_model, self.contexts = world_model, contexts
        self.fps, self.steps, self.recordings = fps, steps, recordings
        self.capacity, self.context_frames, self.guidance = capacity, context_frames, guidance
        self.local, self.token = local, token
        self.keys = key_map(world_model.action)
        self.busy = False
        self.env = self.new_env()
        self.env_lock = threading.Lock()
        self.env_started = False

    def new_env(self) -> WorldModelEnv:
        return WorldModelEnv(self.world_model, contexts=self.contexts, steps=self.steps,
                             capacity=self.capacity, context_frames=self.context_frames,
                             guidance=self.guidance)

    def warm_up(self, steps: tuple[int, ...] = ()) -> None:
        """Compiles reset and step (for the default K and each of `steps`) before serving."""
        env = self.new_env()
        env.reset(seed=0)
        for k in (self.steps, *steps):
            env.steps = k
            env.step(self.keys.action(frozenset()))

    def session(self) -> Session:
        return Session(self.new_env(), self.keys, fps=self.fps, recordings=self.recordings)


def _header(scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def refusal(scope, player: Player) -> str | None:
    """Why a request or socket is refused, or None (see the module doc)."""
    host = _header(scope, b"host") or ""
    if player.local and urllib.parse.urlsplit(f"//{host}").hostname not in LOOPBACK:
        return f"host {host!r} is not a loopback name"
    origin = _header(scope, b"origin")
    if origin is not None and urllib.parse.urlsplit(origin).netloc != host:
        return f"origin {origin!r} is not this server's"
    if player.token:
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode())
        given = query.get("token", [""])[0]
        bearer = _header(scope, b"authorization") or ""
        if bearer.startswith("Bearer "):
            given = given or bearer[len("Bearer "):]
        if not secrets.compare_digest(given.encode(), player.token.encode()):
            return "missing or wrong access token (use the URL the player printed)"
    return None


class Guard:
    """ASGI middleware that refuses requests and sockets `refusal` objects to."""

    def __init__(self, app, player: Player):
        self.app, self.player = app, player

    async def __call__(self, scope, receive, send):
        reason = refusal(scope, self.player) if scope["type"] in ("http", "websocket") else None
        if reason is None:
            return await self.app(scope, receive, send)
        log.warning("play: refused %s %s: %s", scope["type"], scope.get("path"), reason)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": reason[:120]})
        else:
            await PlainTextResponse(f"refused: {reason}", status_code=403)(scope, receive, send)


async def _stream(ws: WebSocket, session: Session, wake: asyncio.Event, send_lock: asyncio.Lock,
                  fps: float) -> None:
    """Frames at `fps` (0: back to back) while the session wants them."""
    loop = asyncio.get_running_loop()
    period = 1.0 / fps if fps > 0 else 0.0
    next_at = loop.time()
    while True:
        if not session.wants_frame:
            wake.clear()
            if not session.wants_frame:
                await wake.wait()
            next_at = loop.time()
            continue
        data = await asyncio.to_thread(session.tick)
        async with send_lock:
            await ws.send_bytes(data)
        next_at = max(next_at + period, loop.time())
        await asyncio.sleep(next_at - loop.time())


async def _receive(ws: WebSocket, session: Session, wake: asyncio.Event,
                   send_lock: asyncio.Lock) -> None:
    """Applies client messages as they come; returns when the client leaves."""
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        raw = message.get("text")
        replies = await asyncio.to_thread(session.handle,
                                          raw if raw is not None else message.get("bytes", b""))
        async with send_lock:
            for reply in replies:
                await ws.send_text(json.dumps(reply))
        wake.set()


def make_app(player: Player) -> Starlette:
    page = resources.files("play").joinpath("page.html").read_text()

    async def index(request: Request):
        return HTMLResponse(page)

    async def play_socket(ws: WebSocket):
        await ws.accept()
        if player.busy:
            await ws.send_text(json.dumps({"type": "busy", "message": (
                "another browser is playing this world model; close it (or its tab) and "
                "reload this page")}))
            await ws.close(code=1013)
            return
        player.busy = True
        log.warning("play: session started")
        tasks = []
        try:
            session = player.session()
            await ws.send_text(json.dumps(session.hello()))
            wake, send_lock = asyncio.Event(), asyncio.Lock()
            tasks = [asyncio.create_task(_receive(ws, session, wake, send_lock)),
                     asyncio.create_task(_stream(ws, session, wake, send_lock, player.fps))]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = task.exception()
                if error is not None and not _is_disconnect(error):
                    log.error("play: session failed", exc_info=error)
        except Exception as error:
            if not _is_disconnect(error):
                log.exception("play: session failed")
        finally:
            for task in tasks:
                task.cancel()
            player.busy = False
            log.warning("play: session ended")

    async def env_spaces(request: Request):
        env = player.env
        return JSONResponse({"observation": _space(env.observation_space),
                             "action": _space(env.action_space),
                             "kind": player.world_model.action.kind,
                             "clips": 0 if player.contexts is None else len(player.contexts)})

    async def env_reset(request: Request):
        body = await _json_body(request)
        if isinstance(body, JSONResponse):
            return body
        seed, clip = body.get("seed"), body.get("clip")
        if not all(v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0)
                   for v in (seed, clip)) or set(body) - {"seed", "clip"}:
            return _bad("reset takes {\"seed\": int, \"clip\": int}, both optional")
        clips = 0 if player.contexts is None else len(player.contexts)
        if clip is not None and clip >= clips:
            return _bad(f"no held-out clip {clip} (there are {clips})")

        def reset():
            with player.env_lock:
                player.env_started = True
                return player.env.reset(seed=seed, options={"clip": clip})
        observation, info = await asyncio.to_thread(reset)
        return JSONResponse({"observation": observation.tolist(), "info": info})

    async def env_step(request: Request):
        body = await _json_body(request)
        if isinstance(body, JSONResponse):
            return body
        if set(body) != {"action"}:
            return _bad("step takes {\"action\": number or list}")
        try:
            action = check_actions(player.world_model.action, [body["action"]], 1)[0]
        except ValueError as error:
            return _bad(str(error))

        def step():
            with player.env_lock:
                if not player.env_started:
                    return None
                return player.env.step(action)
        result = await asyncio.to_thread(step)
        if result is None:
            return JSONResponse({"error": "POST /env/reset first"}, status_code=409)
        observation, reward, terminated, truncated, info = result
        return JSONResponse({"observation": observation.tolist(), "reward": reward,
                             "terminated": terminated, "truncated": truncated, "info": info})

    async def recording(request: Request):
        name = request.path_params["name"]
        path = os.path.join(player.recordings, name)
        if not RECORDING.fullmatch(name) or not os.path.isfile(path):
            return PlainTextResponse("no such recording", status_code=404)
        return FileResponse(path)

    app = Starlette(routes=[
        Route("/", index), WebSocketRoute("/ws", play_socket), Route("/env", env_spaces),
        Route("/env/reset", env_reset, methods=["POST"]),
        Route("/env/step", env_step, methods=["POST"]),
        Route("/recordings/{name}", recording),
    ])
    app.add_middleware(Guard, player=player)
    return app


def _is_disconnect(error: BaseException) -> bool:
    return isinstance(error, WebSocketDisconnect | OSError | asyncio.CancelledError) or (
        type(error).__name__ in ("ClientDisconnected", "ConnectionClosed", "ConnectionClosedOK",
                                 "ConnectionClosedError")) or (
        isinstance(error, RuntimeError) and "close" in str(error).lower())


def _bad(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=400)


async def _json_body(request: Request) -> dict | JSONResponse:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            return JSONResponse({"error": f"body exceeds {MAX_BODY} bytes"}, status_code=413)
    try:
        value = json.loads(body or b"{}")
    except ValueError:
        return _bad("body is not JSON")
    return value if isinstance(value, dict) else _bad("body must be a JSON object")


def _space(space) -> dict:
    described = {"type": type(space).__name__, "shape": list(space.shape or ()),
                 "dtype": str(space.dtype)}
    if hasattr(space, "low"):
        described |= {"low": np.asarray(space.low).min().item(),
                      "high": np.asarray(space.high).max().item()}
    if hasattr(space, "n"):
        described["n"] = int(space.n)
    if hasattr(space, "nvec"):
        described["nvec"] = np.asarray(space.nvec).tolist()
    return described


def server_config(app, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(app, host=host, port=port, log_level="warning", ws_max_size=MAX_FRAME,
                          ws_ping_interval=None, lifespan="off")


class Background:
    """The app served by uvicorn on a thread (tests and the benchmark); `port` is the bound one."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((host, port))
        self.port = self.socket.getsockname()[1]
        self.server = uvicorn.Server(server_config(app, host, self.port))
        self.thread = threading.Thread(target=self.server.run,
                                       kwargs={"sockets": [self.socket]}, daemon=True)
        self.thread.start()
        for _ in range(1000):
            if self.server.started:
                break
            self.thread.join(0.01)
        if not self.server.started:
            raise RuntimeError("the player's server did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.socket.close()
