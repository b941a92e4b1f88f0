"""The optimizers of `launch.trainer`: Muon on the transformer blocks' matrices, AdamW elsewhere."""

import jax
import jax.numpy as jnp
import numpy as np

from configs import calvin
from dynamics import ActionSpec, Dynamics
from launch import settings
from launch.trainer import make_optimizer, muon_labels


def _model_and_train(optimizer: str):
    config = calvin.get_config("tiny")
    model = Dynamics(settings.dynamics_config(config, ActionSpec("continuous", dim=7)),
                     key=jax.random.key(0))
    train = config.train.dynamics
    train.update(dict(optimizer=optimizer, warmup_steps=0, weight_decay=0.0, grad_clip=1e9))
    return model, train


def _is_float_array(x) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jnp.floating)


def _first_update(model, train, grads):
    params = jax.tree.map(lambda x: x if isinstance(x, jax.Array) else None, model)
    optimizer = make_optimizer(train)
    with jax.numpy_dtype_promotion("standard"):
        updates, _ = optimizer.update(grads, optimizer.init(params), params)
    return updates


def test_muon_labels_pick_the_block_matrices():
    model, _ = _model_and_train("muon")
    labels = muon_labels(model)
    block = model.transformer.blocks[0]
    assert muon_labels(block.mlp.gate_up.weight) == "adamw"  # a bare matrix is not in a block
    assert labels.transformer.blocks[0].mlp.gate_up.weight == "muon"
    assert labels.transformer.blocks[1].attn.out_proj.weight == "muon"
    assert labels.tau_embed.table == "adamw" and labels.readout.weight == "adamw"
    assert labels.spatial_in.weight == "adamw" and labels.registers == "adamw"
    leaves = jax.tree.leaves(labels)
    assert 0 < leaves.count("muon") < len(leaves)


def test_muon_update_is_the_orthogonalised_gradient():
    """First Muon step on a block matrix: the direction of U V^T from the gradient's SVD (the
    polar factor, float64 numpy), singular values near equal; other parameters get exactly the
    AdamW update."""
    model, train = _model_and_train("muon")
    leaves, treedef = jax.tree.flatten(model)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    grads = jax.tree.unflatten(treedef, [
        jax.random.normal(k, x.shape) if _is_float_array(x) else x
        for k, x in zip(keys, leaves, strict=True)])
    muon = _first_update(model, train, grads)
    adamw = _first_update(model, _model_and_train("adamw")[1], grads)

    g = np.asarray(grads.transformer.blocks[0].mlp.gate_up.weight, np.float64)
    u, _, vt = np.linalg.svd(g, full_matrices=False)
    polar = u @ vt
    update = -np.asarray(muon.transformer.blocks[0].mlp.gate_up.weight, np.float64)
    cosine = lambda a: np.sum(a * polar) / np.linalg.norm(a) / np.linalg.norm(polar)
    assert cosine(update) > 0.95
    s = np.linalg.svd(update, compute_uv=False)
    assert s.min() > 0.5 * s.max()
    adam_update = -np.asarray(adamw.transformer.blocks[0].mlp.gate_up.weight, np.float64)
    assert cosine(adam_update) < 0.9  # AdamW's sign-like update is not the polar factor
    np.testing.assert_allclose(muon.readout.weight, adamw.readout.weight, rtol=1e-6)
    np.testing.assert_allclose(muon.tau_embed.table, adamw.tau_embed.table, rtol=1e-6)


def test_muon_trains_the_dynamics_model(tmp_path):
    """A few Muon steps on one fixed batch lower the dynamics loss (same key each step), and the
    Muon state survives a checkpoint round trip."""
    from core.training import init_state
    from dynamics.train import make_train_step
    from launch.checkpoints import Checkpoints
    from launch.distributed import make_mesh, state_shardings
    from launch.stages import dynamics_loss_fn

    config = calvin.get_config("tiny")
    config.train.dynamics.update(dict(optimizer="muon", warmup_steps=0, muon_lr=0.02))
    model = Dynamics(settings.dynamics_config(config, ActionSpec("continuous", dim=7)),
                     key=jax.random.key(0))
    optimizer = make_optimizer(config.train.dynamics)
    step = make_train_step(optimizer, dynamics_loss_fn(config))
    rng = np.random.default_rng(0)
    batch = {"latents": np.tanh(rng.normal(size=(4, 6, 4, 8))).astype(np.float32),
             "actions": rng.normal(size=(4, 6, 7)).astype(np.float32),
             "has_action": np.ones((4, 6), bool)}
    state = init_state(model, optimizer)
    losses = []
    for _ in range(8):
        state, metrics = step(state, batch, jax.random.key(1), bootstrap_rows=0)
        losses.append(float(metrics["loss"]))
    assert np.isfinite(losses).all() and losses[-1] < 0.8 * losses[0]
    Checkpoints(str(tmp_path)).save(8, state, {"position": 8})
    template = init_state(model, optimizer)
    restored, _ = Checkpoints(str(tmp_path)).restore(template,
                                                     state_shardings(make_mesh(), template))
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)
