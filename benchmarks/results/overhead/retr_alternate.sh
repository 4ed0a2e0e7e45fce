#!/bin/bash
[ "$INSIDE" = 1 ] || exit 0
# R0 = HEAD + the orchestration change (retriever as in HEAD), R1 = + metrics off the request path, R2 = R1 + 2 instances
export TRITONRAG_CONFIG=/tmp/ovh/standin_idx.toml
run() {  # name tree repo
  cd $2 && PYTHONPATH=$2/src:$2/client /work/main/.venv/bin/python /tmp/ovh/retr_ab.py $3 /tmp/retr/$1 $LEVELS > /tmp/retr/$1.log 2>&1
  echo "$1 rc=$? $(date +%T)"; tail -${NLEVELS} /tmp/retr/$1.log
}
inproc() {
  cd /tmp/after && PYTHONPATH=/tmp/after/src /work/main/.venv/bin/python -c "
import sys; sys.path.insert(0, 'benchmarks')
from component_limits import retriever_limit, query_vectors
for r in retriever_limit(query_vectors(), 4, 5.0): print(r)"
}
for i in $ROUNDS; do
  inproc
  run R0-$i /tmp/after /tmp/after/model_repository
  run R1-$i /tmp/afterR /tmp/afterR/model_repository
  run R2-$i /tmp/afterR /tmp/ovh/repo-r2
done
