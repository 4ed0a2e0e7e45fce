#!/bin/bash
run() {  # name tree config
  cd $2 && TRITONRAG_CONFIG=$3 PYTHONPATH=$2/src:$2/client /work/main/.venv/bin/python benchmarks/orchestration_overhead.py --quick --out /tmp/overhead/$1 > /tmp/overhead/$1.log 2>&1
  echo "$1 rc=$? $(date +%T)"
}
run afterall4 /tmp/afterR /tmp/ovh/config-after.toml
run before4 /tmp/before /tmp/ovh/config.toml
run afterall5 /tmp/afterR /tmp/ovh/config-after.toml
run before5 /tmp/before /tmp/ovh/config.toml
