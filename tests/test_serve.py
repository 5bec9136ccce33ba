"""`ddlm serve`: a server on a free port in a thread, hit with urllib. The streamed final text is generate's for
the same seed, the steps only ever unmask, Sudoku boards are evaluate_sudoku's, bad parameters get 400 with one
line of JSON, a busy server 429, a closed connection stops its generation, and the page and its assets come
with their content types."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ddlm import SequenceModel
from ddlm.serve.server import make_server, molecule_svg

ROOT = Path(__file__).resolve().parents[1]
PUZZLE = "054021000009000005020600000086193000400000300103004000000000708000308059068005010"


def _start(model, **kw):
    server = make_server(model, port=0, **kw)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


@pytest.fixture(scope="module")
def text_server(tiny_run):
    model = SequenceModel.from_pretrained(tiny_run[0])
    server, url = _start(model)
    yield model, url
    server.shutdown()
    server.server_close()


def _post(url, body) -> urllib.request.Request:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return urllib.request.Request(url + "/api/generate", data=data, headers={"Content-Type": "application/json"})


def _lines(url, body) -> list[dict]:
    with urllib.request.urlopen(_post(url, body), timeout=60) as r:
        assert r.headers["Content-Type"] == "application/x-ndjson"
        return [json.loads(line) for line in r.read().decode().splitlines()]


def test_streamed_final_text_is_generate_for_the_same_seed(text_server):
    model, url = text_server
    msgs = _lines(url, {"prompt": "And", "n": 2, "length": 16, "steps": 8, "seed": 5, "sampler": "ancestral"})
    expected = model.generate(n=2, length=16, steps=8, seed=5, prompt="And", sampler="ancestral")
    final = msgs[-1]
    assert final["type"] == "final" and final["texts"] == expected.texts and final["seed"] == 5
    assert ["".join(row["tokens"]) for row in final["rows"]] == expected.texts  # what the page shows
    assert [m["type"] for m in msgs[:-1]] == ["step"] * (len(msgs) - 1) and len(msgs) >= 3
    for before, after in zip(msgs, msgs[1:]):  # a position once shown stays shown, with the same token
        for rb, ra in zip(before["rows"], after["rows"]):
            for i, m in enumerate(rb["masked"]):
                assert m or (not ra["masked"][i] and ra["tokens"][i] == rb["tokens"][i])
                assert ra["new"][i] == int(bool(m and not ra["masked"][i]))
    assert final["nfe"] == expected.nfe


@pytest.mark.parametrize("body, message", [
    ({"steps": -1}, "steps must be a positive whole number"),
    ({"n": 100}, "n must be at most 8"),
    ({"colour": "red"}, "unknown parameter 'colour'"),
    ({"temperature": "hot"}, "temperature must be a number"),
    ({"sampler": "planned", "planner": "nope"}, "unknown planner 'nope'"),
    ({"sampler": "routing"}, "routing"),
    (b"{not json", "must be JSON"),
    ([1, 2], "must be a JSON object"),
])
def test_bad_parameters_get_400_with_one_line(text_server, body, message):
    _, url = text_server
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(_post(url, body), timeout=30)
    assert e.value.code == 400
    text = e.value.read().decode()
    assert text.count("\n") == 1 and "Traceback" not in text
    assert message in json.loads(text)["error"]


def test_page_and_assets_with_their_content_types(text_server):
    _, url = text_server
    for path, ctype, marker in [("/", "text/html", '<script src="/static/app.js">'),
                                ("/static/app.js", "text/javascript", "/api/generate"),
                                ("/static/style.css", "text/css", ".tok.mask")]:
        with urllib.request.urlopen(url + path, timeout=10) as r:
            assert r.headers["Content-Type"].split(";")[0] == ctype
            assert marker in r.read().decode()
    with urllib.request.urlopen(url + "/api/info", timeout=10) as r:
        info = json.loads(r.read())
    assert info["kind"] == "text" and "planned" in info["samplers"] and "top_margin" in info["planners"]
    for missing in ("/nothing", "/api/molecule.svg?smiles=CCO"):  # a text model draws no molecules
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url + missing, timeout=10)
        assert e.value.code == 404


def test_busy_server_says_429_and_a_closed_connection_stops_the_generation(tiny_run):
    model = SequenceModel.from_pretrained(tiny_run[0])
    calls = []

    def slow(module, inputs):  # every network call takes 0.1 s: 16 steps would take 1.6 s
        calls.append(1)
        time.sleep(0.1)

    model.backbone.register_forward_pre_hook(slow)
    server, url = _start(model, max_jobs=1)
    try:
        first = urllib.request.urlopen(_post(url, {"length": 16, "steps": 16, "seed": 0}), timeout=30)
        assert json.loads(first.readline())["type"] == "step"
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(_post(url, {"length": 16, "steps": 2}), timeout=30)
        assert e.value.code == 429 and "busy" in json.loads(e.value.read())["error"]
        first.close()  # the page went away
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the slot comes back once the generation has stopped
            if server.app.jobs.acquire(blocking=False):
                server.app.jobs.release()
                break
            time.sleep(0.05)
        else:
            pytest.fail("the generation kept its slot after the connection closed")
        stopped_at = len(calls)
        assert stopped_at < 16
        time.sleep(0.3)
        assert len(calls) == stopped_at  # nothing runs any more
    finally:
        server.shutdown()
        server.server_close()


def test_sudoku_model_streams_the_board_of_evaluate_sudoku():
    from ddlm.tasks.sudoku.board import format_board, parse_board
    from ddlm.tasks.sudoku.solve import evaluate_sudoku

    model = SequenceModel.from_pretrained(ROOT / "models" / "sudoku")
    server, url = _start(model)
    try:
        with urllib.request.urlopen(url + "/api/info", timeout=10) as r:
            assert json.loads(r.read())["kind"] == "sudoku"
        msgs = _lines(url, {"puzzle": PUZZLE})
        board = evaluate_sudoku(model, parse_board(PUZZLE)[None])["boards"][0]
        assert msgs[-1]["texts"] == [format_board(board, pretty=False)]
        assert "".join(msgs[-1]["rows"][0]["tokens"]) == format_board(board, pretty=False)
        assert len(msgs) == PUZZLE.count("0") + 1  # one blank per step, then the final board
        assert all(sum(m["rows"][0]["new"]) == 1 for m in msgs[:-1])
        for body, message in (({"puzzle": "12"}, "81"), ({"puzzle": PUZZLE, "planner": "zz"}, "unknown planner"),
                              ({"puzzle": PUZZLE, "seed": -1}, "seed"), ({"puzzle": PUZZLE, "sampler": "ancestral"},
                                                                         "planned or remask")):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(_post(url, body), timeout=10)
            assert e.value.code == 400 and message in json.loads(e.value.read())["error"]
    finally:
        server.shutdown()
        server.server_close()


def test_molecule_svg_with_rdkit():
    pytest.importorskip("rdkit", reason="RDKit draws the molecules: pip install rdkit")
    svg = molecule_svg("c1ccccc1O")
    assert svg is not None and svg.lstrip().startswith(("<?xml", "<svg")) and "</svg>" in svg
    assert molecule_svg("not a molecule((") is None


def test_smiles_model_is_a_molecules_page_that_draws_with_rdkit(tiny_run):
    pytest.importorskip("rdkit", reason="RDKit draws the molecules: pip install rdkit")
    from ddlm.tasks.molecules.tokenizer import SmilesTokenizer

    mdlm = tiny_run[1]
    model = SequenceModel(mdlm.cfg, SmilesTokenizer.from_smiles(["CCO", "c1ccccc1O", "CC(=O)N"])).eval()
    server, url = _start(model)
    try:
        with urllib.request.urlopen(url + "/api/info", timeout=10) as r:
            assert json.loads(r.read())["kind"] == "molecules"
        msgs = _lines(url, {"length": 8, "steps": 4, "seed": 1})
        assert msgs[-1]["texts"] == model.generate(n=1, length=8, steps=4, seed=1).texts
        with urllib.request.urlopen(url + "/api/molecule.svg?smiles=CC(%3DO)N", timeout=10) as r:
            assert r.headers["Content-Type"] == "image/svg+xml" and b"</svg>" in r.read()
        with pytest.raises(urllib.error.HTTPError) as e:  # not a molecule: no drawing, the page shows none
            urllib.request.urlopen(url + "/api/molecule.svg?smiles=C(((", timeout=10)
        assert e.value.code == 404
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow  # a `python -m ddlm serve` process: ~10 s on 2 busy cores
def test_cli_serves_until_ctrl_c_and_refuses_a_busy_port(tiny_run):
    import signal
    import socket
    import subprocess
    import sys

    from cli_harness import run_cli

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        status, _, err = run_cli(["serve", str(tiny_run[0]), "--port", str(taken.getsockname()[1])])
    assert status == 2 and "cannot listen" in err and len(err.strip().splitlines()) == 1
    # SIGINT at its default in the child: a suite started in the background (`make test &`) ignores SIGINT, the
    # child inherits SIG_IGN, and Python then installs no KeyboardInterrupt handler (POSIX: a background job
    # is not stopped by Ctrl-C), so the server would rightly ignore the signal this test sends
    proc = subprocess.Popen([sys.executable, "-m", "ddlm", "serve", str(tiny_run[0]), "--port", "0"],
                            stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = proc.stderr.readline()  # "ddlm serve: text model DIR on http://127.0.0.1:PORT/ (Ctrl-C stops)"
        address = line.split(" on ")[1].split()[0]
        with urllib.request.urlopen(address + "api/info", timeout=30) as r:
            assert json.loads(r.read())["kind"] == "text"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    finally:
        proc.kill()
