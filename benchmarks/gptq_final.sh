set -x
S=benchmarks/gptq_speed.py
R=/tmp/gs/final; mkdir -p $R
python3 $S time --samples 512 --variants fast,default --json $R/time512.json
python3 $S compare --samples 512 --reference default --variants fast --json $R/compare512.json
python3 $S time --samples 2048 --variants fast --json $R/time2048.json
for scheme in W4A16 W8A16; do
  python3 $S time --samples 64 --scheme $scheme --variants fast,default --json $R/time64-$scheme.json
  python3 $S compare --samples 64 --scheme $scheme --reference default --variants fast --json $R/compare64-$scheme.json
done
echo done > $R/DONE
