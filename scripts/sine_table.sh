#!/usr/bin/env bash
# Trains every sinusoid experiment at K = 5, 10, 20 (query K per task, as in
# MAML's reference code) and prints the table for docs/RESULTS.md.
#   bash scripts/sine_table.sh [RUNS_DIR] [EXTRA --config.KEY=VALUE ...]
# ALGOS="maml reptile" limits the algorithms. A run that fails is reported and
# the others go on.
set -uo pipefail
runs=${1:-runs/sine_table}; shift || true
mkdir -p "${runs}"  # each run's stderr goes beside its workdir
for algo in ${ALGOS:-maml fomaml reptile metasgd anil}; do
  for k in 5 10 20; do
    python -m metajax.train --config "experiments/sine_${algo}.py" \
      --workdir "${runs}/${algo}_k${k}" --config.k_shot=$k --config.k_query=$k "$@" \
      2> "${runs}/${algo}_k${k}.stderr" | grep -v "^outputs" \
      || { echo "FAILED: ${algo} K=${k}:"; tail -n 1 "${runs}/${algo}_k${k}.stderr"; }
  done
done
python -m metajax.results "${runs}"
