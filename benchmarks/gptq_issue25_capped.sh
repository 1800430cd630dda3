# Issue 25 on a 16 GB card, on the lent GPU: three calls back to back (the machine goes back 30 s after
# a call ends; docs/benchmarks.md, "GPTQ's fast path judged by quality"). Writes its JSON under $OUT.
#   1  carries .gpu/compress/c0 and .gpu/exaone: unpacks llmcompressor, builds the full-size shape, checks the
#      split cache on this GPU (the CUDA tests of tests/compress/test_gptq.py; fast_split's int8 weights
#      against fast's at 128 samples), then fast at 2048 x 2048 under a 16 GiB cap
#   2  fast at 2048 x 2048, uncapped
#   3  exact (bit-identical) at 2048 x 2048, uncapped
set -ex
export PYTHONPATH=/tmp/compress:$PWD HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
S=benchmarks/gptq_speed.py
R=/tmp/g25
case "$1" in
1)  mkdir -p /tmp/compress $R && cat .gpu/compress/c0/p* | xz -d -T16 | tar -x -C /tmp/compress
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $OUT/gpu.txt
    python3 $S setup --out $R
    python3 -m pytest -q -p no:cacheprovider -p no:xdist tests/compress/test_gptq.py -k "pinned or bf16_products" \
        2>&1 | tail -5 | tee $OUT/cuda-tests.txt
    python3 $S time --out $R --samples 128 --variants fast,fast_split --json $OUT/split128.json
    python3 $S compare --out $R --samples 128 --reference fast --variants fast_split --json $OUT/split128-compare.json
    python3 $S time --out $R --samples 2048 --variants fast --cap-gib 16 --json $OUT/time2048-fast-16g.json ;;
2)  ls /tmp/compress/llmcompressor >/dev/null || exit 3
    python3 $S time --out $R --samples 2048 --variants fast --json $OUT/time2048-fast.json ;;
3)  ls /tmp/compress/llmcompressor >/dev/null || exit 3
    python3 $S time --out $R --samples 2048 --variants exact --json $OUT/time2048-exact.json ;;
esac
