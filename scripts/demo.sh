#!/usr/bin/env bash
# `make demo`: embed the sample photos in samples/ with the default model. Where the model cannot
# be downloaded (no internet), say so plainly and run on the offline STAND-IN instead, whose
# output is labelled as such (random weights: right shape and speed, meaningless values).
set -uo pipefail
cd "$(dirname "$0")/.."
EFX=.venv/bin/efx
OUT=demo-out
STANDIN=.cache/standin-b6
mkdir -p "$OUT"

again() {  # the same run with --update: nothing changed, so no model load and no rewrite
    echo "== efx extract samples/ $1 --update $2"
    "$EFX" extract samples/ "$1" --update $2 || exit 1
}

look() {  # what the embeddings say: the nearest photos, near-duplicates, as pages
    echo "== efx similar $1 samples/coffee.jpg -k 3 --html $OUT/similar.html"
    "$EFX" similar "$1" samples/coffee.jpg -k 3 --html "$OUT/similar.html" || exit 1
    echo "== efx duplicates $1 --html $OUT/duplicates.html"
    "$EFX" duplicates "$1" --html "$OUT/duplicates.html" || exit 1
}

echo "== efx extract samples/ $OUT/samples.h5  (default model: TF-Hub EfficientNet-B6)"
if "$EFX" extract samples/ "$OUT/samples.h5" --overwrite; then
    "$EFX" info "$OUT/samples.h5"
    again "$OUT/samples.h5" ""
    look "$OUT/samples.h5"
    exit 0
fi

cat >&2 <<MSG

demo: the real model could not be fetched (see the message above; no internet here?).
demo: running on the offline STAND-IN instead: EfficientNet-B6 architecture and compute with
demo: RANDOM weights. Its embeddings are NOT real features; the output says so in its model name.

MSG
if [ ! -d "$STANDIN" ]; then
    echo "== efx make-standin $STANDIN  (once, about a minute)"
    "$EFX" make-standin "$STANDIN" || exit 1
fi
echo "== efx extract samples/ $OUT/samples-STANDIN.h5 --model $STANDIN"
"$EFX" extract samples/ "$OUT/samples-STANDIN.h5" --model "$STANDIN" --overwrite || exit 1
echo "== efx info $OUT/samples-STANDIN.h5"
"$EFX" info "$OUT/samples-STANDIN.h5"
again "$OUT/samples-STANDIN.h5" "--model $STANDIN"
look "$OUT/samples-STANDIN.h5"
