// The ddlm serve page: read /api/info, POST /api/generate, draw each streamed step, scrub back afterwards.
// Plain JavaScript, no build step and no network beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
let info = null;        // /api/info
let frames = [];        // every step received: {index, nfe, seconds, rows: [{tokens, masked, new, conf}]}
let commits = [];       // Sudoku: per cell, the step indices at which it was committed (the fill order)
let controller = null;  // aborts the running request (Stop, or a new Generate)

function setState(state, text, isError) {
  document.body.dataset.state = state;
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("error", !!isError);
}

function option(select, values, chosen) {
  select.innerHTML = "";
  for (const v of values) {
    const o = document.createElement("option");
    o.value = o.textContent = v;
    select.appendChild(o);
  }
  if (values.includes(chosen)) select.value = chosen;
}

function confColour(c) {  // the model's probability of the committed token: red (low) to green (high)
  return `hsl(${Math.round(120 * c)}, 65%, 84%)`;
}

async function loadInfo() {
  info = await (await fetch("/api/info")).json();
  const d = info.defaults;
  $("model-name").textContent = "— " + info.name;
  $("model-about").textContent = `${info.family} ${info.kind} model, context ${info.context} tokens`;
  option($("sampler"), info.samplers, d.sampler);
  option($("planner"), info.planners, d.planner);
  $("steps").value = d.steps === null ? "" : d.steps;
  $("steps").placeholder = "one blank each";
  $("temperature").value = d.temperature;
  $("seed").value = d.seed;
  $("length").value = d.length;
  $("n").value = d.n;
  for (const k of ["steps", "length", "n"]) $(k).max = info.limits[k];
  const sudoku = info.kind === "sudoku";
  $("puzzle-box").hidden = !sudoku;
  $("prompt-box").hidden = sudoku;
  $("length-box").hidden = sudoku;
  $("n-box").hidden = sudoku;
  if (sudoku) $("puzzle").value = d.puzzle;
  plannerVisibility();
  setState("ready", "ready");
}

function plannerVisibility() {
  $("planner-box").hidden = !(info.kind === "sudoku" || $("sampler").value === "planned");
}

function params() {
  const num = (id) => ($(id).value === "" ? null : Number($(id).value));
  const p = {sampler: $("sampler").value, steps: num("steps"), temperature: num("temperature"), seed: num("seed")};
  if (!$("planner-box").hidden) p.planner = $("planner").value;
  if (info.kind === "sudoku") {
    p.puzzle = $("puzzle").value;
  } else {
    p.prompt = $("prompt").value;
    p.length = num("length");
    p.n = num("n");
  }
  return p;
}

function renderText(frame) {
  const out = $("output");
  out.innerHTML = "";
  frame.rows.forEach((row, k) => {
    const div = document.createElement("div");
    div.className = "sample";
    div.id = "sample-" + k;
    row.tokens.forEach((text, i) => {
      const span = document.createElement("span");
      span.className = "tok";
      if (row.masked[i]) {
        span.classList.add("mask");
        span.textContent = "_";
      } else {
        span.textContent = text;
        if (row.conf && row.conf[i] !== null) {
          span.style.background = confColour(row.conf[i]);
          span.title = `p = ${row.conf[i]}`;
        }
        if (row.new[i]) span.classList.add("new");
      }
      div.appendChild(span);
    });
    out.appendChild(div);
  });
}

function renderSudoku(frame, at) {
  const row = frame.rows[0];
  const table = document.createElement("table");
  table.className = "sudoku";
  table.id = "sample-0";
  for (let r = 0; r < 9; r++) {
    const tr = document.createElement("tr");
    for (let c = 0; c < 9; c++) {
      const i = 9 * r + c, td = document.createElement("td");
      const when = (commits[i] || []).filter((s) => s <= at);
      if (row.masked[i]) {
        td.className = "mask";
        td.textContent = "_";
      } else {
        td.textContent = row.tokens[i];
        if (!when.length && !(row.conf && row.conf[i] !== null)) td.className = "given";
        if (row.conf && row.conf[i] !== null) td.style.background = confColour(row.conf[i]);
        if (row.new[i]) td.classList.add("new");
        if (when.length) {  // the step that filled it: the fill order
          const o = document.createElement("span");
          o.className = "order";
          o.textContent = when[when.length - 1] + 1;
          td.appendChild(o);
        }
      }
      tr.appendChild(td);
    }
    table.appendChild(tr);
  }
  $("output").innerHTML = "";
  $("output").appendChild(table);
}

function show(k) {
  const f = frames[k];
  if (!f) return;
  if (info.kind === "sudoku") renderSudoku(f, f.index); else renderText(f);
  $("scrub").value = k;
  $("scrub-label").textContent = `${k + 1} / ${frames.length}` + (f.type === "final" ? " (final)" : "") +
    ` · NFE ${f.nfe} · ${f.seconds.toFixed(2)} s`;
}

function received(msg) {
  if (msg.type === "error") throw new Error(msg.error);
  frames.push(msg);
  if (info.kind === "sudoku" && msg.type === "step") {
    msg.rows[0].new.forEach((n, i) => { if (n) (commits[i] = commits[i] || []).push(msg.index); });
  }
  $("scrub").max = frames.length - 1;
  show(frames.length - 1);
  if (msg.type === "final") {
    const seed = msg.seed !== undefined ? `, seed ${msg.seed}` : "";
    setState("done", `done: ${frames.length - 1} steps, NFE ${msg.nfe}, ${msg.seconds.toFixed(2)} s${seed}`);
    if (info.kind === "molecules") drawMolecule(msg.texts[0]);
  } else {
    setState("running", `step ${msg.index + 1} · NFE ${msg.nfe} · ${msg.seconds.toFixed(2)} s`);
  }
}

async function drawMolecule(smiles) {
  const r = await fetch("/api/molecule.svg?smiles=" + encodeURIComponent(smiles));
  $("molecule").innerHTML = r.ok ? await r.text() : "";
}

async function generate(event) {
  event.preventDefault();
  if (controller) controller.abort();
  controller = new AbortController();
  frames = [];
  commits = [];
  $("molecule").innerHTML = "";
  $("scrub").disabled = true;
  $("stop").disabled = false;
  setState("running", "starting…");
  try {
    const r = await fetch("/api/generate", {method: "POST", body: JSON.stringify(params()),
      headers: {"Content-Type": "application/json"}, signal: controller.signal});
    if (!r.ok) {
      const body = await r.json().catch(() => ({error: r.statusText}));
      throw new Error(body.error || r.statusText);
    }
    const reader = r.body.getReader(), decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let nl;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        if (line.trim()) received(JSON.parse(line));
      }
    }
    if (document.body.dataset.state === "running") setState("stopped", "the stream ended early", true);
  } catch (e) {
    if (e.name === "AbortError") setState("stopped", "stopped");
    else setState("error", "error: " + e.message, true);
  } finally {
    $("stop").disabled = true;
    $("scrub").disabled = frames.length === 0;
  }
}

$("controls").addEventListener("submit", generate);
$("stop").addEventListener("click", () => controller && controller.abort());
$("scrub").addEventListener("input", () => show(Number($("scrub").value)));
$("sampler").addEventListener("change", plannerVisibility);
loadInfo().catch((e) => setState("error", "cannot read /api/info: " + e.message, true));
