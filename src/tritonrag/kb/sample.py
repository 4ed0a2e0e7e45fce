"""The demo's corpus, found next to the checkout or through $TRITONRAG_DATA."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "TRITONRAG_DATA"


def sample_corpus() -> Path:
    """The demo's corpus, *Around the World in Eighty Days*: $TRITONRAG_DATA, or shared/data near the checkout."""
    candidates = []
    if os.environ.get(DATA_ENV):
        candidates.append(Path(os.environ[DATA_ENV]) / "eighty_days")
    here = Path.cwd().resolve()
    candidates += [parent / "shared" / "data" / "eighty_days" for parent in (here, *here.parents)]
    for candidate in candidates:
        if (candidate / "around_the_world.txt").exists():
            return candidate
    raise FileNotFoundError(
        "the sample corpus (shared/data/eighty_days/around_the_world.txt) was not found next to this checkout; "
        f"set {DATA_ENV} to the folder holding eighty_days/, or index your own documents with "
        "`tritonrag ingest PATH...` (a folder of .txt/.md/.html/.pdf/.jsonl files)"
    )
