"""Imagination RL beats a deliberately bad behaviour-cloned prior on the corridor (agent/toy.py),
where the optimal policy is known: always right, success 1.0; the demonstrator's own success rate
from cell 1 within 16 steps is about 1%."""

import jax
import numpy as np

from agent.toy import Corridor, behaviour_cloning, imagination_rl, success_rate


def test_pmpo_beats_the_bad_prior_in_the_real_corridor():
    env = Corridor()
    prior = behaviour_cloning(env, demos=256, steps=200, key=jax.random.key(0))
    # The clone is as bad as its demonstrator: it goes right about a quarter of the time.
    right = np.asarray(jax.nn.softmax(prior))[1:-1, 1]
    assert np.all((right > 0.05) & (right < 0.45)), right
    tables, history = imagination_rl(env, prior, 300, key=jax.random.key(2))
    bc = success_rate(env, prior, 4000, key=jax.random.key(1))
    rl = success_rate(env, tables.policy, 4000, key=jax.random.key(1))
    assert bc < 0.05 and rl > 0.9, (bc, rl)
    # The prior still holds: the KL is finite and the value has learned the returns.
    assert 0.0 < history[-1]["kl_to_prior"] < 5.0
    assert history[-1]["value_error"] < 0.1
    assert history[-1]["imagined_return"] > 0.9
