"""Start a tritonserver on REPO and profile the retriever with perf_analyzer (gRPC) at the given levels."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path.cwd() / "benchmarks"))
import perf_models

from tritonrag.deploy.server import Ports, TritonServer
from tritonrag.settings import load_settings

repo, out, levels = Path(sys.argv[1]), Path(sys.argv[2]), tuple(int(c) for c in sys.argv[3].split(","))
out.mkdir(parents=True, exist_ok=True)
settings = load_settings()
server = TritonServer(repo, settings.home, Ports.choose(0, 0, 0), log_file=out / "tritonserver.log",
                      models=("retriever",))
server.start(300)
try:
    rows = perf_models.run(out, server.http_url, server.grpc_url, False, ["retriever"], levels, ("grpc",))
finally:
    server.stop()
for r in rows:
    print(json.dumps({k: r.get(k) for k in ("concurrency", "infer_per_s", "p50_ms", "server_queue_ms",
                                             "server_infer_ms", "measurement")}))
