"""Play a trained world model in the browser.

    python launch/play.py --workdir=runs/calvin-small
    python launch/play.py --workdir=runs/coinrun-small --steps=2 --fps=0 --port=8080
    python launch/play.py --workdir=runs/calvin-small --host=0.0.0.0   # prints a URL with a token

Loads the world model of the workdir, compiles the per-frame step, serves one page on
127.0.0.1 (`--host` for another interface: then every request needs the access token the printed
URL carries) and prints its URL. Frames run at the dataset's frame rate (`--fps`, 0 for as fast
as the model allows) with K = `--steps` sampling steps, from `--context` frames of a random
held-out clip, in a window of `--window` frames. Recordings go to `<workdir>/play/`. The same
server answers `POST /env/reset` and `/env/step` (play/server.py).
"""

import os
import secrets
import socket
import sys

if not __package__:  # run as a file: import this checkout's packages
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging

try:
    import uvicorn

    from play.server import LOOPBACK, Player, make_app, server_config
    from play.workdir import PlayError, load_contexts, load_world_model, read_defaults
except ModuleNotFoundError as missing:  # the play extra is not installed
    raise SystemExit(f"play: {missing}; install the player's dependencies with "
                     "pip install -e \".[play]\"") from None

_WORKDIR = flags.DEFINE_string("workdir", None, "a run's workdir (or a saved world model folder)")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "interface to bind; a non-local one needs a token")
_PORT = flags.DEFINE_integer("port", 8765, "port (0: any free port)")
_STEPS = flags.DEFINE_integer("steps", None, "sampling steps K per frame (default: the eval's)")
_FPS = flags.DEFINE_float("fps", None, "frames per second (default: the dataset's; 0: as fast "
                                       "as the model allows)")
_CONTEXT = flags.DEFINE_integer("context", None, "context frames taken from a held-out clip")
_WINDOW = flags.DEFINE_integer("window", None, "frames in the KV caches (default: the longest "
                                               "training sequence)")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    workdir = _WORKDIR.value
    if not workdir:
        raise SystemExit("play: --workdir is required, e.g. python launch/play.py "
                         "--workdir=runs/calvin-small")
    try:
        world_model = load_world_model(workdir)
    except PlayError as error:
        raise SystemExit(f"play: {error}") from None
    defaults = read_defaults(workdir)
    sampling = world_model.sampling  # the run's config.eval (world.model.read_sampling)
    steps = _STEPS.value or sampling.steps
    fps = defaults.fps if _FPS.value is None else _FPS.value
    context = _CONTEXT.value or defaults.context_frames
    window = _WINDOW.value or defaults.capacity
    k_max = world_model.dynamics.config.k_max
    if not 1 <= steps <= k_max or window < 2 or context < 1 or fps < 0:
        raise SystemExit(f"play: need --steps in 1..{k_max} (k_max of this model), --window >= 2, "
                         f"--context >= 1 and --fps >= 0; got {steps}, {window}, {context}, {fps}")
    contexts = load_contexts(workdir, context)
    if contexts is None:
        print(f"[play] no held-out clips of {context} frames in {workdir}/clips: every session "
              "starts from an imagined first frame", flush=True)
    local = _HOST.value in LOOPBACK
    token = None if local else secrets.token_urlsafe(16)
    player = Player(world_model, contexts, fps=fps, steps=steps, capacity=window,
                    context_frames=context, recordings=os.path.join(workdir, "play"),
                    local=local, token=token)
    family = socket.AF_INET6 if ":" in _HOST.value else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((_HOST.value, _PORT.value))
        sock.listen(128)  # connections made before uvicorn runs wait in the backlog
    except OSError as error:
        raise SystemExit(f"play: cannot listen on {_HOST.value}:{_PORT.value} ({error}); pick "
                         "another with --port (0: any free port)") from None
    print(f"[play] {world_model.action.kind} actions, K = {steps}, context signal "
          f"{sampling.context_signal:g}, guidance {sampling.guidance:g}, "
          f"{'as fast as the model allows' if fps == 0 else f'{fps:g} frames/s'}, window "
          f"{window} frames; compiling...", flush=True)
    player.warm_up()
    port = sock.getsockname()[1]
    host = f"[{_HOST.value}]" if ":" in _HOST.value else _HOST.value
    url = f"http://{host}:{port}/" + (f"?token={token}" if token else "")
    if token:
        print(f"[play] {_HOST.value} is not a local address: every request needs the access "
              "token, which this URL carries", flush=True)
    print(f"[play] open {url}  (Ctrl-C stops)", flush=True)
    uvicorn.Server(server_config(make_app(player), _HOST.value, port)).run(sockets=[sock])


if __name__ == "__main__":
    app.run(main)
