"""`ddlm serve DIR [--port P] [--host H]`: the local page that shows generation step by step (ddlm/serve)."""

from __future__ import annotations

import sys

from .cli_common import _add_device, _add_threads, _device, _positive_int, _threads
from .errors import UserError

SERVE_THREADS = 1  # torch threads: sampling one sample is many small forward passes (see cli_sample)


def cmd_serve(args) -> int:
    from .pipeline import SequenceModel
    from .serve.server import make_server

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in 0..65535 (0 = any free port), got {args.port}")
    _threads(args.threads, SERVE_THREADS)
    model = SequenceModel.from_pretrained(args.model, map_location=_device(args))
    try:
        server = make_server(model, args.host, args.port, max_jobs=args.max_jobs, name=str(args.model))
    except OSError as e:
        raise UserError(f"cannot listen on {args.host}:{args.port} ({e.strerror or e}); choose another --port "
                        "(0 picks a free one)") from None
    host = server.server_address[0]
    print(f"ddlm serve: {server.app.kind} model {args.model} on http://{host}:{server.server_port}/ "
          "(Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def register(sub) -> None:
    """Add `ddlm serve` to the subcommands `sub`."""
    from .serve.server import MAX_JOBS

    s = sub.add_parser("serve", help="a local web page that shows the model generating, step by step",
                       description="Serve one page: type a prompt (a puzzle for a Sudoku model), choose sampler, "
                                   "planner, steps, temperature and seed, and watch every step; a slider scrubs "
                                   "back through them afterwards.")
    s.add_argument("model", metavar="DIR", help="run directory or save_pretrained directory")
    s.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                   "only)")
    s.add_argument("--max-jobs", type=_positive_int, default=MAX_JOBS, help="generations at once (default "
                   f"{MAX_JOBS}; more requests get 429 busy)")
    _add_threads(s, SERVE_THREADS)
    _add_device(s)
    s.set_defaults(func=cmd_serve)
