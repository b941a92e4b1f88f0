"""The player's server over its real protocol: a uvicorn server on a thread, WebSocket and HTTP
clients. Frames and inputs, bad messages, disconnects, a second browser, recording, the HTTP env,
and the request guard (host, origin, token)."""

import http.client
import json
import time

import imageio.v3 as iio
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from play.env import WorldModelEnv
from play.protocol import MAX_MESSAGE, read_frame_message
from play.server import Background, Player, make_app, refusal
from tests.play_models import CALVIN, tiny_contexts, tiny_world

SETTINGS = dict(context_frames=4, capacity=8, steps=2)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    world, contexts = tiny_world(CALVIN), tiny_contexts(CALVIN, clips=3, length=12)
    player = Player(world, contexts, fps=20.0, recordings=str(tmp_path_factory.mktemp("rec")),
                    **{"steps": SETTINGS["steps"], "capacity": SETTINGS["capacity"],
                       "context_frames": SETTINGS["context_frames"]})
    player.warm_up()
    server = Background(make_app(player))
    yield player, server
    server.stop()


def _socket(server, **kwargs):
    return connect(f"ws://127.0.0.1:{server.port}/ws", max_size=2**20, open_timeout=30, **kwargs)


def _next(ws, want, timeout=30.0):
    """The next message for which want(kind, message) holds; frames come as ("frame", (header,
    png)), text as (its type, the parsed object)."""
    deadline = time.monotonic() + timeout
    while True:
        data = ws.recv(timeout=max(deadline - time.monotonic(), 0.01))
        if isinstance(data, bytes):
            kind, message = "frame", read_frame_message(data)
        else:
            message = json.loads(data)
            kind = message["type"]
        if want(kind, message):
            return message


def _frame(ws, when=lambda header: True):
    return _next(ws, lambda kind, m: kind == "frame" and when(m[0]))


def _request(server, method, path, body=None, headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    return response.status, response.read()


def _frames_after_reset(ws, keys, seed, seq, count=3):
    """Holds `keys` (input number `seq`), restarts clip 0 with `seed` and returns the next
    `count` frames' pixels."""
    ws.send(json.dumps({"type": "input", "keys": keys, "seq": seq}))
    ws.send(json.dumps({"type": "reset", "clip": 0, "seed": seed}))
    header, _ = _frame(ws, lambda h: h["reset"] and h["input_seq"] == seq)
    assert header["index"] == SETTINGS["context_frames"] and header["clip"] == 0
    frames = [iio.imread(_frame(ws)[1]) for _ in range(count)]
    return np.stack(frames)


def test_hello_frames_inputs_and_settings(served):
    _, server = served
    with _socket(server) as ws:
        hello = json.loads(ws.recv(timeout=30))
        assert hello["type"] == "hello" and hello["kind"] == "continuous"
        assert hello["clips"] == 3 and hello["window"] == 8 and hello["image_size"] == [16, 16]
        assert {"KeyW", "KeyS"} in [set(row["keys"]) for row in hello["legend"]]
        header, png = _frame(ws)
        assert header["reset"] and header["index"] == 4 and header["context"] == 4
        assert iio.imread(png).shape == (16, 16, 3)
        ws.send(json.dumps({"type": "input", "keys": ["KeyW", "NotAKey"], "seq": 5}))
        header, _ = _frame(ws, lambda h: h["input_seq"] == 5)
        ws.send(json.dumps({"type": "steps", "value": 1}))
        header, _ = _frame(ws, lambda h: h["steps"] == 1)
        assert header["window"] == 8 and header["context"] <= 7
        ws.send(json.dumps({"type": "steps", "value": 99}))  # beyond k_max = 4
        assert "1..4" in _next(ws, lambda kind, m: kind == "error")["message"]


def test_different_keys_give_different_frames(served):
    _, server = served
    with _socket(server) as ws:
        _frame(ws)  # the session's own first reset
        forward = _frames_after_reset(ws, ["KeyW"], seed=9, seq=1)
        again = _frames_after_reset(ws, ["KeyW"], seed=9, seq=2)
        right = _frames_after_reset(ws, ["KeyD"], seed=9, seq=3)
    np.testing.assert_array_equal(forward, again)  # same keys and key: the same frames
    assert not np.array_equal(forward, right)


def test_malformed_messages_are_ignored_and_the_session_goes_on(served):
    _, server = served
    bad = ["not json", json.dumps([1, 2]), json.dumps({"type": "fly"}),
           json.dumps({"type": "input", "keys": "KeyW", "seq": 1}),
           json.dumps({"type": "input", "keys": [], "seq": 1, "extra": 0}),
           json.dumps({"type": "magnitude", "value": 7}), json.dumps({"type": "pause"}),
           json.dumps({"type": "reset", "clip": 3}), b"\x00binary",
           json.dumps({"type": "input", "keys": ["K" * 10] * 30, "seq": 1}) + " " * MAX_MESSAGE]
    reasons = ["not JSON", "unknown message type", "unknown message type", "invalid keys",
               "unknown fields", "invalid value", "missing field", "no held-out clip 3",
               "binary", "exceeds"]
    with _socket(server) as ws:
        _frame(ws)
        for message, reason in zip(bad, reasons, strict=True):
            ws.send(message)
            assert reason in _next(ws, lambda kind, m: kind == "error")["message"]
        ws.send(json.dumps({"type": "input", "keys": ["KeyA"], "seq": 40}))
        assert _frame(ws, lambda h: h["input_seq"] == 40)[0]["type"] == "frame"


def test_oversized_transport_message_closes_only_that_socket(served):
    _, server = served
    with _socket(server) as ws:
        _frame(ws)
        ws.send("x" * 70_000)
        with pytest.raises(ConnectionClosed) as closed:
            _frame(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    _hello_when_free(server)


def _hello_when_free(server, timeout=30.0):
    """A new session's hello once the last one has ended (polling: it ends asynchronously)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with _socket(server) as ws:
            message = json.loads(ws.recv(timeout=30))
            if message["type"] == "hello":
                _frame(ws)
                return message
        time.sleep(0.2)
    raise AssertionError("the server did not free the session")


def test_second_browser_is_told_busy_and_a_dropped_one_frees_the_player(served):
    _, server = served
    with _socket(server) as first:
        _frame(first)
        with _socket(server) as second:
            busy = json.loads(second.recv(timeout=30))
            assert busy["type"] == "busy" and "another browser" in busy["message"]
            with pytest.raises(ConnectionClosed) as closed:
                second.recv(timeout=30)
            assert closed.value.rcvd.code == 1013
        _frame(first)  # the first session is untouched
        first.socket.close()  # dropped mid-stream, without a closing handshake
    assert _hello_when_free(server)["type"] == "hello"


def test_record_saves_gif_and_mp4(served):
    _, server = served
    with _socket(server) as ws:
        _frame(ws)
        ws.send(json.dumps({"type": "record", "value": True}))
        _frame(ws, lambda h: (h["recording"] or 0) >= 5)
        ws.send(json.dumps({"type": "record", "value": False}))
        files = _next(ws, lambda kind, m: kind == "recorded")["files"]
    assert sorted(name.rsplit(".", 1)[1] for name in files) == ["gif", "mp4"]
    assert _request(server, "GET", f"/recordings/{files[1]}")[0] == 200
    gif = next(name for name in files if name.endswith(".gif"))
    status, body = _request(server, "GET", f"/recordings/{gif}")
    video = iio.imread(body, extension=".gif", index=None)
    assert status == 200 and video.shape[1:3] == (256, 256)  # 16 px upscaled by 16
    assert _request(server, "GET", "/recordings/..%2Fsecret.gif")[0] == 404


def test_http_env_matches_a_local_env(served):
    player, server = served
    spaces = json.loads(_request(server, "GET", "/env")[1])
    assert spaces["action"]["shape"] == [7] and spaces["observation"]["shape"] == [16, 16, 3]
    status, body = _request(server, "POST", "/env/step", json.dumps({"action": [0.0] * 7}))
    assert status == 409 and b"reset" in body
    status, body = _request(server, "POST", "/env/reset", json.dumps({"seed": 4, "clip": 1}))
    reply = json.loads(body)
    local = WorldModelEnv(player.world_model, contexts=player.contexts, **SETTINGS)
    expected, info = local.reset(seed=4, options={"clip": 1})
    assert status == 200 and reply["info"] == info
    np.testing.assert_array_equal(np.asarray(reply["observation"], np.uint8), expected)
    action = [0.5, -0.5, 0.0, 0.0, 0.0, 0.0, 1.0]
    status, body = _request(server, "POST", "/env/step", json.dumps({"action": action}))
    reply = json.loads(body)
    expected, *_ = local.step(np.asarray(action, np.float32))
    assert status == 200 and (reply["reward"], reply["terminated"], reply["truncated"]) == (
        0.0, False, False)
    np.testing.assert_array_equal(np.asarray(reply["observation"], np.uint8), expected)
    for body, code in ((json.dumps({"action": [1.0] * 3}), 400), ("{", 400),
                       (json.dumps({"act": 1}), 400), ("x" * 70_000, 413)):
        assert _request(server, "POST", "/env/step", body)[0] == code
    assert _request(server, "POST", "/env/reset", json.dumps({"clip": 9}))[0] == 400


def test_guard_refuses_foreign_hosts_origins_and_missing_tokens(served):
    player, server = served
    status, body = _request(server, "GET", "/", headers={"Host": f"evil.example:{server.port}"})
    assert status == 403 and b"loopback" in body
    with pytest.raises(InvalidStatus):
        _socket(server, origin="http://evil.example")
    assert _request(server, "GET", "/")[0] == 200

    def scope(path="/", query=b"", **headers):
        return {"type": "http", "path": path, "query_string": query,
                "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}

    assert refusal(scope(host="localhost:8765", origin="http://localhost:8765"), player) is None
    assert "origin" in refusal(scope(host="localhost:8765", origin="http://x:8765"), player)
    remote = Player(player.world_model, None, fps=0.0, steps=2, capacity=8, context_frames=4,
                    recordings="", local=False, token="s3cret")
    assert refusal(scope(host="10.0.0.2:80"), remote).startswith("missing or wrong access token")
    assert "token" in refusal(scope(host="10.0.0.2:80", query=b"token=wrong"), remote)
    assert refusal(scope(host="10.0.0.2:80", query=b"token=s3cret"), remote) is None
    assert refusal(scope(host="h:1", authorization="Bearer s3cret"), remote) is None
