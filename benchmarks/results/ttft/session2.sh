#!/bin/bash
# the in-process engine on the pipeline's prompts, again (session 1's run overlapped unlocked unit tests and stacks)

echo "[$(date +%T)] engine-2 start; load: $(cat /proc/loadavg)"
TRITONRAG_CONFIG=benchmarks/results/ttft/config-before.toml .venv/bin/python benchmarks/ttft_breakdown.py engine -c 8,16 --label engine-2 \
   --json benchmarks/results/ttft/raw/engine-2.json 2>&1 | grep -E "^\[engine|^\|" 
echo "[$(date +%T)] engine-2 end; load: $(cat /proc/loadavg)"
