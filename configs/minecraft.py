"""Minecraft: VPT contractor videos (mp4 + jsonl), or Craftax generated locally by default.

    python launch/run.py --config=configs/minecraft.py:full --config.data.format=vpt \
        --config.data.path=/data/vpt
    python launch/run.py --config=configs/minecraft.py:small     # Craftax-Classic on a CPU

VPT actions are multi-part (23 binary keys/buttons + 121 camera classes); Craftax-Classic has 17
discrete actions; both class layouts come from the data package unless
config.data.action_classes is set. Craftax needs `pip install -e ".[craftax]"`, VPT
`pip install -e ".[video]"`.

full: 224x384 frames (VPT resized), patch 16 (336 patches), 128 latents x 16 packed by 2 into
64 spatial tokens of 32; tokenizer 768 wide, 8 blocks each; dynamics 1024 wide, 16 blocks, 16
heads with 4 KV heads, time every 4, 8 registers, K_max 64; 64-frame clips, short/long batches of
16/64. Sized for one GPU (peak training memory estimated from shapes:
14.8 GiB tokenizer, 16.3 GiB dynamics at 64 frames); it has not been trained or run on a GPU here.
small: Craftax-Classic at 64x64, a few minutes per stage on 2 CPU cores. tiny: for tests.
"""

from configs.common import base_config, choose_variant, small_cpu_sizes, tiny_test_sizes


def get_config(variant: str | None = None):
    variant, why = choose_variant(variant)
    config = base_config("minecraft", variant, why)
    config.data.update(dict(format="craftax", gen_episodes=256, gen_max_length=1000))
    if variant == "full":
        config.data.update(dict(image_size=(224, 384), clip_length=64, clip_stride=64))
        config.tokenizer.update(dict(patch=16, n_latents=128, latent_dim=16, enc_width=768,
                                     enc_depth=8, enc_heads=12, enc_kv_heads=4,
                                     enc_time_every=4, dec_width=768, dec_depth=8, dec_heads=12,
                                     dec_kv_heads=4, dec_time_every=4, compute_dtype="bfloat16",
                                     remat=True))
        config.dynamics.update(dict(width=1024, depth=16, heads=16, kv_heads=4, time_every=4,
                                    registers=8, pack=2, k_max=64, compute_dtype="bfloat16",
                                    remat=True))
        config.train.tokenizer.update(dict(steps=200_000, batch=16, seq_lengths=(8,),
                                           warmup_steps=10_000, decay_steps=30_000,
                                           checkpoint_every=2000, log_every=100))
        config.train.dynamics.update(dict(steps=200_000, batch=16, seq_lengths=(16, 64),
                                          length_weights=(0.9, 0.1), warmup_steps=5000,
                                          decay_steps=20_000, bootstrap_start=20_000,
                                          checkpoint_every=2000, log_every=100))
        config.eval.update(dict(context_frames=16, horizon=32, rollouts=32, batch=8))
    elif variant == "small":
        small_cpu_sizes(config, image_size=64, patch=8)
        config.data.update(dict(gen_episodes=48, gen_max_length=200))
    else:
        tiny_test_sizes(config)
    return config
