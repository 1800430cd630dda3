# Issue 25 on the lent GPU, as one background job per stage (see docs/benchmarks.md, "How to reproduce"):
#   smoke    both paths and the 16 GB cap at 64 samples (minutes), then the quality tables on smollm2 and tiny
#   full     GPTQ W8A8 2048 x 2048 on the full-size shape: fast, fast under a 16 GB cap, exact
set -x
export PYTHONPATH=/tmp/compress:$PWD HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
S=benchmarks/gptq_speed.py
R=/tmp/g25; mkdir -p $R
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $R/gpu.txt
python3 $S setup --out $R
case "$1" in
smoke)
  python3 $S time --out $R --samples 64 --variants fast,exact --json $R/time64.json
  python3 $S time --out $R --samples 64 --variants fast --cap-gib 16 --json $R/time64-16g.json
  MLFLOW_TRACKING_URI=sqlite:///$R/mlflow.db EXATRACK_CACHE=$R/cache python3 benchmarks/real_weights.py \
    --models smollm2,tiny --gptq-paths exact,fast --gguf /tmp/smol.gguf --json $R/real.json ;;
full)
  python3 $S time --out $R --samples 2048 --variants fast --json $R/time2048-fast.json
  python3 $S time --out $R --samples 2048 --variants fast --cap-gib 16 --json $R/time2048-fast-16g.json
  python3 $S time --out $R --samples 2048 --variants exact --json $R/time2048-exact.json ;;
esac
echo done > $R/DONE-$1
