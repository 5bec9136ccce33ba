"""Record the golden sampling outputs: python tests/sampling/record_golden.py

Run it only when a change of the samplers' output is intended (and say so in the commit); the golden test
then pins the new outputs. `--machine` adds the transformer cases as this machine's CPU kernels run them, for
its CPU capability only (see record_machine), and changes nothing else. Writes tests/sampling/fixtures/golden.pt:
{"results": {case: (tokens as lists, nfe)}, "weights": {family: ([(key, shape)], flat float32 values)}}.
"""

import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from golden_cases import run_all  # noqa: E402

def record_machine():
    """The transformer cases on this machine's CPU kernels, with the fixture's weights, kept under
    "by_capability"[torch's CPU capability]: a tiny random transformer's near-tied confidences are ordered by the
    last bits of its float32 arithmetic, which differ between kernel sets (the fixture was recorded with one
    that is not AVX-512; on an AVX-512 machine the planned and routing cases came out otherwise, the samplers'
    code unchanged). The toy cases need no such record: their arithmetic is the same everywhere."""
    from test_golden import GOLDEN, _weights  # noqa: E402

    from golden_cases import SEEDS, net_cases, run_net_case  # noqa: E402

    torch.set_num_threads(1)
    cap = torch.backends.cpu.get_cpu_capability()
    runs = {}
    for case in net_cases():
        for seed in SEEDS:
            out = run_net_case(case, _weights(case[1]), torch.Generator().manual_seed(seed))
            runs[f"{case[0]}/seed{seed}"] = (out.tokens.cpu().tolist(), int(out.nfe))
    differ = {k: v for k, v in runs.items() if v != GOLDEN["results"][k]}
    GOLDEN.setdefault("by_capability", {})[cap] = differ
    path = HERE / "fixtures" / "golden.pt"
    torch.save(GOLDEN, path)
    print(f"{cap}: {len(differ)} of {len(runs)} transformer runs differ from the fixture's -> {path}")


if __name__ == "__main__" and sys.argv[1:] == ["--machine"]:
    record_machine()
elif __name__ == "__main__":
    results, weights = run_all()
    path = HERE / "fixtures" / "golden.pt"
    # tokens as plain lists (one zip entry per tensor would make the file 5x larger)
    plain = {k: (t.tolist(), nfe) for k, (t, nfe) in results.items()}
    flat = {f: ([(k, tuple(v.shape)) for k, v in w.items()], torch.cat([v.flatten().float() for v in w.values()]))
            for f, w in weights.items()}
    torch.save({"results": plain, "weights": flat}, path)
    print(f"{len(results)} runs -> {path} ({path.stat().st_size // 1024} KiB)")
