#!/bin/sh
# The committed in-context target runs: three seeds per family, one process at a time, one thread; each run
# keeps the weights that scored best on validation tasks (checked every 250 meta-iterations).
# Usage (from the repository root): OMP_NUM_THREADS=1 PYTHONPATH=$PWD nohup sh benchmarks/incontext_train_all.sh &
set -e
PY=${PYTHON:-python}
for seed in 0 1 2; do
  $PY -m benchmarks.incontext_targets train --family bandit --seed $seed --iterations 1500
  $PY -m benchmarks.incontext_targets train --family nav2d --seed $seed --iterations 1000
done
$PY -m benchmarks.incontext_targets report --family bandit
$PY -m benchmarks.incontext_targets report --family nav2d
