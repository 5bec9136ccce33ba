"""Record the golden sampling outputs: python tests/sampling/record_golden.py

Run it only when a change of the samplers' output is intended (and say so in the commit); the golden test
then pins the new outputs. Writes tests/sampling/fixtures/golden.pt: {"results": {case: (tokens as lists, nfe)},
"weights": {family: ([(key, shape)], flat float32 values)}}.
"""

import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from golden_cases import run_all  # noqa: E402

if __name__ == "__main__":
    results, weights = run_all()
    path = HERE / "fixtures" / "golden.pt"
    # tokens as plain lists (one zip entry per tensor would make the file 5x larger)
    plain = {k: (t.tolist(), nfe) for k, (t, nfe) in results.items()}
    flat = {f: ([(k, tuple(v.shape)) for k, v in w.items()], torch.cat([v.flatten().float() for v in w.values()]))
            for f, w in weights.items()}
    torch.save({"results": plain, "weights": flat}, path)
    print(f"{len(results)} runs -> {path} ({path.stat().st_size // 1024} KiB)")
