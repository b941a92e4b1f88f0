#!/usr/bin/env bash
# Fetches, on a machine with a package index, the wheels a GPU machine without one lacks for
# launch/gpu_checks.sh: Python 3.12 on x86-64 with JAX, equinox, optax, chex, orbax, absl,
# matplotlib and imageio already installed (mp4 videos are skipped there: imageio-ffmpeg is 68 MB).
# They land in .whl/ (about 6 MB), which .git/info/exclude keeps out of git; copy or carry it.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    grain==0.2.18 array-record==0.8.6 portpicker==1.6.0 dm-pix==0.4.5 tensorboardX==2.6.5 \
    ml-collections==1.1.0 beartype==0.23.1
du -sh .whl
