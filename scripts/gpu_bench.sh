#!/usr/bin/env bash
# The one-GPU bench of issue 16 on a machine with an NVIDIA GPU, in one process per system and without Ray:
# raywhisper-engine against faster-whisper-sequential and faster-whisper-batched (configs/bench/gpu.yaml), with
# the GPU's utilisation and memory sampled through NVML, logged to MLflow (see docs/benchmarks.md, "GPU bench").
#
#   scripts/gpu_bench.sh MANIFEST [OUTPUT] [more bench arguments...]
#   scripts/gpu_bench.sh DEV_CORPUS/manifest.jsonl out/bench-gpu
#   scripts/gpu_bench.sh DEV_CORPUS/manifest.jsonl out/bench-gpu --set job.model.name=/models/whisper-tiny.en-ct2
#
# It sets up its own virtual environment (VENV, default .venv-gpu) with the package and its dependencies except
# Ray, plus the bench and gpu extras (mlflow, psutil, matplotlib, nvidia-ml-py); checks that CTranslate2 runs a
# model on the GPU, installing NVIDIA's cuBLAS 12 / cuDNN 9 wheels when the system's libraries are missing; then
# runs the bench. Needs: an NVIDIA driver, Python >= 3.10 (PYTHON, default python3), PyPI. Manifest: the bench's
# (JSONL/CSV/Parquet with path/audio_filepath, and reference/text for WER).
set -euo pipefail

if [ $# -lt 1 ]; then
    sed -n '2,15p' "$0" >&2
    exit 2
fi
MANIFEST=$1
OUTPUT=${2:-out/bench-gpu}
shift $(( $# >= 2 ? 2 : 1 ))
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-gpu}
PY=$VENV/bin/python

# 1. A virtual environment with the package and its dependencies minus Ray (the bench never imports it).
test -x "$PY" || "$PYTHON" -m venv "$VENV"
"$PY" -m pip install -q --upgrade pip
"$PY" -c "import tomllib" 2>/dev/null || "$PY" -m pip install -q tomli
"$PY" - > "$VENV/requirements-noray.txt" <<'PYEOF'
try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = project["optional-dependencies"]
for req in project["dependencies"] + extras["bench"] + extras["gpu"]:
    if not req.replace(" ", "").lower().startswith("ray"):
        print(req)
PYEOF
"$PY" -m pip install -q -r "$VENV/requirements-noray.txt"
"$PY" -m pip install -q --no-deps -e .
if "$PY" -c "import ray" 2>/dev/null; then
    echo "note: ray is importable in $VENV; the bench does not use it" >&2
fi

# 2. CTranslate2 on the GPU: a one-second decode of silence in float16 (loads cuBLAS and cuDNN).
smoke() {
    "$PY" - <<'PYEOF'
import numpy as np
from faster_whisper import WhisperModel
from pipelines.core.models import resolve_model_path
model = WhisperModel(resolve_model_path("bundled-tiny.en"), device="cuda", compute_type="float16")
list(model.transcribe(np.zeros(16000, dtype=np.float32), beam_size=1)[0])
PYEOF
}
if ! smoke 2>/dev/null; then
    echo "CTranslate2 cannot run on the GPU with the system's libraries; installing cuBLAS 12 and cuDNN 9 wheels" >&2
    "$PY" -m pip install -q nvidia-cublas-cu12 "nvidia-cudnn-cu12==9.*"
    LIBS=$("$PY" -c 'import nvidia.cublas, nvidia.cudnn; print(list(nvidia.cublas.__path__)[0] + "/lib:" + list(nvidia.cudnn.__path__)[0] + "/lib")')
    export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    smoke || { echo "error: CTranslate2 still cannot run a model on the GPU (see the error above)" >&2; exit 1; }
fi

# 3. The bench: what ran, on what, then the run.
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(nproc) CPU cores"
exec "$PY" -m pipelines.bench --config configs/bench/gpu.yaml --manifest "$MANIFEST" --device cuda \
    --output "$OUTPUT" "$@"
