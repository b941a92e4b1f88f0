"""Speed of the player as a client of its WebSocket sees it: frames/s and keypress-to-frame
latency for K = 1, 2, 4, with the server as fast as the model allows (`--fps=0`) and at the
dataset's frame rate.

    python -m launch.play_bench                               # random weights, calvin:small sizes
    python -m launch.play_bench --workdir=runs/calvin-small   # a trained model

Without `--workdir` (or when it holds no trained model) the model has random weights at the
sizes of configs/calvin.py:small (48x48 frames), saved with that config to a temporary folder;
speed does not depend on the weights. The player runs as `python -m launch.play` in its own
process; this process is the client: it presses and releases a key at random intervals
(`--key_interval`, uniform from half to 1.5 times it) and takes, for each press, the time from
sending it to receiving the first frame made with it (the frame header's `input_seq`). A browser
adds its PNG decode and draw (about a millisecond at 48x48) to that. frames/s counts frames
received over `--seconds` after one second of warm-up.
"""

import json
import os
import queue
import random
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
from absl import app, flags

from play.protocol import read_frame_message

FLAGS = flags.FLAGS
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_small_model(folder: str) -> str:
    """configs/calvin.py:small sizes with random weights, saved with its config.json."""
    import jax

    from configs import calvin
    from dynamics import ActionSpec, Dynamics
    from launch import settings
    from tokenizer import Tokenizer
    from world import WorldModel

    config = calvin.get_config("small")
    keys = jax.random.split(jax.random.key(0))
    dynamics = settings.dynamics_config(config, ActionSpec("continuous", dim=7))
    WorldModel(Tokenizer(settings.tokenizer_config(config), key=keys[0]),
               Dynamics(dynamics, key=keys[1])).save(folder)
    with open(os.path.join(folder, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=1))
    return folder


def start_player(workdir: str, *args: str, timeout: float = 300.0):
    """`python -m launch.play --workdir=... --port=0 *args` from this checkout; returns (the
    process, the URL it printed). Raises with the player's output if it prints none."""
    process = subprocess.Popen(
        [sys.executable, "-m", "launch.play", f"--workdir={workdir}", "--port=0", *args],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout],
                     daemon=True).start()
    printed, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            if process.poll() is not None:
                break
            continue
        printed.append(line)
        if line.startswith("[play] open "):
            return process, line.split()[2]
    process.kill()
    raise RuntimeError("the player printed no URL:\n" + "".join(printed))


def measure(url: str, steps: int, seconds: float, key_interval: float, seed: int = 0) -> dict:
    """frames/s and keypress-to-frame latencies (ms) of one session at K = `steps`."""
    from websockets.sync.client import connect

    rng = random.Random(seed)
    with connect(url.replace("http://", "ws://").split("?")[0] + "ws", max_size=2**22) as ws:
        json.loads(ws.recv(timeout=60))  # hello
        ws.send(json.dumps({"type": "steps", "value": steps}))
        headers, pending, latencies, arrivals = [], {}, [], []
        seq, held = 0, False
        measuring_from, next_key = None, time.perf_counter() + 3600.0
        while True:
            now = time.perf_counter()
            if measuring_from is not None and now - measuring_from >= seconds:
                break
            if now >= next_key and measuring_from is not None:
                seq, held = seq + 1, not held
                pending[seq] = time.perf_counter()
                ws.send(json.dumps({"type": "input", "keys": ["KeyW"] if held else [],
                                    "seq": seq}))
                next_key = now + key_interval * rng.uniform(0.5, 1.5)
            try:
                data = ws.recv(timeout=max(next_key - time.perf_counter(), 0.001))
            except TimeoutError:
                continue
            if not isinstance(data, bytes):
                continue
            arrived = time.perf_counter()
            header, _ = read_frame_message(data)
            if header["steps"] != steps:
                continue
            if measuring_from is None:  # the first frame at this K: compiled; warm up 1 s
                measuring_from = next_key = arrived + 1.0
                continue
            if arrived < measuring_from:
                continue
            arrivals.append(arrived)
            headers.append(header)
            for s in [s for s in pending if s <= header["input_seq"]]:
                latencies.append(1000 * (arrived - pending.pop(s)))
    span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else float("nan")
    return {"steps": steps, "frames": len(arrivals), "fps": (len(arrivals) - 1) / span,
            "latency_p50_ms": float(np.percentile(latencies, 50)),
            "latency_p95_ms": float(np.percentile(latencies, 95)),
            "latency_max_ms": float(np.max(latencies)), "presses": len(latencies),
            "step_ms": float(np.median([h["step_ms"] for h in headers]))}


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as temporary:
        workdir = FLAGS.workdir
        trained = bool(workdir) and os.path.isfile(
            os.path.join(workdir, "models", "dynamics", "header.json"))
        if not trained:
            print(f"[bench] no trained model in {workdir!r}: random weights at "
                  "configs/calvin.py:small sizes", flush=True)
            workdir = random_small_model(os.path.join(temporary, "calvin-small-random"))
        rows = []
        for fps in FLAGS.rates:
            process, url = start_player(workdir, f"--fps={fps}")
            try:
                for steps in FLAGS.steps:
                    row = measure(url, int(steps), FLAGS.seconds, FLAGS.key_interval)
                    row |= {"server_fps": float(fps), "load": os.getloadavg()[0]}
                    rows.append(row)
                    print(f"[bench] {json.dumps(row)}", flush=True)
            finally:
                process.terminate()
                process.wait(30)
    print(f"\nplayer speed, {'trained' if trained else 'random-weight'} calvin:small model "
          f"(48x48), {os.cpu_count()} CPU cores, client over the WebSocket:")
    print("| server rate | K | frames/s | key->frame p50 ms | p95 ms | max ms | step ms | load |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        rate = "as fast as possible" if r["server_fps"] == 0 else f"{r['server_fps']:g}/s"
        print(f"| {rate} | {r['steps']} | {r['fps']:.1f} | {r['latency_p50_ms']:.0f} | "
              f"{r['latency_p95_ms']:.0f} | {r['latency_max_ms']:.0f} | {r['step_ms']:.1f} | "
              f"{r['load']:.1f} |")
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(rows, f, indent=1)


def define_flags() -> None:
    """The command line (defined only when run as a script, so importing this module for its
    functions defines no flags)."""
    flags.DEFINE_string("workdir", "runs/calvin-small", "a trained workdir (random weights of "
                        "the small sizes when it holds no model)")
    flags.DEFINE_list("steps", ["1", "2", "4"], "sampling steps K to measure")
    flags.DEFINE_list("rates", ["0", "10"], "server frame rates (--fps of the player; 0: as "
                      "fast as the model allows)")
    flags.DEFINE_float("seconds", 10.0, "measured seconds per K")
    flags.DEFINE_float("key_interval", 0.25, "mean seconds between key presses or releases")
    flags.DEFINE_string("json", None, "also write the rows to this JSON file")


if __name__ == "__main__":
    define_flags()
    app.run(main)
