"""Agent finetuning's loss: the look-ahead targets by hand, the data's value targets by hand and
against the n-step definition in float64, the RMS normalisation's first step, the closed-form
losses of freshly built heads, the video term unchanged, and a train step that clones a behaviour
while the video loss keeps running."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from agent.distributions import Bins
from agent.finetune import (
    TERMS,
    Agent,
    ahead,
    data_value_targets,
    finetune_loss,
    returns_to_go,
)
from agent.heads import AgentHeads, HeadsConfig
from core.training import init_state, make_train_step
from dynamics.actions import ActionSpec, align_actions
from dynamics.model import Dynamics, DynamicsConfig
from dynamics.objectives import dynamics_loss

SPEC = ActionSpec("discrete", classes=(5,))


def make_agent(mtp=3, seed=0):
    dyn = Dynamics(DynamicsConfig(latent_tokens=4, latent_dim=3, action=SPEC, width=32, depth=2,
                                  heads=2, time_every=2, registers=1, k_max=4, agent_tokens=2),
                   key=jax.random.key(seed))
    heads = AgentHeads(HeadsConfig(SPEC, agent_tokens=2, width=32, hidden=32, mtp=mtp,
                                   bins=Bins(-5.0, 5.0, 21)), key=jax.random.key(seed + 1))
    return Agent(dyn, heads)


def make_batch(b=4, t=6, seed=0):
    rng = np.random.default_rng(seed)
    return {"latents": jnp.asarray(np.tanh(rng.normal(size=(b, t, 4, 3))), jnp.float32),
            "actions": jnp.asarray(rng.integers(0, 5, size=(b, t)), jnp.int32),
            "has_action": jnp.asarray(rng.uniform(size=(b, t)) > 0.2),
            "rewards": jnp.asarray(rng.normal(size=(b, t)), jnp.float32),
            "has_reward": jnp.ones((b, t), bool)}


def zeros():
    return {name: jnp.zeros((), jnp.float32) for name in TERMS}


def test_ahead_by_hand():
    x = jnp.array([[10, 11, 12, 13]])
    known = jnp.array([[True, False, True, True]])
    got, ok = ahead(x, known, 3)
    np.testing.assert_array_equal(got[0], [[10, 11, 12], [11, 12, 13], [12, 13, 0], [13, 0, 0]])
    np.testing.assert_array_equal(ok[0], [[1, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0]])


def test_data_value_targets_by_hand():
    rewards, values = jnp.array([[1.0, 2.0, 10.0]] * 2), jnp.array([[4.0, 8.0, 99.0]] * 2)
    continues = jnp.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    targets, has = data_value_targets(rewards, continues, values, gamma=0.5, lam=0.5)
    # Ended on frame 2: its value is its reward, 10; G_1 = 2 + 0.5 (0.5 * 10 + 0.5 * 10) = 7,
    # G_0 = 1 + 0.5 (0.5 * 8 + 0.5 * 7) = 4.75. Cut off: frame 2 bootstraps with v = 99 and
    # has no target; G_1 = 2 + 0.5 * 99 = 51.5, G_0 = 1 + 0.5 (0.5 * 8 + 0.5 * 51.5) = 15.875.
    np.testing.assert_allclose(targets, [[4.75, 7.0, 10.0], [15.875, 51.5, 99.0]])
    np.testing.assert_array_equal(has, [[True, True, True], [True, True, False]])


def n_step_lambda_returns(rewards, values, gamma, lam):
    """float64 lambda-returns from their definition, a (1 - lam) lam^(n-1) weighted sum of n-step
    returns (the longest one taking the remaining weight), values[-1] bootstrapping the end."""
    time = len(rewards)
    out = np.zeros(time - 1)
    for t in range(time - 1):
        horizon = time - 1 - t
        n_step = [sum(gamma ** k * rewards[t + k] for k in range(n)) + gamma ** n * values[t + n]
                  for n in range(1, horizon + 1)]
        weights = [(1 - lam) * lam ** (n - 1) for n in range(1, horizon)] + [lam ** (horizon - 1)]
        out[t] = np.dot(weights, n_step)
    return out


def test_data_value_targets_match_the_n_step_definition():
    rng = np.random.default_rng(4)
    rewards, values = rng.normal(size=(2, 7)), rng.normal(size=(2, 7))
    continues = np.ones((2, 7))
    continues[0, -1] = 0.0
    targets, has = data_value_targets(jnp.asarray(rewards, jnp.float32),
                                      jnp.asarray(continues, jnp.float32),
                                      jnp.asarray(values, jnp.float32), gamma=0.9, lam=0.7)
    for row in range(2):
        boot = values[row].copy()
        boot[-1] = rewards[row, -1] if row == 0 else values[row, -1]
        np.testing.assert_allclose(targets[row, :-1],
                                   n_step_lambda_returns(rewards[row], boot, 0.9, 0.7), rtol=1e-5)
        np.testing.assert_allclose(targets[row, -1], boot[-1], rtol=1e-6)
    np.testing.assert_array_equal(has[:, -1], [True, False])


def test_returns_to_go_gather_each_episode_from_its_clips():
    gamma, length = 0.9, 4
    # "a": 6 frames ending on its last (clips at 0 and 2, overlapping); "b": 6 frames cut off;
    # "c": 10 frames ending on its last, but clips at 0 and 6 leave frames 4 and 5 unseen.
    episodes = {"a": (6, [0, 2], True), "b": (6, [0, 2], False), "c": (10, [0, 6], True)}
    reward_of = lambda name, t: 1.0 + t + 10.0 * "abc".index(name)
    clips, rewards, continues = [], [], []
    for name, (frames, starts, ended) in episodes.items():
        for start in starts:
            t = np.arange(start, start + length)
            clips.append((name, start))
            rewards.append(reward_of(name, t))
            continues.append(np.where(ended & (t == frames - 1), 0.0, 1.0))
    got = returns_to_go(np.array(rewards), np.array(continues), clips, gamma=gamma)
    for row, (name, start) in enumerate(clips):
        frames, _, ended = episodes[name]
        for k, t in enumerate(range(start, start + length)):
            if ended and not (name == "c" and t < 6):
                expected = sum(gamma ** (u - t) * reward_of(name, u) for u in range(t, frames))
                np.testing.assert_allclose(got[row, k], expected, rtol=1e-6)
            else:  # cut off, or before the unseen frames: not known
                assert np.isnan(got[row, k]), (name, t)


def test_fresh_heads_give_closed_form_losses_and_the_first_step_normalises_to_one():
    agent, batch = make_agent(), make_batch()
    key = jax.random.key(3)
    total, (metrics, rms_sq) = finetune_loss(agent, zeros(), jnp.asarray(0), batch, key=key)
    # Zero output layers: a uniform policy over 5 classes and uniform reward bins.
    np.testing.assert_allclose(metrics["bc_loss"], math.log(5), rtol=1e-5)
    np.testing.assert_allclose(metrics["reward_loss"], math.log(21), rtol=1e-5)
    # The video term is the dynamics loss of the same pass.
    aligned, known = align_actions(batch["actions"], batch["has_action"])
    video, _ = dynamics_loss(agent.dynamics, batch["latents"], aligned, known, key=key,
                             image_fraction=0.0)
    np.testing.assert_allclose(metrics["dynamics_loss"], video, rtol=1e-6)
    # Step 0: each EMA holds its own term, so every term divides to 1.
    np.testing.assert_allclose(total, 3.0, rtol=1e-5)
    np.testing.assert_allclose(rms_sq["bc"], 0.01 * math.log(5) ** 2, rtol=1e-5)
    # As the loader gives them (rewards without has_reward): every reward counts.
    loader_batch = {k: v for k, v in batch.items() if k != "has_reward"}
    _, (same, _) = finetune_loss(agent, zeros(), jnp.asarray(0), loader_batch, key=key)
    np.testing.assert_allclose(same["reward_loss"], metrics["reward_loss"], rtol=1e-6)
    # The value term: off unless asked for; then uniform value bins, and a fourth unit term.
    assert metrics["value_loss"] == 0.0
    total, (metrics, _) = finetune_loss(agent, zeros(), jnp.asarray(0), batch, key=key,
                                        value_from_data=True)
    np.testing.assert_allclose(metrics["value_loss"], math.log(21), rtol=1e-5)
    np.testing.assert_allclose(total, 4.0, rtol=1e-5)


def test_the_video_term_keeps_the_main_runs_objective():
    """With the main run's `twin_signal` and `noise_fraction` the video term is the dynamics loss
    of that objective (a one-step regressor stays one), not the plain shortcut loss."""
    agent, batch = make_agent(), make_batch()
    key = jax.random.key(3)
    settings = dict(twin_signal=1.0, noise_fraction=0.99)
    _, (metrics, _) = finetune_loss(agent, zeros(), jnp.asarray(0), batch, key=key, **settings)
    aligned, known = align_actions(batch["actions"], batch["has_action"])
    video, _ = dynamics_loss(agent.dynamics, batch["latents"], aligned, known, key=key,
                             image_fraction=0.0, **settings)
    plain, _ = dynamics_loss(agent.dynamics, batch["latents"], aligned, known, key=key,
                             image_fraction=0.0)
    np.testing.assert_allclose(metrics["dynamics_loss"], video, rtol=1e-6)
    assert abs(float(video) - float(plain)) > 1e-4 * abs(float(plain))


def test_behind_clean_twins_the_policy_reads_each_frame_as_committed_context():
    """With the regressor's twins (signal 1.0, targets from pure noise) the cloning loss is the
    policy's NLL from a direct model call on the clean frames (tau 1, d = 1 / k_max): the features
    `prefill` gives a policy acting on real frames, not those of a frame not yet seen."""
    agent, batch = make_agent(mtp=1), make_batch()
    _, (metrics, _) = finetune_loss(agent, zeros(), jnp.asarray(0), batch, key=jax.random.key(6),
                                    twin_signal=1.0, noise_fraction=0.99)
    aligned, known = align_actions(batch["actions"], batch["has_action"])
    z = agent.dynamics.normalise(batch["latents"])
    _, features = agent.dynamics(z, jnp.ones((4, 6)), jnp.full((4, 6), 0.25), aligned, known)
    logits = agent.heads.policy_logits(features["agent"])[:, :, 0]
    picked = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)),
                                np.asarray(batch["actions"])[..., None], axis=-1)[..., 0]
    known = np.asarray(batch["has_action"])
    expected = -np.sum(np.where(known, picked, 0.0)) / np.sum(known)
    np.testing.assert_allclose(metrics["bc_loss"], expected, rtol=1e-5)


def test_context_rows_give_the_agent_terms_the_frames_a_policy_acts_on():
    """With context_rows k the agent terms read only the last k rows, whose frames all sit at
    the context signal level: the cloning loss is the policy's NLL from a direct model call on
    those rows at tau 0.9, d = 1 / k_max (the noise drawn as `dynamics_loss` draws it)."""
    agent, batch = make_agent(mtp=1), make_batch()
    key = jax.random.key(5)
    _, (metrics, _) = finetune_loss(agent, zeros(), jnp.asarray(0), batch, key=key, context_rows=2)
    aligned, known = align_actions(batch["actions"], batch["has_action"])
    noise = jax.random.normal(jax.random.split(key, 5)[1], batch["latents"].shape)[2:]
    z = agent.dynamics.normalise(batch["latents"][2:])
    level = jnp.full((2, 6), 0.9)
    _, features = agent.dynamics(0.1 * noise + 0.9 * z, level, jnp.full((2, 6), 0.25),
                                 aligned[2:], known[2:])
    logits = agent.heads.policy_logits(features["agent"])[:, :, 0]
    picked = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)),
                                np.asarray(batch["actions"][2:])[..., None], axis=-1)[..., 0]
    known = np.asarray(batch["has_action"][2:])
    expected = -np.sum(np.where(known, picked, 0.0)) / np.sum(known)
    np.testing.assert_allclose(metrics["bc_loss"], expected, rtol=1e-5)
    # The first rows feed the video loss only.
    changed = dict(batch, actions=batch["actions"].at[:2].set(0),
                   rewards=batch["rewards"].at[:2].set(7.0))
    _, (again, _) = finetune_loss(agent, zeros(), jnp.asarray(0), changed, key=key,
                                  context_rows=2)
    for term in ("bc_loss", "reward_loss"):
        np.testing.assert_allclose(again[term], metrics[term], rtol=1e-6)
    assert again["dynamics_loss"] != metrics["dynamics_loss"]


def test_finetuning_clones_the_behaviour_and_keeps_the_video_loss_running():
    # The demonstrator's action is a function of the frame: the sign pattern of one latent.
    agent = make_agent(mtp=1)
    rng = np.random.default_rng(1)
    latents = jnp.asarray(np.tanh(2.0 * rng.normal(size=(8, 6, 4, 3))), jnp.float32)
    actions = (latents[..., 0, 0] > 0).astype(jnp.int32) + 2 * (latents[..., 1, 0] > 0).astype(
        jnp.int32)
    batch = {"latents": latents, "actions": actions, "has_action": jnp.ones((8, 6), bool)}
    step = make_train_step(finetune_loss, optax.adam(3e-3))
    state = init_state(agent, optax.adam(3e-3), loss_state=zeros())
    first = None
    for i in range(150):
        state, metrics = step(state, batch, jax.random.key(i))
        first = first or {k: float(v) for k, v in metrics.items()}
    assert float(metrics["bc_loss"]) < 0.5 * first["bc_loss"], (first, metrics)
    assert float(metrics["dynamics_loss"]) < first["dynamics_loss"]
    assert float(metrics["skipped"]) == 0


def fitted_values(batch, steps=200):
    """The value head's values on the batch after `steps` finetuning steps (gamma 0.8, lambda
    0.5), averaged over its rows."""
    loss = functools.partial(finetune_loss, value_from_data=True, gamma=0.8, lam=0.5)
    step = make_train_step(loss, optax.adam(3e-3))
    state = init_state(make_agent(mtp=1), optax.adam(3e-3), loss_state=zeros())
    for i in range(steps):
        state, _ = step(state, batch, jax.random.key(i))
    _, _, features = dynamics_loss(
        state.model.dynamics, batch["latents"],
        *align_actions(batch["actions"], batch["has_action"]), key=jax.random.key(0),
        image_fraction=0.0, with_features=True)
    heads = state.model.heads
    return np.mean(heads.config.bins.decode(heads.value_logits(features["agent"])), axis=0)


def one_episode_batch(**arrays):
    """8 copies of one 6-frame clip with action 0 throughout, plus `arrays`."""
    rng = np.random.default_rng(2)
    latents = jnp.asarray(np.tanh(rng.normal(size=(1, 6, 4, 3))), jnp.float32).repeat(8, 0)
    return {"latents": latents, "actions": jnp.zeros((8, 6), jnp.int32),
            "has_action": jnp.ones((8, 6), bool)} | arrays


def test_the_value_head_learns_the_datas_discounted_return():
    # Every window is a whole episode that ends on its last frame with reward 1, so the value of
    # frame t is gamma^(5 - t) exactly; lambda = 0.5 bootstraps from the head's own values, and
    # the fixed point of those targets is still that return.
    batch = one_episode_batch(rewards=jnp.zeros((8, 6)).at[:, -1].set(1.0),
                              continues=jnp.ones((8, 6)).at[:, -1].set(0.0))
    np.testing.assert_allclose(fitted_values(batch), 0.8 ** np.arange(5, -1, -1), atol=0.05)


def test_the_value_head_learns_given_returns_where_windows_cannot_tell():
    # The windows neither end their episodes nor hold a reward, so bootstrapped window returns
    # alone would leave the value at 0; the episodes' returns-to-go (`returns`) are gamma^(5 - t).
    target = 0.8 ** np.arange(5, -1, -1)
    batch = one_episode_batch(rewards=jnp.zeros((8, 6)), continues=jnp.ones((8, 6)),
                              returns=jnp.asarray(np.tile(target, (8, 1)), jnp.float32))
    np.testing.assert_allclose(fitted_values(batch), target, atol=0.05)
