"""CALVIN (robot arm, 7-D relative actions); the embedded tabletop simulator by default.

    python launch/run.py --config=configs/calvin.py              # full on a GPU, small on a CPU
    python launch/run.py --config=configs/calvin.py:full --config.data.format=calvin \
        --config.data.path=/data/calvin/task_D_D
    python launch/run.py --config=configs/calvin.py:small        # the 2-core CPU demo

full: 96x96 frames (from 200x200), patch 16, 32 latents x 32; tokenizer encoder 512/6/8 (time
every 3), decoder 512/4/8 (time every 2); dynamics 768 wide, 8 blocks, 12 heads, time every 4,
4 registers, K_max 128; sequences of 96 with short batches of 24; AdamW 3e-4 (b 0.9/0.9, wd
1e-4) with warmup-stable-decay; bootstrap after 5k steps. These are the sizes known to train on
CALVIN. Peak training memory, estimated from shapes: 3.6 GiB
(tokenizer), 13.4 GiB (dynamics, 96 frames) (`python -m launch.bench --floors`; not yet
measured on a GPU, BENCHMARKS.md).
small: 48x48 frames, a few minutes per stage on 2 CPU cores; the simulator records 96 training
episodes at 10 Hz (`sim_frame_skip=3`), so the 16-step evaluation horizon spans 1.6 s of arm
motion; tokenizer 2600 steps (+0.9 dB of reconstruction over 2000, BENCHMARKS.md); dynamics
trained as a one-step regressor (`configs.common.small_cpu_sizes`: every frame predicted from
pure noise behind clean copies of the frames before it, AdamW 1e-3, 1000 steps) and sampled as
one: K = 1 step per frame, committed frames clean, no action guidance. On this run, the CoinRun
pools and the domain suite it beat the shortcut-forcing recipe's rollouts and action gaps
(BENCHMARKS.md). The full variant keeps shortcut forcing with bootstrap and K = 4: a one-step
regressor predicts the mean of the possible next frames, and whether that still wins with a
GPU's budget and data is not measured.
tiny: seconds per stage, for tests.
"""

from configs.common import base_config, choose_variant, small_cpu_sizes, tiny_test_sizes


def get_config(variant: str | None = None):
    variant, why = choose_variant(variant)
    config = base_config("calvin", variant, why)
    if variant == "full":
        config.data.update(dict(image_size=(96, 96), clip_length=96, clip_stride=48,
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
        small_cpu_sizes(config, image_size=48, patch=6)
        config.data.update(dict(sim_train_episodes=96, sim_eval_episodes=6,
                                sim_episode_length=96, sim_render_size=96, sim_frame_skip=3))
    else:
        tiny_test_sizes(config)
    return config
