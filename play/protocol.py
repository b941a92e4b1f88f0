"""The player's WebSocket protocol: message validation and the frame message.

Client -> server: JSON text messages of at most `MAX_MESSAGE` bytes, each an object with "type"
and exactly the fields listed in `MESSAGES` (optional ones may be left out):

    {"type": "input", "keys": ["KeyW", "Mouse0"], "mouse": [dx, dy], "seq": 17}
        held keys (DOM codes, at most 32) and mouse movement in pixels since the last input
        message; seq numbers the input, frames report the last seq they used
    {"type": "steps", "value": 2}          sampling steps K for the following frames
    {"type": "magnitude", "value": 0.5}    continuous actions: size of a key's action, (0, 1]
    {"type": "pause", "value": true}
    {"type": "reset", "clip": 3, "seed": 7}
        restart from held-out clip 3 with sampling key 7 (null or absent: random)
    {"type": "record", "value": false}     start (true) or stop and save (false) a recording

Server -> client: binary frame messages (`frame_message`: a 4-byte big-endian header length,
the JSON header, then the PNG image), and JSON text messages of type "hello" (the action layout,
its legend and the settings), "error" (a message was ignored, and why), "busy" (another browser
holds the player), "recorded" (the saved files) and "status".
"""

import json
import struct

MAX_MESSAGE = 4096  # bytes; larger messages are rejected
MAX_KEYS = 32
MAX_CODE = 32  # characters of one key code


class MessageError(ValueError):
    """A message that is ignored; the text says why."""


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _keys(value) -> bool:
    return (isinstance(value, list) and len(value) <= MAX_KEYS
            and all(isinstance(k, str) and 0 < len(k) <= MAX_CODE for k in value))


def _mouse(value) -> bool:
    return (isinstance(value, list) and len(value) == 2 and all(_number(v) for v in value)
            and all(abs(v) < 1e5 for v in value))


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


MESSAGES = {  # type -> {field: (check, required)}
    "input": {"keys": (_keys, True), "mouse": (_mouse, False), "seq": (_int, True)},
    "steps": {"value": (_int, True)},
    "magnitude": {"value": (lambda v: _number(v) and 0 < v <= 1, True)},
    "pause": {"value": (lambda v: isinstance(v, bool), True)},
    "reset": {"clip": (lambda v: v is None or (_int(v) and v >= 0), False),
              "seed": (lambda v: v is None or (_int(v) and 0 <= v < 2**31), False)},
    "record": {"value": (lambda v: isinstance(v, bool), True)},
}


def parse_message(raw: str | bytes) -> dict:
    """A validated client message; `MessageError` says why one is rejected."""
    if isinstance(raw, bytes):
        raise MessageError("binary messages are not part of the protocol")
    if len(raw.encode()) > MAX_MESSAGE:
        raise MessageError(f"message of {len(raw.encode())} bytes exceeds {MAX_MESSAGE} bytes")
    try:
        message = json.loads(raw)
    except ValueError:
        raise MessageError("not JSON") from None
    if not isinstance(message, dict) or message.get("type") not in MESSAGES:
        kind = message.get("type") if isinstance(message, dict) else None
        raise MessageError(f"unknown message type {str(kind)[:40]!r}; known: {sorted(MESSAGES)}")
    fields = MESSAGES[message["type"]]
    unknown = sorted(set(message) - set(fields) - {"type"})
    if unknown:
        raise MessageError(f"{message['type']}: unknown fields {unknown}")
    for name, (check, required) in fields.items():
        if name not in message:
            if required:
                raise MessageError(f"{message['type']}: missing field {name!r}")
        elif not check(message[name]):
            raise MessageError(f"{message['type']}: invalid {name} {str(message[name])[:60]}")
    return message


def frame_message(header: dict, png: bytes) -> bytes:
    """Header length (4 bytes, big-endian), the JSON header, then the PNG."""
    encoded = json.dumps(header).encode()
    return struct.pack(">I", len(encoded)) + encoded + png


def read_frame_message(data: bytes) -> tuple[dict, bytes]:
    """(header, PNG) of a frame message (clients and tests)."""
    (length,) = struct.unpack(">I", data[:4])
    return json.loads(data[4:4 + length]), data[4 + length:]
