"""CoinRun (procgen, 64x64, 15 discrete actions, random-action episodes generated locally).

Needs procgen: `pip install --no-deps procgen-mirror gym3 gym==0.26.2 && pip install cffi
imageio cloudpickle` (see BUILD.md); the data stage says so if it is missing.

    python launch/run.py --config=configs/coinrun.py          # full on a GPU, small on a CPU
    python launch/run.py --config=configs/coinrun.py:small

full: the sizes known to train on CoinRun: patch 16, 16 latents x 32;
tokenizer encoder and decoder 512 wide, 4 blocks, 8 heads, time every 4; dynamics 768 wide, 12
blocks, 12 heads, time every 4, 4 registers, K_max 128; sequences of 64; 10k episodes of up to
1000 steps; AdamW 3e-4 (Muon is an option, not measured here:
`--config.train.dynamics.optimizer=muon --config.train.dynamics.muon_lr=0.02`). Peak training
memory, estimated from shapes: 3.9 GiB (tokenizer), 6.3 GiB (dynamics); not yet measured on a GPU.
small: 64x64 frames with patch 8; 48 episodes of up to 200 frames cycling through 4 levels
(`data.coinrun_levels`; held-out episodes replay those levels with other random actions: trained
for minutes on 2 CPU cores on 48 levels, a model does not generalise to unseen ones); every small
variant's recipe, nothing CoinRun-specific (tokenizer 2600 steps; dynamics a one-step regressor,
1000 steps, sampled with K = 1 behind a clean context); evaluated on 48 held-out rollouts;
about 18 minutes in all (BENCHMARKS.md).
Agent (`--config.stages=agent_finetune,agent_rl,agent_eval` on a finished run): the rewards are
procgen's, recorded with the episodes (task "coin"); for data where coins are reached often
enough to learn from, generate the main run with half the episodes played by the scripted
player, `--config.data.coinrun_scripted=0.5`; agent_eval plays 100 frames per episode, 16 games
at a time. Unseen levels: `--config.data.coinrun_levels=0 --config.data.gen_episodes=240` (one
level per episode, 5x the episodes; agent_eval then plays levels no training episode played).
tiny: for tests.
"""

from configs.common import base_config, choose_variant, small_cpu_sizes, tiny_test_sizes


def get_config(variant: str | None = None):
    variant, why = choose_variant(variant)
    config = base_config("coinrun", variant, why)
    config.data.update(dict(format="coinrun", gen_episodes=10_000, gen_max_length=1000))
    config.agent.task = "coin"  # procgen's reward, recorded with the episodes
    if variant == "full":
        config.data.update(dict(image_size=(64, 64), clip_length=64, clip_stride=64))
        config.tokenizer.update(dict(patch=16, n_latents=16, latent_dim=32, enc_width=512,
                                     enc_depth=4, enc_heads=8, enc_kv_heads=8, enc_time_every=4,
                                     dec_width=512, dec_depth=4, dec_heads=8, dec_kv_heads=8,
                                     dec_time_every=4, compute_dtype="bfloat16"))
        config.dynamics.update(dict(width=768, depth=12, heads=12, kv_heads=4, time_every=4,
                                    registers=4, k_max=128, compute_dtype="bfloat16",
                                    remat=True))
        config.train.tokenizer.update(dict(steps=200_000, batch=16, seq_lengths=(16,),
                                           warmup_steps=10_000, decay_steps=30_000,
                                           checkpoint_every=2000, log_every=100))
        config.train.dynamics.update(dict(steps=150_000, batch=32, seq_lengths=(64,),
                                          warmup_steps=5000, decay_steps=20_000,
                                          bootstrap_start=5000, bootstrap_fraction=0.5,
                                          checkpoint_every=2000, log_every=100))
        config.eval.update(dict(context_frames=8, horizon=32, rollouts=64, batch=16))
    elif variant == "small":
        small_cpu_sizes(config, image_size=64, patch=8)
        config.data.update(dict(gen_episodes=48, gen_max_length=200, coinrun_levels=4))
        config.eval.update(dict(rollouts=48))
        config.agent.update(dict(eval_frames=100, eval_batch=16))
    else:
        tiny_test_sizes(config)
    return config
