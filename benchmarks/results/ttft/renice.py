"""renice.py SERVE_PID NICE: set every thread of the vLLM engine-core and worker processes under SERVE_PID to NICE
(root may lower it again; this is the measurement's switch, the product's is [generator] cpu_nice)."""
import os
import sys
from pathlib import Path

from tritonrag.deploy.processes import descendant_pids, thread_ids

root, nice = int(sys.argv[1]), int(sys.argv[2])
pids = [p for p in descendant_pids(root) if Path(f"/proc/{p}/comm").read_text().startswith("VLLM::")]
for pid in pids:
    for tid in thread_ids(pid):
        os.setpriority(os.PRIO_PROCESS, tid, nice)
print("reniced", {p: Path(f"/proc/{p}/comm").read_text().strip() for p in pids}, "to", nice,
      {os.getpriority(os.PRIO_PROCESS, t) for p in pids for t in thread_ids(p)})
