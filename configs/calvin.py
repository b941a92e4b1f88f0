"""CALVIN (robot arm, 7-D relative actions); the embedded tabletop simulator by default.

    python launch/run.py --config=configs/calvin.py              # full on a GPU, small on a CPU
    python launch/run.py --config=configs/calvin.py:full --config.data.format=calvin \
        --config.data.path=/data/calvin/task_D_D
    python launch/run.py --config=configs/calvin.py:small        # the 2-core CPU demo

full: 96x96 frames (from 200x200), patch 16, 32 latents x 32; tokenizer encoder 512/6/8 (time
every 3), decoder 512/4/8 (time every 2); dynamics 768 wide, 8 blocks, 12 heads, time every 4,
4 registers, K_max 128; sequences of 96 with short batches of 24; AdamW 3e-4 (b 0.9/0.9, wd
1e-4) with warmup-stable-decay; bootstrap after 5k steps. These are the sizes known to train on
CALVIN (shared/docs/lessons.md); they fit one GPU.
small: 48x48 frames, a few minutes per stage on 2 CPU cores.
tiny: seconds per stage, for tests.
"""

from configs.common import base_config, choose_variant


def get_config(variant: str | None = None):
    variant, why = choose_variant(variant)
    config = base_config("calvin", variant, why)
    config.data.action_kind = "continuous"
    if variant == "full":
        config.data.update(dict(image_size=96, clip_length=96, clip_stride=48,
                                sim_train_episodes=512, sim_eval_episodes=32,
                                sim_episode_length=240))
        config.tokenizer.update(dict(patch=16, n_latents=32, latent_dim=32, enc_width=512,
                                     enc_depth=6, enc_heads=8, enc_kv_heads=8, enc_time_every=3,
                                     dec_width=512, dec_depth=4, dec_heads=8, dec_kv_heads=8,
                                     dec_time_every=2, compute_dtype="bfloat16", remat=True))
        config.dynamics.update(dict(width=768, depth=8, heads=12, kv_heads=4, time_every=4,
                                    registers=4, k_max=128, compute_dtype="bfloat16",
                                    remat=True))
        tok, dyn = config.train.tokenizer, config.train.dynamics
        tok.update(dict(steps=100_000, batch=32, seq_lengths=(16,), lr=3e-4, warmup_steps=6000,
                        decay_steps=30_000, checkpoint_every=2000, log_every=100))
        dyn.update(dict(steps=50_000, batch=32, seq_lengths=(24, 96), length_weights=(0.9, 0.1),
                        lr=3e-4, warmup_steps=5000, decay_steps=10_000, bootstrap_start=5000,
                        bootstrap_fraction=0.5, checkpoint_every=2000, log_every=100))
        config.eval.update(dict(context_frames=16, horizon=32, rollouts=64, batch=16))
    elif variant == "small":
        config.data.update(dict(image_size=48, clip_length=32, clip_stride=16,
                                sim_train_episodes=36, sim_eval_episodes=6,
                                sim_episode_length=96, sim_render_size=96))
        config.tokenizer.update(dict(patch=6, n_latents=16, latent_dim=16, enc_width=128,
                                     enc_depth=2, enc_heads=4, enc_kv_heads=2, enc_time_every=2,
                                     dec_width=128, dec_depth=2, dec_heads=4, dec_kv_heads=2,
                                     dec_time_every=2, p_max=0.5))
        config.dynamics.update(dict(width=128, depth=4, heads=4, kv_heads=2, time_every=2,
                                    registers=2, k_max=16))
        tok, dyn = config.train.tokenizer, config.train.dynamics
        tok.update(dict(steps=800, batch=8, seq_lengths=(4,), lr=2e-3, b2=0.99,
                        warmup_steps=50, decay_steps=200, checkpoint_every=200, log_every=50))
        dyn.update(dict(steps=1500, batch=16, seq_lengths=(8, 24), length_weights=(0.75, 0.25),
                        lr=1e-3, warmup_steps=100, decay_steps=300, bootstrap_start=750,
                        checkpoint_every=500, log_every=50))
        config.eval.update(dict(context_frames=8, horizon=16, rollouts=12, batch=12))
    else:  # tiny
        config.data.update(dict(image_size=16, clip_length=12, clip_stride=12,
                                sim_train_episodes=4, sim_eval_episodes=2,
                                sim_episode_length=24, sim_render_size=32, workers=1))
        config.tokenizer.update(dict(patch=4, n_latents=4, latent_dim=8, enc_width=32,
                                     enc_depth=2, enc_heads=2, enc_kv_heads=1, dec_width=32,
                                     dec_depth=2, dec_heads=2, dec_kv_heads=1))
        config.dynamics.update(dict(width=32, depth=2, heads=2, kv_heads=1, time_every=2,
                                    registers=1, k_max=4))
        tok, dyn = config.train.tokenizer, config.train.dynamics
        tok.update(dict(steps=6, batch=2, seq_lengths=(4,), log_every=2, checkpoint_every=3,
                        warmup_steps=2, decay_steps=2))
        dyn.update(dict(steps=6, batch=2, seq_lengths=(4, 8), length_weights=(0.5, 0.5),
                        log_every=2, checkpoint_every=3, warmup_steps=2, decay_steps=2,
                        bootstrap_start=3))
        config.eval.update(dict(context_frames=4, horizon=4, rollouts=2, batch=2, videos=1,
                                speed_frames=2))
    return config
