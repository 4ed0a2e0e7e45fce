"""Pool the a and b runs of each configuration in raw/ into one row per configuration and level (run from the
repository root: .venv/bin/python benchmarks/results/ttft/pool.py engine engine-2; extra names are single runs)."""

import json
import sys

sys.path.insert(0, "benchmarks")
from common import markdown_table
from ttft_breakdown import Sample, summarize

B = "benchmarks/results/ttft/raw/"
configs = {"before (threads 0, nice 0)": ["threads0-nice0-a", "threads0-nice0-b"],
           "nice only (threads 0, nice 10)": ["threads0-nice10-a", "threads0-nice10-b"],
           "threads only (threads 1, nice 0)": ["threads1-nice0-a", "threads1-nice0-b"],
           "after (threads 1, nice 10)": ["threads1-nice10-a", "threads1-nice10-b"]}
for extra in sys.argv[1:]:
    configs[extra] = [extra]
rows = []
for c in (8, 16):
    for name, files in configs.items():
        samples, seconds = [], 0.0
        for f in files:
            for level in json.load(open(B + f + ".json")):
                if level["row"]["concurrency"] == c:
                    samples += [Sample(**s) for s in level["samples"]]
                    seconds += level["row"]["seconds"]
        rows.append(summarize(name, c, seconds, samples))
cols = ["system", "concurrency", "requests", "req_per_s", "ttft_p50_ms", "ttft_p90_ms", "embed_p50_ms",
        "retrieve_p50_ms", "first_token_p50_ms", "to_first_token_p50_ms", "other_p50_ms", "other_over_1s"]
print(markdown_table(rows, cols))
