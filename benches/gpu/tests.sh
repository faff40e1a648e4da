#!/usr/bin/env bash
# The CUDA halves of the parity and kernel tests, on the GPU machine. The test binaries are built
# here (`CARGO_TARGET_DIR=/work/targets/model cargo test --release --no-run -p chatglm-model --test
# parity --test chatglm_cpp -p chatglm-kernels --test ops --test runtime`), stripped and xz-packed
# into .dev/test/NAME.xz (see docs/benchmarks.md). They find their fixtures through the path the
# crate had when built (/work/main), so the repository is linked there. Logs go to $OUT.
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT" /tmp/tests /work
ln -sfn "$PWD" /work/main
for f in .dev/test/*.xz; do
  t=/tmp/tests/$(basename "$f" .xz)
  xz -dc "$f" >"$t" && chmod +x "$t"
done
for t in /tmp/tests/*; do
  n=$(basename "$t")
  s=$(date +%s)
  CHATGLM_TEST_DEVICE=cuda timeout 200 "$t" --test-threads 1 >"$OUT/test-$n.log" 2>&1
  echo "$n: rc=$? in $(($(date +%s) - s)) s: $(grep -E '^test result' "$OUT/test-$n.log" | tail -1)"
done
