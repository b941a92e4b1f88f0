"""The main job: end to end on a tiny config, resume after a kill, sharding, config errors."""

import json
import os
import struct
import subprocess
import sys
import textwrap

import equinox as eqx
import imageio.v3 as iio
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from tensorboardX.proto.event_pb2 import Event

from configs import calvin
from core import Linear
from core.training import init_state, make_train_step
from data.clips import ClipStore, save_shard
from dynamics import ActionSpec
from launch import settings
from launch.distributed import make_mesh
from launch.run import run
from launch.stages import check_action_classes
from launch.trainer import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUMMARY_KEYS = {
    "tokenizer.psnr", "tokenizer.ssim", "tokenizer.sharpness_ratio", "rollout.psnr", "rollout.ssim",
    "rollout.psnr_copy_last",
    "rollout.ssim_copy_last", "rollout.psnr_shuffled_actions", "rollout.context_frames",
    "rollout.horizon", "rollout.sampling_steps", "speed.frames_per_second_cached",
    "speed.frames_per_second_uncached",
}


def tensorboard_images(folder) -> dict[str, bytes]:
    """{tag: encoded image} of every image summary in the event files of `folder` (TFRecord
    framing: 8-byte length, 4-byte CRC, the Event proto, 4-byte CRC)."""
    images = {}
    for name in os.listdir(folder):
        data, pos = (folder / name).read_bytes(), 0
        while pos < len(data):
            (size,) = struct.unpack("<Q", data[pos:pos + 8])
            event = Event.FromString(data[pos + 12:pos + 12 + size])
            pos += 12 + size + 4
            for value in event.summary.value:
                if value.HasField("image"):
                    images[value.tag] = value.image.encoded_image_string
    return images


def test_every_stage_end_to_end(tmp_path):
    """The tiny CALVIN config runs data (simulator) -> tokenizer -> latents -> dynamics -> eval
    and writes the documented outputs; a second run finds everything done and redoes nothing."""
    config = calvin.get_config("tiny")
    run(config, str(tmp_path))
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert set(summary) >= SUMMARY_KEYS
    assert len(summary["rollout.psnr"]) == config.eval.horizon
    assert all(np.isfinite(summary["rollout.psnr"]))
    for name in ("psnr_over_horizon.png", "rollout_0.mp4", "rollout_0.gif"):
        assert (tmp_path / "eval" / name).stat().st_size > 0
    assert any((tmp_path / "logs" / "dynamics").iterdir())  # TensorBoard events
    # The rollout video in TensorBoard: an animated GIF whose left panel is the true clip (GIF
    # writers merge repeated frames, so only the first and last frames are compared).
    video = iio.imread(tensorboard_images(tmp_path / "logs" / "eval")["eval/rollout_0"],
                       extension=".gif", index=None)[..., :3]
    length = config.eval.context_frames + config.eval.horizon
    truth = ClipStore(str(tmp_path / "clips")).first("eval", 1, length)["frames"][0][[0, -1]]
    side = truth.shape[1]
    assert 2 <= len(video) <= length and video.shape[1] == 4 * side
    assert np.abs(video[[0, -1], ::4, :4 * side:4].astype(int) - truth).mean() < 6
    stats = json.loads((tmp_path / "latents" / "index.json").read_text())["latent_stats"]
    train = tmp_path / "latents" / "train"
    values = np.concatenate([np.load(shard / "latents.npy").ravel() for shard in train.iterdir()])
    np.testing.assert_allclose([stats["mean"], stats["std"]], [values.mean(), values.std()],
                               rtol=1e-4)
    known = [(np.load(s / "actions.npy"), np.load(s / "has_action.npy")) for s in train.iterdir()]
    actions = np.concatenate([a[h] for a, h in known]).astype(np.float64)
    np.testing.assert_allclose(stats["action_mean"], actions.mean(0), rtol=1e-4, atol=1e-6)
    std = actions.std(0)
    np.testing.assert_allclose(stats["action_std"], np.where(std > 1e-6, std, 1.0), rtol=1e-4)
    saved = json.loads((tmp_path / "models" / "dynamics" / "header.json").read_text())["config"]
    assert saved["action_std"] == []  # config.data.normalise_actions is off by default
    config.data.normalise_actions = True
    assert settings.dynamics_config(config, ActionSpec("continuous", dim=7),
                                    stats).action_std == tuple(stats["action_std"])
    config.data.normalise_actions = False
    before = os.path.getmtime(tmp_path / "latents" / "index.json")
    config.stages = "data,tokenizer,latents,dynamics"
    run(config, str(tmp_path))
    timings = json.loads((tmp_path / "timings.json").read_text())
    assert timings["tokenizer"] < 20 and timings["dynamics"] < 20  # restored, not retrained
    assert os.path.getmtime(tmp_path / "latents" / "index.json") >= before


def test_own_episodes_folder_with_discrete_actions(tmp_path):
    """A user's folder of .npz episodes (frames + int32 actions) goes through every stage."""
    rng = np.random.default_rng(0)
    source = tmp_path / "episodes"
    source.mkdir()
    for e in range(6):
        actions = rng.integers(0, 4, size=24).astype(np.int32)
        frames = np.zeros((24, 16, 16, 3), np.uint8)
        pos = np.array([8, 8])
        for t in range(24):
            frames[t, pos[0] - 2:pos[0] + 2, pos[1] - 2:pos[1] + 2] = 255
            pos = np.clip(pos + [(1, 0), (-1, 0), (0, 1), (0, -1)][actions[t]], 2, 13)
        np.savez(source / f"ep{e}.npz", frames=frames, actions=actions)
    config = calvin.get_config("tiny")
    config.data.update(dict(format="episodes", path=str(source), eval_fraction=0.34,
                            action_classes=(4,)))
    run(config, str(tmp_path / "run"))
    summary = json.loads((tmp_path / "run" / "eval" / "summary.json").read_text())
    assert set(summary) >= SUMMARY_KEYS and all(np.isfinite(summary["rollout.psnr"]))
    # The square stops at the borders, so true frames can repeat the last context frame.
    context, horizon = config.eval.context_frames, config.eval.horizon
    clips = ClipStore(str(tmp_path / "run" / "clips")).first("eval", config.eval.rollouts,
                                                      context + horizon)
    assert summary["rollout.copy_last_exact"] == [
        sum(np.array_equal(clip[context + h], clip[context - 1]) for clip in clips["frames"])
        for h in range(horizon)]
    config.stages = "dynamics"
    for classes, message in (((4, 4), "with 1 part"), ((3,), r"to \[3\] .* classes \(3,\)")):
        config.data.action_classes = classes  # the data's actions are 0 .. 3
        with pytest.raises(settings.ConfigError, match=r"config\.data\.action_classes.*" + message):
            run(config, str(tmp_path / "run"))


def test_bad_episode_file_stops_the_command_with_a_one_line_error(tmp_path):
    (tmp_path / "episodes").mkdir()
    (tmp_path / "episodes" / "ep0.npz").write_bytes(b"garbage")
    out = subprocess.run(
        [sys.executable, os.path.join(REPO, "launch", "run.py"), "--config=configs/calvin.py:tiny",
         "--config.data.format=episodes", f"--config.data.path={tmp_path / 'episodes'}",
         f"--workdir={tmp_path / 'run'}"], cwd=REPO, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=REPO))  # this checkout's packages, not an installed one
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "data error:" in out.stderr and "ep0.npz: not a readable .npz" in out.stderr
    assert "--config.data.skip_bad=True" in out.stderr


def test_action_range_check_per_part(tmp_path):
    """Multi-part actions are checked part by part; rows without a known action are not."""
    actions = np.array([[[0, 5], [1, 2], [7, -1]]], np.int32)  # 1 clip x 3 frames x 2 parts
    has_action = np.array([[True, True, False]])
    save_shard(str(tmp_path / "eval" / "s0"), {"latents": np.zeros((1, 3, 1, 1), np.float32),
                                              "actions": actions, "has_action": has_action}, {})
    latents = ClipStore(str(tmp_path), {"shards": {"train": [["empty", 0]], "eval": [["s0", 1]]}})
    check_action_classes(latents, ActionSpec("multipart", classes=(2, 6)))
    check_action_classes(latents, ActionSpec("continuous", dim=2))
    with pytest.raises(settings.ConfigError, match=r"eval/s0 .* from \[0, 2\] to \[1, 5\] "
                                                   r"\(per part\), outside the classes \(2, 5\)"):
        check_action_classes(latents, ActionSpec("multipart", classes=(2, 5)))
    has_action[0, 2] = True  # now the row with 7 and -1 counts
    save_shard(str(tmp_path / "eval" / "s1"), {"latents": np.zeros((1, 3, 1, 1), np.float32),
                                              "actions": actions, "has_action": has_action}, {})
    with pytest.raises(settings.ConfigError, match=r"from \[0, -1\] to \[7, 5\].*map negative"):
        check_action_classes(ClipStore(str(tmp_path), {"shards": {"eval": [["s1", 1]]}}),
                             ActionSpec("multipart", classes=(8, 6)))


class CountingLoader:
    """A deterministic batch stream with the loader's get_state/set_state contract."""

    def __init__(self):
        self.position, self.seen = 0, []

    def __next__(self):
        rng = np.random.default_rng(self.position)
        self.position += 1
        self.seen.append(self.position - 1)
        return {"x": rng.normal(size=(4, 3)).astype(np.float32)}

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = state["position"]


def _regression(nan_after: int | None = None):
    def loss_fn(model, loss_state, step, batch, *, key):
        y = model(batch["x"])
        loss = jnp.mean(jnp.square(y - 1.0)) + 0.01 * jax.random.normal(key, ())
        if nan_after is not None:
            loss = jnp.where(step >= nan_after, jnp.nan, loss)
        return loss, ({"loss": loss}, loss_state)

    optimizer = optax.adam(1e-2)
    state = init_state(Linear(3, 2, key=jax.random.key(0)), optimizer)
    return state, make_train_step(loss_fn, optimizer)


def _train_config(steps, **kw):
    return ml_collections.ConfigDict(dict(steps=steps, log_every=1, checkpoint_every=3,
                                          max_skipped_in_a_row=3) | kw)


def test_kill_and_rerun_resumes_with_the_same_next_batch(tmp_path):
    mesh = make_mesh()
    state, step = _regression()
    reference_loader = CountingLoader()
    reference = train("stage", str(tmp_path / "a"), state, step, reference_loader,
                      _train_config(8), mesh, key=jax.random.key(1))

    killed = {"calls": 0}

    def dies_after_four(state, batch, key):
        killed["calls"] += 1
        if killed["calls"] == 5:
            raise KeyboardInterrupt  # killed after step 4; the checkpoint of step 3 is complete
        return step(state, batch, key)

    state, _ = _regression()
    with pytest.raises(KeyboardInterrupt):
        train("stage", str(tmp_path / "b"), state, dies_after_four, CountingLoader(),
              _train_config(8), mesh, key=jax.random.key(1))
    state, _ = _regression()
    resumed_loader = CountingLoader()
    resumed = train("stage", str(tmp_path / "b"), state, step, resumed_loader, _train_config(8),
                    mesh, key=jax.random.key(1))
    assert resumed_loader.seen == [3, 4, 5, 6, 7]  # continues with batch 3, after step 3
    assert int(resumed.step) == 8
    for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)


def test_persistent_non_finite_loss_stops_with_checkpoint_intact(tmp_path, capsys):
    state, step = _regression(nan_after=4)
    with pytest.raises(FloatingPointError, match="non-finite"):
        train("stage", str(tmp_path), state, step, CountingLoader(), _train_config(20), make_mesh(),
              key=jax.random.key(0))
    assert "skipped 1" in capsys.readouterr().out  # skipped steps are counted as they happen
    state, _ = _regression()
    from launch.checkpoints import Checkpoints

    restored, _ = Checkpoints(str(tmp_path / "stage")).restore(state, jax.tree.map(
        lambda x: x.sharding, state))
    assert int(restored.skipped) == 0 and int(restored.step) == 3  # the last good checkpoint
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(eqx.filter(restored, eqx.is_array)))


SHARDED = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from configs import calvin
    from dynamics import ActionSpec
    from launch import settings
    from launch.checkpoints import Checkpoints
    from launch.distributed import make_mesh, process_batch, shard_state, state_shardings
    from launch.stages import dynamics_loss_fn
    from launch.trainer import make_optimizer
    from core.training import init_state
    from dynamics import Dynamics
    from dynamics.train import make_train_step
    config = calvin.get_config("tiny")
    config.dynamics.width = 64  # an fsdp-divisible width
    spec = ActionSpec("continuous", dim=7)
    model = Dynamics(settings.dynamics_config(config, spec), key=jax.random.key(0))
    optimizer = make_optimizer(config.train.dynamics)
    step = make_train_step(optimizer, dynamics_loss_fn(config))
    rng = np.random.default_rng(0)
    batch = {"latents": np.tanh(rng.normal(size=(8, 6, 4, 8))).astype(np.float32),
             "actions": rng.normal(size=(8, 6, 7)).astype(np.float32),
             "has_action": np.ones((8, 6), bool)}
    mesh = make_mesh(data=int(sys.argv[1]), fsdp=int(sys.argv[2]))
    state = shard_state(mesh, init_state(model, optimizer))
    state, metrics = step(state, process_batch(mesh, batch), jax.random.key(1), bootstrap_rows=2)
    kernel = state.model.transformer.blocks[0].mlp.gate_up.weight
    Checkpoints(sys.argv[3]).save(1, state, {"position": 1})
    print(json.dumps({"loss": float(metrics["loss"]), "devices": len(jax.devices()),
                      "spec": str(kernel.sharding.spec),
                      "shard": list(kernel.addressable_shards[0].data.shape),
                      "shape": list(kernel.shape)}))
""")


def _sharded_run(data, fsdp, devices, ckpt):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SHARDED, str(data), str(fsdp), ckpt], env=env,
                         cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_sharded_step_matches_one_device_and_restores_anywhere(tmp_path):
    """On 8 simulated CPU devices (data 4 x fsdp 2) the train step gives the loss of 1 device,
    fsdp really splits parameters, and the 8-device checkpoint restores on this 1 device."""
    eight = _sharded_run(4, 2, 8, str(tmp_path / "eight"))
    one = _sharded_run(1, 1, 1, str(tmp_path / "one"))
    assert eight["devices"] == 8 and one["devices"] == 1
    np.testing.assert_allclose(eight["loss"], one["loss"], rtol=1e-5)
    assert "fsdp" in eight["spec"]
    assert np.prod(eight["shard"]) * 2 == np.prod(eight["shape"])
    from launch.checkpoints import Checkpoints
    from launch.distributed import state_shardings

    config = calvin.get_config("tiny")
    config.dynamics.width = 64
    from core.training import init_state as fresh
    from dynamics import ActionSpec, Dynamics
    from launch.trainer import make_optimizer

    model = Dynamics(settings.dynamics_config(config, ActionSpec("continuous", dim=7)),
                     key=jax.random.key(0))
    template = fresh(model, make_optimizer(config.train.dynamics))
    mesh = make_mesh()
    from_eight, loader = Checkpoints(str(tmp_path / "eight")).restore(
        template, state_shardings(mesh, template))
    from_one, _ = Checkpoints(str(tmp_path / "one")).restore(template,
                                                             state_shardings(mesh, template))
    assert loader == {"position": 1} and int(from_eight.step) == 1
    for a, b in zip(jax.tree.leaves(from_eight), jax.tree.leaves(from_one), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("field,value,message", [
    ("stages", "data,train", "config.stages"),
    ("data.format", "hdf5", "config.data.format"),
    ("tokenizer.patch", 5, "config.tokenizer"),
    ("dynamics.k_max", 6, "config.dynamics"),
    ("eval.horizon", 40, "config.eval"),
    ("train.dynamics.batch", 3, "config.train.dynamics.batch"),
    ("data.sim_frame_skip", 0, "config.data.sim_frame_skip"),
    ("train.tokenizer.optimizer", "sgd", "config.train.tokenizer.optimizer"),
    ("tokenizer.backend", "triton", "config.tokenizer"),
    ("dynamics.backend", "triton", "config.dynamics"),
])
def test_invalid_config_fails_naming_the_field(field, value, message):
    config = calvin.get_config("tiny")
    section, _, name = field.rpartition(".")
    (config if not section else eval(f"config.{section}"))[name] = value
    with pytest.raises(settings.ConfigError, match=message.replace(".", r"\.")):
        settings.validate(config, device_count=2)


def test_variant_choice():
    assert calvin.get_config().variant == "small"  # no accelerator here
    assert "no accelerator" in calvin.get_config().variant_reason
    with pytest.raises(ValueError, match="unknown config variant"):
        calvin.get_config("huge")
