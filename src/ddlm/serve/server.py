"""`ddlm serve DIR`: a local web page that shows a model generating, step by step.

Standard library only (`http.server.ThreadingHTTPServer`): one thread per connection, no framework, the page
and its assets shipped in `ddlm/serve/static/`. Endpoints:

    GET  /                     the page (static/index.html), /static/app.js, /static/style.css
    GET  /api/info             what the page offers: kind (text | sudoku | molecules), samplers, planners,
                               defaults and limits
    POST /api/generate         JSON parameters -> a stream of JSON lines (application/x-ndjson), one per sampling
                               step (`sampling.stream.Step`), then {"type": "final", ...}
    GET  /api/molecule.svg?smiles=S   the molecule drawn by RDKit (SMILES models with RDKit installed; else 404)

Bad parameters get a 400 with one line of JSON ({"error": "..."}), never a traceback. At most `max_jobs`
generations run at once (429 beyond); a client that goes away (BrokenPipe) cancels its generation at the next
step, because the stream's worker blocks on a queue of a few steps that nobody reads any more.
"""

from __future__ import annotations

import json
import math
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from ..errors import UserError

STATIC = Path(__file__).with_name("static")
ASSETS = {"/": ("index.html", "text/html; charset=utf-8"),
          "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/static/style.css": ("style.css", "text/css; charset=utf-8")}
LIMITS = {"n": 8, "length": 1024, "steps": 1024}  # per request: keeps one page from holding the machine
MAX_BODY = 16_384  # bytes of a request's JSON
MAX_JOBS = 2  # generations at once


class App:
    """The model and what the page may ask of it."""

    def __init__(self, model, max_jobs: int = MAX_JOBS, name: str = "model"):
        self.model, self.name = model, name
        self.kind = model_kind(model)
        self.jobs = threading.BoundedSemaphore(max_jobs)

    def info(self) -> dict:
        from ..sampling.planners import planner_names

        m, sc = self.model, self.model.cfg.sample
        info = {"name": self.name, "kind": self.kind, "family": m.family.name, "context": m.cfg.model.max_len,
                "samplers": list(m.family.samplers), "planners": list(planner_names()), "limits": LIMITS,
                "defaults": {"sampler": sc.sampler, "planner": sc.planner, "steps": min(sc.steps, LIMITS["steps"]),
                             "temperature": sc.temperature, "length": min(m.cfg.model.max_len, LIMITS["length"]),
                             "n": 1, "seed": 0}}
        if self.kind == "sudoku":
            from ..tasks.sudoku.board import EXAMPLE_CSV, format_board, load_csv

            puzzles, _ = load_csv(EXAMPLE_CSV, limit=1)
            # steps None: one blank per step (solve_puzzles' default)
            info["defaults"].update(puzzle=format_board(puzzles[0], pretty=False), planner="top_margin", steps=None)
            info["samplers"], info["defaults"]["sampler"] = ["planned", "remask"], "planned"
        return info

    def stream(self, params: dict):
        """A StepStream for the request's parameters, and a function turning a Step into a JSON object;
        UserError for a bad parameter."""
        if self.kind == "sudoku":
            return self._sudoku(params)
        p = _params(params, {"prompt": str, "n": int, "length": int, "steps": int, "sampler": str, "planner": str,
                             "temperature": float, "seed": int})
        for key, cap in LIMITS.items():
            if key in p and p[key] > cap:
                raise UserError(f"{key} must be at most {cap} here, got {p[key]}")
        if p.get("sampler") != "planned":
            p.pop("planner", None)
        stream = self.model.stream(batch_size=LIMITS["n"], **p)
        cache: dict = {}

        def piece(token: int) -> str:
            if token not in cache:
                cache[token] = self.model.decode([token])
            return cache[token]

        return stream, lambda step: step_json(step, piece)

    def _sudoku(self, params: dict):
        from ..tasks.sudoku.board import parse_board
        from ..tasks.sudoku.stream import stream_solve
        from ..tasks.sudoku.solve import _planner

        p = _params(params, {"puzzle": str, "steps": int, "sampler": str, "planner": str, "seed": int,
                             "temperature": float, "n": int, "length": int, "prompt": str})
        if "steps" in p and p["steps"] > LIMITS["steps"]:
            raise UserError(f"steps must be at most {LIMITS['steps']} here, got {p['steps']}")
        sampler = p.get("sampler", "planned")
        if sampler not in ("planned", "remask"):
            raise UserError(f"a Sudoku model solves with sampler planned or remask, not {sampler!r}")
        puzzle = parse_board(p.get("puzzle", ""))
        _planner(p.get("planner", "top_margin"), None)  # checked here: a 400, not a broken stream
        if not 0 <= p.get("seed", 0) < 2**63:
            raise UserError(f"seed must be a whole number in 0..2^63 - 1, got {p['seed']}")
        if not 0 <= p.get("temperature", 0.0) <= 100:
            raise UserError(f"temperature must be in [0, 100], got {p['temperature']}")
        stream = stream_solve(self.model, puzzle, planner=p.get("planner", "top_margin"), steps=p.get("steps"),
                              seed=p.get("seed", 0), temperature=p.get("temperature", 0.0), sampler=sampler,
                              remask={} if sampler == "remask" else None)
        return stream, lambda step: step_json(step, lambda t: str(t + 1) if 0 <= t < 9 else "")


def model_kind(model) -> str:
    """sudoku (a model `check_sudoku_model` accepts), molecules (the SMILES tokenizer) or text."""
    from ..tasks.sudoku.solve import check_sudoku_model

    try:
        check_sudoku_model(model)
        return "sudoku"
    except UserError:
        pass
    return "molecules" if getattr(model.tokenizer, "kind", "") == "smiles" else "text"


def _params(params: dict, types: dict) -> dict:
    """The known, non-empty parameters with their types checked (one-line UserError otherwise)."""
    if not isinstance(params, dict):
        raise UserError("the request body must be a JSON object of parameters")
    unknown = sorted(set(params) - set(types))
    if unknown:
        raise UserError(f"unknown parameter {unknown[0]!r}; known: {', '.join(sorted(types))}")
    out = {}
    for key, kind in types.items():
        value = params.get(key)
        if value is None or value == "":
            continue
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is float and not math.isfinite(value)):
            what = {float: "a number", int: "a whole number", str: "a text"}[kind]
            raise UserError(f"{key} must be {what}, got {value!r}")
        out[key] = value
    return out


def step_json(step, piece) -> dict:
    """A Step as the page reads it: per row the token texts, masked / new flags (0/1) and confidence (or null)."""
    rows = []
    conf = step.confidence
    for k in range(step.tokens.shape[0]):
        masked = step.masked[k].tolist()
        tokens = ["" if m else piece(int(t)) for t, m in zip(step.tokens[k].tolist(), masked)]
        c = [None if (v != v) else round(v, 3) for v in conf[k].tolist()] if conf is not None else None  # NaN: none
        rows.append({"tokens": tokens, "masked": [int(m) for m in masked],
                     "new": [int(x) for x in step.new[k].tolist()], "conf": c})
    out = {"type": "final" if step.final else "step", "index": step.index, "nfe": step.nfe,
           "seconds": round(step.seconds, 4), "rows": rows}
    if step.final:
        out["texts"] = step.texts
        seed = getattr(step.output, "seed", None)
        if seed is not None:
            out["seed"] = seed
    return out


class Handler(BaseHTTPRequestHandler):
    server_version = "ddlm-serve"
    app: App = None  # set on the subclass `make_server` builds

    def log_message(self, fmt, *args):  # no line per request on stderr
        pass

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj) -> None:
        self._send(status, (json.dumps(obj) + "\n").encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": " ".join(str(message).split())})  # one line

    def do_GET(self):
        url = urlparse(self.path)
        if url.path in ASSETS:
            name, ctype = ASSETS[url.path]
            return self._send(200, (STATIC / name).read_bytes(), ctype)
        if url.path == "/api/info":
            return self._json(200, self.app.info())
        if url.path == "/api/molecule.svg":
            svg = molecule_svg(parse_qs(url.query).get("smiles", [""])[0]) if self.app.kind == "molecules" else None
            if svg is None:
                return self._error(404, "no drawing (not a SMILES model, RDKit missing, or not a valid SMILES)")
            return self._send(200, svg.encode(), "image/svg+xml")
        self._error(404, f"no page {url.path}")

    def do_POST(self):
        if urlparse(self.path).path != "/api/generate":
            return self._error(404, f"no endpoint {self.path}")
        try:
            size = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return self._error(400, "Content-Length must be a number")
        if size > MAX_BODY:
            return self._error(413, f"the request body is over {MAX_BODY} bytes")
        try:
            params = json.loads(self.rfile.read(size) or b"{}")
        except (ValueError, UnicodeDecodeError):
            return self._error(400, "the request body must be JSON")
        if not self.app.jobs.acquire(blocking=False):
            return self._error(429, "busy: other generations are running; try again in a moment")
        try:
            try:
                stream, encode = self.app.stream(params)
            except UserError as e:
                return self._error(400, str(e))
            self._stream(stream, encode)
        finally:
            self.app.jobs.release()

    def _stream(self, stream, encode) -> None:
        """Send every step as a JSON line; a closed connection cancels the generation."""
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            for step in stream:
                self.wfile.write((json.dumps(encode(step)) + "\n").encode())
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page went away
        except UserError as e:  # found only while sampling: the stream has begun, so it ends with the reason
            self._try_write({"type": "error", "error": " ".join(str(e).split())})
        finally:
            stream.close()

    def _try_write(self, obj) -> None:
        try:
            self.wfile.write((json.dumps(obj) + "\n").encode())
        except OSError:
            pass


def molecule_svg(smiles: str, size: int = 320) -> str | None:
    """The molecule of `smiles` as SVG, or None (RDKit not installed, or not a valid SMILES)."""
    try:
        from rdkit import Chem, RDLogger
        from rdkit.Chem.Draw import rdMolDraw2D
    except ImportError:
        return None
    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles) if smiles else None
    if mol is None:
        return None
    drawer = rdMolDraw2D.MolDraw2DSVG(size, size)
    drawer.DrawMolecule(mol)
    drawer.FinishDrawing()
    return drawer.GetDrawingText()


def make_server(model, host: str = "127.0.0.1", port: int = 0, max_jobs: int = MAX_JOBS,
                name: str = "model") -> ThreadingHTTPServer:
    """A server for `model` (not started: call serve_forever); port 0 picks a free one (server.server_port)."""
    app = App(model, max_jobs, name)
    server = ThreadingHTTPServer((host, port), type("BoundHandler", (Handler,), {"app": app}))
    server.daemon_threads = True  # a connection still streaming never holds up the process's exit
    server.app = app
    return server
