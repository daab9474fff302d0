// The page of `emollama serve`: uploads a clip to POST /v1/predict?stream=true and shows the server-sent
// events as they come (stages, the contact sheet, the reasoning token by token, then the result).
"use strict";

const $ = (id) => document.getElementById(id);
const STAGES = { upload: "Uploading", decoding: "Decoding the clip", faces: "Finding faces", transcript: "Transcribing the speech", encoders: "Encoding video and audio", scores: "Scoring the classes", generation: "Generating the reasoning" };

function authHeaders() {
  const t = $("token").value.trim();
  return t ? { Authorization: "Bearer " + t } : {};
}

async function describeModel() {
  try {
    const r = await fetch("/v1/model", { headers: authHeaders() });
    const m = await r.json();
    if (!r.ok) { $("model-line").textContent = (m.error && m.error.message) || "The model's description is not available."; return; }
    const mods = m.modalities.length ? m.modalities.join(" and ") : "text only";
    $("model-line").textContent = `Model: ${m.recipe_name} (${m.llm}; reads ${mods}; classes: ${m.labels.join(", ")}). Clips up to ${m.max_seconds} s and ${Math.round(m.max_upload_bytes / 1048576)} MB.`;
    $("url-row").hidden = !m.url_fetching;
  } catch (e) {
    $("model-line").textContent = "Could not reach the server: " + e;
  }
}

function setState(s) { document.body.dataset.state = s; $("go").disabled = s === "running"; }

function reset() {
  $("stages").replaceChildren();
  $("error").hidden = true;
  $("error").textContent = "";
  $("sheet-section").hidden = true;
  $("sheet").removeAttribute("src");
  $("result-section").hidden = true;
  $("label").textContent = "…";
  $("label-from").textContent = "";
  $("probs").replaceChildren();
  $("reasoning").textContent = "";
  $("transcript-out").textContent = "";
  $("timing").textContent = "";
  $("progress-section").hidden = false;
}

function showError(msg) {
  $("error").textContent = msg;
  $("error").hidden = false;
  setState("error");
}

function addStage(stage, detail) {
  for (const li of $("stages").children) li.classList.add("done");
  const li = document.createElement("li");
  li.dataset.stage = stage;
  li.textContent = (STAGES[stage] || stage) + (detail ? ": " + detail : "");
  $("stages").appendChild(li);
  if (stage === "generation") { $("result-section").hidden = false; $("reasoning").setAttribute("aria-busy", "true"); }
}

function showResult(line) {
  $("reasoning").setAttribute("aria-busy", "false");
  for (const li of $("stages").children) li.classList.add("done");
  if (!line.ok) { showError("The clip could not be used: " + line.error); return; }
  $("result-section").hidden = false;
  $("label").textContent = line.label || "(none named)";
  $("label-from").textContent = line.label_from === "reasoning" ? "(named by the reasoning)" : "(the most likely class)";
  const scores = Object.entries(line.scores || {}).sort((a, b) => b[1] - a[1]);
  scores.forEach(([name, p], i) => {
    const li = document.createElement("li");
    if (i === 0) li.className = "top";
    const pct = (100 * p).toFixed(1);
    const n = document.createElement("span"); n.className = "name"; n.textContent = name;
    const track = document.createElement("span"); track.className = "track"; track.setAttribute("aria-hidden", "true");
    const fill = document.createElement("span"); fill.className = "fill"; fill.style.width = pct + "%"; fill.style.display = "block";
    track.appendChild(fill);
    const v = document.createElement("span"); v.className = "value"; v.textContent = pct + "%";
    li.setAttribute("aria-label", `${name}: ${pct} percent`);
    li.append(n, track, v);
    $("probs").appendChild(li);
  });
  if (line.reasoning !== undefined) $("reasoning").textContent = line.reasoning;
  else $("reasoning").textContent = "(this server predicts class scores only)";
  const src = { given: "given", asr: "speech-to-text", none: "none" }[line.transcript_source] || "";
  $("transcript-out").textContent = line.transcript ? `${line.transcript} (${src})` : "(no transcript)";
  const t = line.timings || {};
  $("timing").textContent = `Modalities: ${(line.modalities || []).join(", ") || "none"}. ${line.duration_s ? line.duration_s.toFixed(1) + " s clip, " : ""}${(t.total_s || 0).toFixed(2)} s to predict.`;
  setState("done");
}

function handle(event, data) {
  let d;
  try { d = JSON.parse(data); } catch (e) { return; }
  if (event === "stage") addStage(d.stage, d.detail);
  else if (event === "sheet") { $("sheet").src = d.png; $("sheet-section").hidden = false; }
  else if (event === "token") { $("result-section").hidden = false; $("reasoning").textContent += d.text; }
  else if (event === "result") showResult(d);
  else if (event === "error") showError(d.message);
}

async function submit(ev) {
  ev.preventDefault();
  const file = $("file").files[0];
  const url = $("url").value.trim();
  const transcript = $("transcript").value;
  if (!file && !url) { reset(); showError("Choose a video or audio file first."); $("file").focus(); return; }
  reset();
  setState("running");
  addStage("upload", file ? `sending ${file.name} (${(file.size / 1048576).toFixed(1)} MB)` : "asking the server to fetch the URL");
  let body, headers = authHeaders();
  if (file) {
    body = new FormData();
    body.append("file", file);
    if (transcript.trim()) body.append("transcript", transcript);
  } else {
    body = JSON.stringify({ url, transcript: transcript.trim() || null });
    headers["Content-Type"] = "application/json";
  }
  let r;
  try {
    r = await fetch("/v1/predict?stream=true", { method: "POST", body, headers });
  } catch (e) { showError("The request failed: " + e); return; }
  if (!r.ok) {
    let msg = `${r.status} ${r.statusText}`;
    try { const j = await r.json(); if (j.error) msg = `${r.status}: ${j.error.message}`; } catch (e) { /* not JSON */ }
    showError(msg);
    return;
  }
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let at;
    while ((at = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, at);
      buf = buf.slice(at + 2);
      let event = "message", data = [];
      for (const l of block.split("\n")) {
        if (l.startsWith("event:")) event = l.slice(6).trim();
        else if (l.startsWith("data:")) data.push(l.slice(5).replace(/^ /, ""));
      }
      if (data.length) handle(event, data.join("\n"));
    }
  }
  if (document.body.dataset.state === "running") showError("The connection closed before the result.");
}

function setupDrop() {
  const drop = $("drop");
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("drop", (e) => { if (e.dataTransfer.files.length) $("file").files = e.dataTransfer.files; });
}

document.addEventListener("DOMContentLoaded", () => {
  $("form").addEventListener("submit", submit);
  $("token").addEventListener("change", describeModel);
  setupDrop();
  describeModel();
});
