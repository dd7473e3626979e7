#!/usr/bin/env bash
# Tokenize and pack the benchmark text here on the CPU, into a git-ignored folder the device
# tool can carry to the GPU machine (which has neither ../shared nor `datasets`):
#
#   benchmarks/pack_for_gpu.sh [OUT]          # OUT defaults to .carry/textkit-llama2 (~26 MB)
#
# OUT gets train.bin / validation.bin / test.bin (+ .idx.npy), meta.json, and tokenizer/ (a copy
# of the Llama-2 tokenizer). Splits: textkit train.jsonl -> train, val.jsonl -> validation,
# wikitext2_valid.jsonl -> test. On the GPU machine an experiment uses it with
#
#   [model]  tokenizer = ".carry/textkit-llama2/tokenizer"
#   [data]   prepared = ".carry/textkit-llama2"
#
# and the device call names it: carry = [".carry/textkit-llama2"].
# textkit/ and tokenizer-llama2/ are read from DATA, by default ../shared/data next to the checkout;
# DATA=/path/to/shared/data reads them from elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n ${DATA:-} ]]; then
  from="DATA=$DATA"
else
  DATA=../shared/data
  from="DATA defaults to ../shared/data, next to the checkout"
fi
for f in "$DATA/textkit/train.jsonl" "$DATA/textkit/val.jsonl" "$DATA/textkit/wikitext2_valid.jsonl" \
         "$DATA/tokenizer-llama2/tokenizer.json"; do
  [[ -f $f ]] || { echo "error: $f not found ($from); set DATA=/path/to/shared/data" >&2; exit 2; }
done
DATA=$(cd "$DATA" && pwd)  # absolute: the experiment file below is read from a temp folder
OUT=${1:-.carry/textkit-llama2}
if ! git check-ignore -q "$OUT/meta.json"; then
  echo "error: $OUT is not ignored by git; use a folder under .carry/ (or add it to .gitignore)" >&2
  exit 2
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cat > "$WORK/pack.toml" <<TOML
name = "pack"
runs_dir = "$WORK/runs"
[model]
path = "$DATA/tokenizer-llama2"
[data]
train_files = ["$DATA/textkit/train.jsonl"]
validation_files = ["$DATA/textkit/val.jsonl"]
test_files = ["$DATA/textkit/wikitext2_valid.jsonl"]
workers = $(nproc)
TOML
python3 -m engine prepare "$WORK/pack.toml"
rm -rf "$OUT.tmp"
mkdir -p "$OUT.tmp"
cp "$WORK"/runs/pack/prepare/{meta.json,*.bin,*.idx.npy} "$OUT.tmp/"
cp -r "$DATA/tokenizer-llama2" "$OUT.tmp/tokenizer"
chmod -R u+w "$OUT.tmp"
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
du -sh "$OUT"
