# Issue 25 on the lent GPU, one background job (docs/benchmarks.md, "How to reproduce"), in the order
# of what matters most, since the device time may run out: fast at 2048 x 2048; the quality tables on
# smollm2 and tiny; exact and fast side by side at 512; fast at 512 under a 16 GB cap; exact at 2048.
set -x
export PYTHONPATH=/tmp/compress:$PWD HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
S=benchmarks/gptq_speed.py
R=/tmp/g25; mkdir -p $R
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $R/gpu.txt
python3 $S setup --out $R
python3 $S time --out $R --samples 2048 --variants fast --json $R/time2048-fast.json
MLFLOW_TRACKING_URI=sqlite:///$R/mlflow.db EXATRACK_CACHE=$R/cache python3 benchmarks/real_weights.py \
  --models smollm2,tiny --methods gptq --gptq-paths exact,fast --gguf /tmp/smol.gguf --json $R/real.json
python3 $S time --out $R --samples 512 --variants exact,fast --json $R/time512.json
python3 $S time --out $R --samples 512 --variants fast --cap-gib 16 --json $R/time512-fast-16g.json
python3 $S time --out $R --samples 2048 --variants exact --json $R/time2048-exact.json
echo done > $R/DONE
