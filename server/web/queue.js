// The queue page: polls GET /v1/health and GET /v1/jobs, the same API the add-on uses, with the same token.
// The token (if the server has one) is entered once, kept in sessionStorage (this tab only) and sent as an
// Authorization header. <video> cannot send headers, so with a token a finished video is fetched with the header
// and played from a blob: URL (without one, the <video> loads the endpoint itself). Everything from a job (owner,
// prompt, errors) is written as text, never as HTML. A running job's live preview (GET /v1/jobs/{id}/preview: its
// frames side by side) is fetched with the same header whenever its preview_step moves, and played frame by frame
// on a canvas beside the progress bar.
"use strict";

const TOKEN_KEY = "sparsectrl-previs.token";
const POLL_MS = 1000;
const MAX_RETRY_MS = 5000;
const LIMIT = 100;
const PREVIEW_HEIGHT = 64; // CSS pixels; tiles are scaled up from latent size (width/8 x height/8)

let token = sessionStorage.getItem(TOKEN_KEY) || "";
let clockSkewMs = 0; // server clock minus this browser's clock, from the Date header
let timer = null;
let retryMs = POLL_MS;
const rows = new Map(); // job id -> {tr, cells, status}

class NeedToken extends Error {}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function authHeaders() {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function api(path) {
  const response = await fetch(path, { headers: authHeaders(), cache: "no-store" });
  const date = Date.parse(response.headers.get("Date") || "");
  if (!Number.isNaN(date)) clockSkewMs = date - Date.now();
  if (response.status === 401) throw new NeedToken();
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    body = null;
  }
  if (!response.ok) {
    const error = (body && body.error) || {};
    throw new ApiError(response.status, error.code || "http_" + response.status, error.message || response.statusText);
  }
  return body;
}

function $(id) {
  return document.getElementById(id);
}

function setConnection(state, text) {
  const el = $("connection");
  el.dataset.state = state;
  el.textContent = text;
}

function serverNow() {
  return (Date.now() + clockSkewMs) / 1000;
}

function formatSeconds(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return "—";
  s = Math.max(0, s);
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s - m * 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

function formatTime(t) {
  if (!t) return "—";
  const date = new Date(t * 1000);
  const today = date.toDateString() === new Date().toDateString();
  return today ? date.toLocaleTimeString() : date.toLocaleString();
}

function duration(job) {
  if (job.status === "queued") return `waiting ${formatSeconds(serverNow() - job.created_at)}`;
  if (job.started_at === null) return "—";
  const end = job.finished_at === null ? serverNow() : job.finished_at;
  return formatSeconds(end - job.started_at);
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function newRow(job) {
  const tr = el("tr");
  tr.dataset.jobId = job.id;
  const cells = {};
  for (const name of ["owner", "status", "progress", "prompt", "submitted", "duration", "error", "video"]) {
    cells[name] = el("td", name);
    tr.appendChild(cells[name]);
  }
  const bar = el("progress");
  cells.progress.append(bar, el("span", "steps"));
  cells.status.appendChild(el("span", "badge"));
  return { tr, cells, bar, status: null, preview: null };
}

function updateRow(row, job) {
  const { cells } = row;
  cells.owner.textContent = job.owner || "—";
  const badge = cells.status.firstChild;
  const status = job.cancel_requested && job.status === "running" ? "cancelling" : job.status;
  badge.textContent = status;
  badge.dataset.status = job.status;
  row.tr.dataset.status = job.status;
  row.bar.max = Math.max(1, job.progress.total);
  row.bar.value = job.progress.step;
  cells.progress.querySelector(".steps").textContent = `${job.progress.step}/${job.progress.total}`;
  updatePreview(row, job);
  const request = job.request || {};
  cells.prompt.textContent = request.prompt || "";
  cells.prompt.title = `${request.prompt || ""}\n${request.modality || ""}, ${request.num_frames} frames ` +
    `${request.width}×${request.height}, ${request.steps} steps, seed ${job.seed}\n${job.id}`;
  cells.submitted.textContent = formatTime(job.created_at);
  cells.duration.textContent = duration(job);
  cells.error.textContent = job.error ? `${job.error.code}: ${job.error.message}` : "";
  if (job.video_url && row.status !== "succeeded") {
    cells.video.replaceChildren(playButton(job));
  } else if (!job.video_url) {
    cells.video.replaceChildren();
  }
  row.status = job.status;
}

function updatePreview(row, job) {
  if (job.status !== "running") return stopPreview(row);
  if (job.preview_step === null || job.preview_step === undefined) return;
  if (!row.preview) {
    const canvas = el("canvas", "preview");
    canvas.title = "live preview: the clip as the model sees it now";
    row.cells.progress.appendChild(canvas);
    const fps = (job.request && job.request.fps) || 8;
    row.preview = { canvas, bitmap: null, frames: 1, frame: 0, step: null, loading: false };
    row.preview.timer = setInterval(() => drawPreview(row.preview), 1000 / fps);
  }
  if (row.preview.step !== job.preview_step && !row.preview.loading) loadPreview(row.preview, job.id);
}

async function loadPreview(preview, jobId) {
  preview.loading = true;
  try {
    const response = await fetch(`/v1/jobs/${jobId}/preview`, { headers: authHeaders(), cache: "no-store" });
    if (!response.ok) return; // not there yet, or the job went: the next poll tries again
    const bitmap = await createImageBitmap(await response.blob());
    if (preview.bitmap) preview.bitmap.close();
    preview.bitmap = bitmap;
    preview.frames = Math.max(1, parseInt(response.headers.get("X-Preview-Frames") || "1", 10));
    preview.step = parseInt(response.headers.get("X-Preview-Step") || "0", 10);
    preview.canvas.dataset.step = String(preview.step);
    preview.canvas.dataset.frames = String(preview.frames);
  } catch (e) {
    // a lost preview is not worth a word: the next poll fetches the next one
  } finally {
    preview.loading = false;
  }
}

function drawPreview(preview) {
  const { bitmap, canvas } = preview;
  if (!bitmap) return;
  const tileWidth = bitmap.width / preview.frames;
  const width = Math.round((PREVIEW_HEIGHT * tileWidth) / bitmap.height);
  if (canvas.width !== width) canvas.width = width;
  if (canvas.height !== PREVIEW_HEIGHT) canvas.height = PREVIEW_HEIGHT;
  preview.frame = (preview.frame + 1) % preview.frames;
  const context = canvas.getContext("2d");
  context.imageSmoothingEnabled = tileWidth < width; // latent-size tiles scaled up smoothly
  context.drawImage(bitmap, preview.frame * tileWidth, 0, tileWidth, bitmap.height, 0, 0, width, PREVIEW_HEIGHT);
  canvas.dataset.frame = String(preview.frame);
}

function stopPreview(row) {
  if (!row.preview) return;
  clearInterval(row.preview.timer);
  if (row.preview.bitmap) row.preview.bitmap.close();
  row.preview.canvas.remove();
  row.preview = null;
}

function playButton(job) {
  const button = el("button", "play", "▶ play");
  button.type = "button";
  button.addEventListener("click", () => loadVideo(button, job));
  return button;
}

async function loadVideo(button, job) {
  button.disabled = true;
  button.textContent = "loading…";
  const cell = button.parentElement;
  try {
    const video = el("video");
    video.controls = true;
    video.muted = true;
    video.loop = true;
    video.playsInline = true;
    video.preload = "auto";
    video.dataset.jobId = job.id;
    if (token) {
      // A <video> cannot send the Authorization header: fetch the MP4 with it, play it from memory.
      const response = await fetch(job.video_url, { headers: authHeaders() });
      if (response.status === 401) throw new NeedToken();
      if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
      video.src = URL.createObjectURL(await response.blob());
    } else {
      video.src = job.video_url; // no token on this server: the browser streams the endpoint itself
    }
    cell.replaceChildren(video);
    video.play().catch(() => {}); // autoplay may be refused; the controls are there
  } catch (e) {
    if (e instanceof NeedToken) return askForToken("The token was refused; enter it again.");
    button.disabled = false;
    button.textContent = "▶ retry";
    button.title = String(e.message || e);
  }
}

function render(health, jobs) {
  const tiny = health.model.tiny ? " (tiny random-weight model: videos are noise)" : "";
  $("server-info").textContent =
    `${health.model.name}${tiny} on ${health.device} · ${health.queue_length} waiting` +
    (health.running_job ? " · 1 running" : "");
  const tbody = document.querySelector("#jobs tbody");
  const seen = new Set();
  let previous = null;
  for (const job of jobs) {
    seen.add(job.id);
    let row = rows.get(job.id);
    if (!row) {
      row = newRow(job);
      rows.set(job.id, row);
    }
    updateRow(row, job);
    // Newest first, as the API lists them; rows keep their elements (a playing video is not reloaded).
    const expected = previous ? previous.nextSibling : tbody.firstChild;
    if (expected !== row.tr) tbody.insertBefore(row.tr, expected);
    previous = row.tr;
  }
  for (const [id, row] of rows) {
    if (!seen.has(id)) {
      const video = row.tr.querySelector("video");
      if (video && video.src.startsWith("blob:")) URL.revokeObjectURL(video.src);
      stopPreview(row);
      row.tr.remove();
      rows.delete(id);
    }
  }
  $("empty").hidden = jobs.length > 0;
}

function schedule(ms) {
  clearTimeout(timer);
  timer = setTimeout(poll, ms);
}

async function poll() {
  try {
    const [health, list] = await Promise.all([api("/v1/health"), api(`/v1/jobs?limit=${LIMIT}`)]);
    render(health, list.jobs);
    setConnection("live", `live · updated ${new Date().toLocaleTimeString()}`);
    retryMs = POLL_MS;
    schedule(POLL_MS);
  } catch (e) {
    if (e instanceof NeedToken) return askForToken(token ? "The token was refused; enter it again." : null);
    if (e instanceof ApiError) {
      setConnection("error", `the server refused: ${e.code}: ${e.message}`);
    } else {
      setConnection("down", `server unreachable, retrying in ${Math.round(retryMs / 1000)} s…`);
    }
    schedule(retryMs);
    retryMs = Math.min(retryMs * 2, MAX_RETRY_MS);
  }
}

function askForToken(reason) {
  clearTimeout(timer);
  setConnection("token", "waiting for the token");
  if (reason) $("token-reason").textContent = reason;
  $("token-form").hidden = false;
  $("token-input").focus();
}

function start() {
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    token = $("token-input").value.trim();
    $("token-input").value = "";
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token-form").hidden = true;
    $("forget-token").hidden = !token;
    poll();
  });
  $("forget-token").addEventListener("click", (event) => {
    event.preventDefault();
    sessionStorage.removeItem(TOKEN_KEY);
    token = "";
    location.reload();
  });
  $("forget-token").hidden = !token;
  poll();
}

start();
