#!/bin/bash
# before = HEAD (/tmp/before), after = HEAD + this change (/tmp/after), after-np = after with [rag] build_prompt_in_process = false
run() {  # name tree config
  cd $2 && TRITONRAG_CONFIG=$3 PYTHONPATH=$2/src:$2/client /work/main/.venv/bin/python benchmarks/orchestration_overhead.py --quick --out /tmp/overhead/$1 > /tmp/overhead/$1.log 2>&1
  echo "$1 rc=$? $(date +%T)"
}
for i in 1 2; do
  run before$i /tmp/before /tmp/ovh/config.toml
  run after$i /tmp/after /tmp/ovh/config-after.toml
  run afternp$i /tmp/after /tmp/ovh/config-after-np.toml
done
INSIDE=1 LEVELS=4,16 NLEVELS=2 ROUNDS="1" /tmp/ovh/retr_alternate.sh > /tmp/ovh/retr_alternate.log 2>&1
echo "retr done $(date +%T)"
run before3 /tmp/before /tmp/ovh/config.toml
run afterall3 /tmp/afterR /tmp/ovh/config-after.toml
