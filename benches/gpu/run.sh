#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md. `benches/gpu/run.sh [ptuning] [ptfull] [context2048]
# [restart] [fusion] [gemm] [continuous] [lengths] [profile] [pfprofile] [pf2kprofile]
# [ptprofile] [launches]` runs the named steps (all without arguments: more than one 10-minute
# device call, so name two or three per call). Run from the repository root on the GPU machine,
# with the stripped release binaries xz-packed in .dev/bin
# (chatglm-bench, chatglm-ptuning-bench; see docs/benchmarks.md for how they are built and
# carried). Results go to $OUT (or ./gpu-out). Each step has its own time limit so that one slow
# first-use autotune does not take the others with it.
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT" /tmp/bin
for f in .dev/bin/*.xz; do
  b=/tmp/bin/$(basename "$f" .xz)
  xz -dc "$f" >"$b" && chmod +x "$b"
done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
# Compiled kernels and autotune results (chatglm_kernels::runtime) live in /tmp/kcache, seeded
# from .dev/kcache.tar.xz (a previous call's $OUT/kcache.tar.xz) and packed back at the end, so
# that only the first call pays for compiling and tuning.
export CHATGLM_KERNEL_CACHE=/tmp/kcache
mkdir -p /tmp/kcache
# (Only into an empty cache: a second call of this script on the same machine keeps the newer.)
[ -f .dev/kcache.tar.xz ] && [ -z "$(ls -A /tmp/kcache)" ] && tar -xJf .dev/kcache.tar.xz -C /tmp/kcache
trap 'tar -cJf "$OUT/kcache.tar.xz" -C /tmp/kcache .' EXIT
wanted() { [ -z "$STEPS" ] || [[ " $STEPS " == *" ${1%%-*} "* ]]; }
STEPS="$*"
step() { # name, limit (s), command...
  local name=$1 limit=$2 s
  shift 2
  wanted "$name" || return 0
  s=$(date +%s)
  timeout "$limit" "$@" >"$OUT/$name.json" 2>"$OUT/$name.err"
  echo "$name: rc=$? in $(($(date +%s) - s)) s"
  tail -c 600 "$OUT/$name.json"
  echo
}
# 1. P-Tuning v2 step of the 6B shape (batch 16 x 128 tokens, pre_seq_len 128), block recompute;
#    1a. the same without recompute (frozen weights: no linear layer keeps its input).
step ptuning 330 /tmp/bin/chatglm-ptuning-bench --device cuda --dtype f16 --batch 16 --seq 128 \
  --pre-seq-len 128 --steps 3 --warmup 1 --checkpointing
step ptfull 330 /tmp/bin/chatglm-ptuning-bench --device cuda --dtype f16 --batch 16 --seq 128 \
  --pre-seq-len 128 --steps 3 --warmup 1
# 2. f16 inference at 2048 context: a 1920-token prompt and 128 new tokens (peak memory).
step context2048 150 /tmp/bin/chatglm-bench --prefill 1920 --batches 1 --prompt 1920 --decode-tokens 128
# 2a. First-use cost with and without the kernel cache: the same short run twice in fresh
#     processes over one new, empty cache (cold, then warm).
for run in cold warm; do
  CHATGLM_KERNEL_CACHE=/tmp/kcache-restart step restart-$run 200 /tmp/bin/chatglm-bench \
    --prefill 128 --batches 1 --decode-tokens 16
done
# 3. Decode on burn's fusion wrapper, against the direct backend of every other step (host
#    overhead A/B; the direct backend is what inference uses since c11d1a9).
step fusion 150 /tmp/bin/chatglm-bench --fusion --prefill 128 --batches 1,8 --decode-tokens 64
# 3'. GEMMs on cuBLAS (the default since this step was added) against burn's matmul, for prefill
#     (time to first token, 1920-token prompt); decode keeps burn's GEMV either way.
CHATGLM_GEMM=burn step gemm-burn 150 /tmp/bin/chatglm-bench --prefill 128,1920 --batches 1 \
  --decode-tokens 32
step gemm-cublas 150 /tmp/bin/chatglm-bench --prefill 128,1920 --batches 1,8 --decode-tokens 64
# 3a. Decode through the server's continuous-batching path (SlotDecoder) against step 3's.
step continuous 150 /tmp/bin/chatglm-bench --continuous --prefill 128 --batches 1,8 --decode-tokens 64
# 3b. First-use cost of new prompt lengths: warmup_s per prefill length over the carried cache
#     (which holds the 128-token shapes). Prompts are padded to bucket widths on CUDA
#     (kv_cache::prefill_width): 100, 101 and 127 run as 128, 130 and 150 as 160, so only 130
#     should pay for compiling.
step lengths 240 /tmp/bin/chatglm-bench --prefill 100,101,127,130,150 --batches 1 --decode-tokens 8
# 3c. GPU time per kernel: cubecl's "basic" profiling runs each launch on its own and times it on
#     the device (so the run is slow, but each kernel's time is its own; cuBLAS's GEMMs show up
#     as the `handoff` kernel that waits for each). Two runs that differ by a known amount of
#     work give the figures per unit of it.
# Lines "| 12.3µs     | name" of a profiling log: total µs, launches, name.
kernel_times() {
  awk -F'|' '$2 ~ /^ *[0-9.]+(ns|µs|ms|s) *$/ { d = $2; gsub(/ /, "", d); u = 1
       if (d ~ /ms$/) u = 1000; else if (d ~ /ns$/) u = 0.001; else if (d ~ /µs$/) u = 1; else if (d ~ /s$/) u = 1e6
       gsub(/[a-zµ]+$/, "", d); n = $0; sub(/^\|[^|]*\| */, "", n); gsub(/ +$/, "", n); n = substr(n, 1, 90)
       t[n] += d * u; c[n]++ }
       END { for (k in t) printf "%.3f %d %s\n", t[k], c[k], k }' "$1"
}
# The difference of two `kernel_times` files over `units`: µs and launches per unit, per kernel.
per_unit() { # short, long, units, label
  awk -v n="$3" -v label="$4" 'FNR == NR { t = $1; c = $2; $1 = $2 = ""; a[$0] = t; ac[$0] = c; next }
       { t = $1; c = $2; $1 = $2 = ""; d = (t - a[$0]) / n; dc = (c - ac[$0]) / n
         if (dc >= 0.5) { printf "%9.1f %6.1f %s\n", d, dc, $0; s += d } }
       END { printf "%9.1f total (%s)\n", s, label }' "$1" "$2" | sort -rn | head -24
}
# Two commands (strings) under that profiling, in /tmp/NAME: the kernels' GPU time and launches
# per unit of the work the longer one adds, into $OUT/NAME.txt.
profile_pair() { # name, units, label, shorter command, longer command
  local name=$1 units=$2 label=$3 dir=/tmp/$1 run
  # A first run outside the profiling fills the kernel cache: a kernel compiled during a profiled
  # run counts its compile time as GPU time.
  eval "$4" >/dev/null 2>&1
  mkdir -p "$dir" && (
    cd "$dir" || exit 1
    printf '[profiling.logger]\nlevel = "basic"\nfile = "%s/log"\n' "$dir" >cubecl.toml
    for run in 4 5; do
      rm -f log
      eval "${!run}" >"run$run.json" 2>/dev/null
      kernel_times log >"k$run"
    done
    for k in k4 k5; do cp "$k" "$OUT/$name-$k.txt"; done 2>/dev/null
    echo "$label: GPU time (us) and launches per unit, kernel"
    per_unit k4 k5 "$units" "$label"
  ) | tee "$OUT/$name.txt"
}
#     Decode: two runs per batch size differ by 2 x 64 decode steps.
if wanted profile; then
  for b in 1 8; do
    profile_pair "profile-b$b" 128 "decoded token, batch $b" \
      "timeout 200 /tmp/bin/chatglm-bench --prefill 128 --batches $b --decode-tokens 32" \
      "timeout 200 /tmp/bin/chatglm-bench --prefill 128 --batches $b --decode-tokens 96"
  done
fi
#     A 128-token prompt: the bench runs each prompt length 4 times (3 timed, 1 split into host
#     and device time), so `--prefill 128,128` has 4 more prefills than `--prefill 128`.
if wanted pfprofile; then
  profile_pair pfprofile 4 "128-token prefill" \
    "timeout 200 /tmp/bin/chatglm-bench --prefill 128 --batches 1 --decode-tokens 2" \
    "timeout 200 /tmp/bin/chatglm-bench --prefill 128,128 --batches 1 --decode-tokens 2"
fi
#     A 1920-token prompt (the prefill of the 2048-context step), the same way.
if wanted pf2kprofile; then
  profile_pair pf2kprofile 4 "1920-token prefill" \
    "timeout 240 /tmp/bin/chatglm-bench --prefill 1920 --batches 1 --decode-tokens 2" \
    "timeout 240 /tmp/bin/chatglm-bench --prefill 1920,1920 --batches 1 --decode-tokens 2"
fi
#     P-Tuning step (16 x 128 tokens, pre_seq_len 128, block recompute): 1 and 3 steps.
pt="timeout 240 /tmp/bin/chatglm-ptuning-bench --device cuda --dtype f16 --batch 16 --seq 128 --pre-seq-len 128 --warmup 1 --checkpointing"
if wanted ptprofile; then
  profile_pair ptprofile 2 "P-Tuning step" "$pt --steps 1" "$pt --steps 3"
fi
# 4. Kernel launches per decoded token: cubecl logs every launch (profiling level "minimal") when
#    a cubecl.toml in the working directory asks for it; two runs differ by 2 x 64 decode steps.
wanted launches || exit 0
mkdir -p /tmp/launch && cd /tmp/launch || exit 1
printf '[profiling.logger]\nlevel = "minimal"\nfile = "/tmp/launch/log"\n' >cubecl.toml
for n in 32 96; do
  rm -f log
  timeout 120 /tmp/bin/chatglm-bench --prefill 128 --batches 1 --decode-tokens $n >/dev/null 2>&1
  eval "l$n=$(grep -c Executing log 2>/dev/null || echo 0)"
  grep Executing log | sed 's/.*Executing //' | cut -c1-90 | sort | uniq -c >"/tmp/launch/k$n"
done
echo "launches: $l32 (32 tokens), $l96 (96 tokens): $(((l96 - l32) / 128)) per decoded token"
# Per kernel, launches per decoded token (the difference of the two runs over 128 tokens).
awk 'FNR == NR { c = $1; $1 = ""; a[$0] = c; next }
     { c = $1; $1 = ""; d = (c - a[$0]) / 128; if (d >= 0.5) printf "%6.1f %s\n", d, $0 }' \
  /tmp/launch/k32 /tmp/launch/k96 | sort -rn | head -40
