#!/bin/bash
# Run the trial lines of a queue file, JOBS at a time, each with TRIAL_THREADS threads.
#   bash benchmarks/embedded_search/queue.sh QUEUE_FILE [JOBS]
# Each line: NAME ARGS... (the arguments of trial.py). Lines starting with # are skipped.
# Logs go to /tmp/embedded_search/logs/NAME.log; rows are appended to results.csv.
set -u
Q=$1; JOBS=${2:-2}
cd "$(dirname "$0")/../.."
mkdir -p /tmp/embedded_search/logs
export TRIAL_THREADS=${TRIAL_THREADS:-1} OMP_NUM_THREADS=${TRIAL_THREADS:-1} PYTHONPATH=$PWD
while read -r line; do
  case "$line" in ''|'#'*) continue;; esac
  name=${line%% *}
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 5; done
  echo "$(date +%T) start $name"
  eval ".venv/bin/python benchmarks/embedded_search/trial.py $line" > /tmp/embedded_search/logs/$name.log 2>&1 &
  sleep 2
done < "$Q"
wait
echo "$(date +%T) queue done"
