"""Imagination RL with the world model: the stored features are those the policy acted on, only
the policy and value heads learn (only the policy with `train_value` off), and PMPO moves the
policy toward the action the reward head rewards, inside imagination."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from agent.distributions import Bins
from agent.heads import AgentHeads, HeadsConfig
from agent.imagination import RLSettings, imagine_with_policy, rl_loss
from agent.toy import fit
from dynamics.actions import ActionSpec
from dynamics.model import Dynamics, DynamicsConfig

SPEC = ActionSpec("discrete", classes=(5,))


def world_and_heads(seed=0):
    dyn = Dynamics(DynamicsConfig(latent_tokens=4, latent_dim=3, action=SPEC, width=32, depth=2,
                                  heads=2, time_every=2, registers=1, k_max=4, agent_tokens=2),
                   key=jax.random.key(seed))
    heads = AgentHeads(HeadsConfig(SPEC, agent_tokens=2, width=32, hidden=32, mtp=2,
                                   bins=Bins(-3.0, 3.0, 31)), key=jax.random.key(seed + 1))
    return dyn, heads


def context(batch=4, frames=3, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(np.tanh(rng.normal(size=(batch, frames, 4, 3))), jnp.float32)


def randomised(heads, key):
    """Heads whose policy output layer is random, so the policy depends on the features."""
    w = heads.policy.out.weight
    return eqx.tree_at(lambda h: h.policy.out.weight, heads,
                                 3.0 * jax.random.normal(key, w.shape))


def test_stored_features_are_what_the_policy_acted_on():
    dyn, heads = world_and_heads()
    heads = randomised(heads, jax.random.key(5))
    rollout = imagine_with_policy(dyn, heads, context(), 5, key=jax.random.key(2), steps=2,
                                  greedy=True)
    assert rollout.features.shape == (4, 6, 2, 32) and rollout.actions.shape == (4, 5)
    again = heads.act(rollout.features[:, :-1]).mode()
    np.testing.assert_array_equal(rollout.actions, again)
    assert len(np.unique(np.asarray(rollout.actions))) > 1  # the features do matter


def test_only_the_policy_and_value_heads_learn():
    dyn, heads = world_and_heads()
    heads = randomised(heads, jax.random.key(5))
    rollout = imagine_with_policy(dyn, heads, context(), 4, key=jax.random.key(2), steps=2)
    grads = jax.grad(lambda h: rl_loss(h, heads, rollout, RLSettings(train_value=True))[0])(heads)
    norm = lambda tree: float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(tree)))
    assert norm(grads.reward) == 0.0
    assert norm(grads.policy) > 0.0 and norm(grads.value) > 0.0
    # With train_value off (the default) the value head keeps finetuning's values (no gradient),
    # and the policy's gradient is the same: the values still make its advantages.
    frozen = RLSettings()
    still = jax.grad(lambda h: rl_loss(h, heads, rollout, frozen)[0])(heads)
    assert norm(still.value) == 0.0 and norm(still.reward) == 0.0
    for a, b in zip(jax.tree.leaves(still.policy), jax.tree.leaves(grads.policy), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


def test_pmpo_in_imagination_prefers_the_rewarded_action():
    dyn, heads = world_and_heads()
    bins, start = heads.config.bins, context(batch=16)
    # The reward head learns from random-policy rollouts that action 2 earns 1, the others 0.
    data = imagine_with_policy(dyn, heads, start, 6, key=jax.random.key(3), steps=2)
    now = data.features[:, :-1]
    target = bins.two_hot((data.actions == 2).astype(jnp.float32))

    def reward_fit(h, key):
        del key
        logits = h.reward_logits(now, data.actions)[..., 0, :]
        return jnp.mean(bins.cross_entropy(logits, target)), {}

    heads, _ = fit(reward_fit, heads, 200, lr=3e-3, key=jax.random.key(0))
    learned = bins.decode(heads.reward_logits(now, data.actions)[..., 0, :], how="mode")
    np.testing.assert_allclose(learned, (data.actions == 2).astype(np.float32), atol=0.2)
    for how in ("mode", "mean"):  # the imagined rewards are the reward head's, decoded so
        _, metrics = rl_loss(heads, heads, data, RLSettings(reward_decode=how))
        expected = bins.decode(heads.reward_logits(now, data.actions)[..., 0, :], how=how)
        np.testing.assert_allclose(metrics["imagined_reward"], jnp.mean(expected), rtol=1e-5)
    prior = heads
    prob = lambda h, rollout: float(jnp.mean(jnp.exp(h.act(rollout.features[:, :-1]).log_prob(
        jnp.full(rollout.actions.shape, 2, jnp.int32)))))
    before = prob(heads, data)
    # The value head starts at 0 here, so it must learn (a value of 0 everywhere makes every
    # advantage the non-negative return: the same sign for every action).
    learn_value = RLSettings(train_value=True)
    for i in range(20):  # one update per fresh rollout batch (on-policy)
        rollout = imagine_with_policy(dyn, heads, start, 6, key=jax.random.key(100 + i), steps=2)
        heads, history = fit(lambda h, key, r=rollout: rl_loss(h, prior, r, learn_value), heads,
                             1, lr=1e-2, key=jax.random.key(i))
    after = prob(heads, rollout)
    assert before < 0.3 and after > 0.5, (before, after, history[-1])
