"""The config tree shared by every dataset config, and the variant choice.

Fields (every size lives here, none in code):
- data: source `format` / `path` (empty path: the dataset's embedded default, generated under the
  workdir), frame `image_size`, clip `clip_length` / `clip_stride`, held-out `eval_fraction`,
  `workers`, `skip_bad`, the action layout (`action_kind`, `action_classes` for discrete and
  multi-part actions), and the embedded simulator's episode counts;
- tokenizer: `tokenizer.TokenizerConfig` fields (image_size comes from data);
- dynamics: `dynamics.DynamicsConfig` fields (latent sizes and actions come from tokenizer/data);
- train.tokenizer / train.dynamics: steps, batch, sequence lengths, optimizer and schedule,
  log / checkpoint intervals; the dynamics stage also has the bootstrap and image settings;
- eval: rollout context, horizon, sampling steps, number of rollouts, videos;
- mesh: device mesh shape (`data` = -1 takes the remaining devices); `stages`, `seed`.
"""

import jax
import ml_collections

VARIANTS = ("full", "small", "tiny")


def choose_variant(variant: str | None) -> tuple[str, str]:
    """(variant, why): the named one, or full on an accelerator and small on a CPU."""
    if variant:
        if variant not in VARIANTS:
            raise ValueError(f"unknown config variant {variant!r}; use one of {VARIANTS}")
        return variant, f"variant {variant!r} requested"
    backend = jax.default_backend()
    if backend == "cpu":
        return "small", "no accelerator found, so the small CPU variant was chosen"
    return "full", f"{backend} accelerator found, so the full variant was chosen"


def optimizer_config(steps: int, lr: float, warmup: int, decay: int, batch: int,
                     seq_lengths: tuple[int, ...]) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        steps=steps, batch=batch, seq_lengths=seq_lengths, length_weights=(),
        lr=lr, warmup_steps=warmup, decay_steps=decay, b1=0.9, b2=0.9, weight_decay=1e-4,
        grad_clip=1.0, log_every=50, checkpoint_every=500, max_skipped_in_a_row=20,
    ))


def base_config(name: str, variant: str, why: str) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.name, config.variant, config.variant_reason = name, variant, why
    config.seed = 0
    config.stages = "data,tokenizer,latents,dynamics,eval"
    config.data = ml_collections.ConfigDict(dict(
        format="sim", path="", image_size=64, clip_length=32, clip_stride=16, eval_fraction=0.1,
        workers=2, skip_bad=False, action_kind="continuous", action_classes=(),
        sim_train_episodes=64, sim_eval_episodes=8, sim_episode_length=120, sim_render_size=200,
        loader_threads=2,
    ))
    config.tokenizer = ml_collections.ConfigDict(dict(
        patch=8, n_latents=16, latent_dim=32, enc_width=128, enc_depth=4, enc_heads=4,
        enc_kv_heads=4, enc_time_every=2, dec_width=128, dec_depth=4, dec_heads=4,
        dec_kv_heads=4, dec_time_every=2, mlp_ratio=4.0, p_max=0.9, perceptual_weight=0.2,
        perceptual_weights="", rms_decay=0.99, remat=False, compute_dtype="float32",
    ))
    config.dynamics = ml_collections.ConfigDict(dict(
        width=256, depth=8, heads=4, kv_heads=0, time_every=4, pack=1, registers=4,
        action_tokens=1, k_max=64, softcap=50.0, remat=False, compute_dtype="float32",
        backend="auto",
    ))
    config.train = ml_collections.ConfigDict()
    config.train.tokenizer = optimizer_config(2000, 3e-4, 200, 400, 16, (16,))
    config.train.dynamics = optimizer_config(2000, 3e-4, 200, 400, 16, (32,))
    config.train.dynamics.update(dict(
        objective="shortcut", bootstrap_start=500, bootstrap_fraction=0.25,
        image_fraction=0.3, mean_fraction=0.25,
    ))
    config.eval = ml_collections.ConfigDict(dict(
        context_frames=8, horizon=16, sampling_steps=4, context_signal=0.9, rollouts=16,
        batch=8, videos=4, speed_frames=16,
    ))
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
    return config
