#!/bin/bash
# One lock session (from the repository root: flock -o /tmp/tritonrag-bench.lock benchmarks/results/ttft/session.sh): stack "before"
# (torch_threads 0, cpu_nice 0), vLLM's nice switched 0/10/0/10 between runs; stack "after" (torch_threads 1,
# cpu_nice 10 by the code), switched 10/0/10/0; then the in-process engine on the pipeline's prompts.
B=benchmarks/results/ttft/raw
mkdir -p /tmp/ttft  # the stacks' logs and pids
mkdir -p $B
start() {  # NAME PORT
  TRITONRAG_CONFIG=benchmarks/results/ttft/config-$1.toml setsid .venv/bin/tritonrag serve --no-ingress --http-port $2 \
     --grpc-port $(($2+1)) --metrics-port $(($2+2)) > /tmp/ttft/serve_$1.log 2>&1 &
  echo $! > /tmp/ttft/serve_$1.pid
  local t0=$(date +%s)
  until curl -sf http://127.0.0.1:$2/v2/models/rag/ready >/dev/null; do
    sleep 3
    kill -0 $(cat /tmp/ttft/serve_$1.pid) 2>/dev/null || { echo "serve $1 died"; tail -30 /tmp/ttft/serve_$1.log; return 1; }
    [ $(( $(date +%s) - t0 )) -gt 900 ] && { echo "serve $1 not ready in 900 s"; return 1; }
  done
  echo "[$(date +%T)] stack $1 ready in $(( $(date +%s) - t0 )) s"
}
stop() {
  local pid=$(cat /tmp/ttft/serve_$1.pid)
  kill -INT $pid; for i in $(seq 60); do kill -0 $pid 2>/dev/null || break; sleep 1; done
  kill -0 $pid 2>/dev/null && kill -KILL $pid
  sleep 3; echo "[$(date +%T)] stack $1 stopped"
}
nice_of() { .venv/bin/python benchmarks/results/ttft/renice.py $(cat /tmp/ttft/serve_$1.pid) $2; }
show_nice() {
  .venv/bin/python -c "
import os; from pathlib import Path; from tritonrag.deploy.processes import descendant_pids, thread_ids
for p in descendant_pids($(cat /tmp/ttft/serve_$1.pid)):
    print(p, Path(f'/proc/{p}/comm').read_text().strip(), sorted({os.getpriority(os.PRIO_PROCESS, t) for t in thread_ids(p)}))"
}
run() {  # STACK PORT LABEL
  .venv/bin/python benchmarks/ttft_breakdown.py e2e --url http://127.0.0.1:$2/v2/models/rag/generate_stream \
     -c 8,16 --label $3 --json $B/$3.json
}
echo "[$(date +%T)] session start"
if start before 18000; then
  show_nice before
  .venv/bin/python benchmarks/ttft_breakdown.py e2e --url http://127.0.0.1:18000/v2/models/rag/generate_stream -c 1 --requests 1 --label smoke
  nice_of before 0;  run before 18000 threads0-nice0-a
  nice_of before 10; run before 18000 threads0-nice10-a
  nice_of before 0;  run before 18000 threads0-nice0-b
  nice_of before 10; run before 18000 threads0-nice10-b
fi
stop before
if start after 18100; then
  echo "nice set by [generator] cpu_nice = 10:"; show_nice after
  run after 18100 threads1-nice10-a
  nice_of after 0;  run after 18100 threads1-nice0-a
  nice_of after 10; run after 18100 threads1-nice10-b
  nice_of after 0;  run after 18100 threads1-nice0-b
fi
stop after
echo "[$(date +%T)] engine"
TRITONRAG_CONFIG=benchmarks/results/ttft/config-before.toml .venv/bin/python benchmarks/ttft_breakdown.py engine -c 8,16 --label engine \
   --json $B/engine.json 2>&1 | grep -v -E "^(INFO|WARNING|\(EngineCore)|it/s\]" | tail -20
echo "[$(date +%T)] session end"
