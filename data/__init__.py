"""Data: source readers and generators, clip preprocessing and the training loader.

Modules: `episode` (episode model, errors), `episodes` (folder of .npz episodes), `calvin`
(CALVIN format), `sim` and `sim_demos` (embedded pybullet tabletop and scripted demonstrations
written in CALVIN format), `vpt` (Minecraft VPT mp4 + jsonl), `coinrun` and `craftax` (random-play
generators writing .npz episodes), `images` (resize), `jobs` (worker processes, progress, resumable
output folders), `clips` (clip cutting and the on-disk clip format), `loader` (grain batches),
`prepare` (command line), `bench` (loader throughput). Optional libraries (pybullet, PyAV,
procgen, craftax) are imported only by the module that needs them, so training on prepared clips
needs numpy and grain only.
"""
