// PixStream's web page: submits jobs, follows each over GET /v1/jobs/{id}/events (server-sent
// events; polling GET /v1/jobs/{id} only where the stream cannot be had), keeps a history in
// localStorage. Jobs older than the retention (24 h) are shown as EXPIRED without asking the
// server: their objects are gone, so there is nothing left to fetch.
"use strict";

const HISTORY_KEY = "pixstream.jobs";
const RETENTION_MS = 24 * 3600 * 1000;
const POLL_MS = 1000;
const TERMINAL = new Set(["completed", "failed"]);
const EXAMPLE_SPEC = {
  steps: [
    { id: "web", op: "resize", params: { width: 1024 } },
    { id: "webp", op: "convert", params: { format: "webp", quality: 80 }, input: "web" },
    { id: "thumb", op: "thumbnail", params: { size: 256 } },
  ],
};

const $ = (id) => document.getElementById(id);
const views = new Map(); // job id -> last GET /v1/jobs/{id} body, or {missing: true} on a 404
const live = new Map(); // job id -> {status, steps: Set} from the event stream
const following = new Set();
const presets = {};

function loadHistory() {
  try {
    const jobs = JSON.parse(localStorage.getItem(HISTORY_KEY) || "[]");
    return Array.isArray(jobs) ? jobs.filter((j) => j && typeof j.id === "string") : [];
  } catch {
    return [];
  }
}

function saveHistory(jobs) {
  localStorage.setItem(HISTORY_KEY, JSON.stringify(jobs.slice(0, 50)));
}

function isExpired(job) {
  return Date.now() - job.submittedAt >= RETENTION_MS;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function describeProblem(body, status) {
  if (body && typeof body === "object" && body.detail) {
    return `${body.title || "Error"} (${status}): ${body.detail}`;
  }
  return `Request failed with status ${status}`;
}

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

// The preview is the smallest image output (the thumbnail when there is one): a 180 px box
// never needs the full-size file, which can be tens of megapixels.
function previewOf(outputs) {
  let best = null;
  for (const [step, out] of Object.entries(outputs)) {
    if (!out.url || out.kind === "metadata" || !out.width || !out.height) continue;
    if (!best || out.width * out.height < best.out.width * best.out.height) best = { step, out };
  }
  return best;
}

// The placeholder of a job: the ThumbHash of its analyze output (kind "metadata"), decoded
// once per job by thumbhash.js into a data URL; null when the job has no such output.
const placeholders = new Map(); // job id -> data URL
function placeholderOf(id, outputs) {
  if (placeholders.has(id)) return placeholders.get(id);
  for (const out of Object.values(outputs)) {
    if (out.kind !== "metadata" || !out.data || !out.data.thumbhash) continue;
    const url = thumbHashDataURL(out.data.thumbhash);
    if (url) {
      placeholders.set(id, url);
      return url;
    }
  }
  return null;
}

// The preview, over its placeholder until the image has loaded (the placeholder alone for a
// job with no image output).
function previewFrame(preview, placeholder) {
  const frame = el("div", { class: `preview-frame ${preview ? "loading" : "alone"}` });
  if (placeholder) frame.append(el("img", { class: "placeholder", src: placeholder, alt: "", "aria-hidden": "true" }));
  if (!preview) return frame;
  const { step, out } = preview;
  const img = el("img", {
    class: "preview",
    src: out.url,
    alt: `preview: ${step}, ${out.width}×${out.height}`,
    width: String(out.width),
    height: String(out.height),
    loading: "lazy",
    decoding: "async",
  });
  const loaded = () => frame.classList.replace("loading", "loaded");
  img.addEventListener("load", loaded);
  if (img.complete && img.naturalWidth) loaded(); // a cached image is there at once
  frame.append(img);
  return frame;
}

// What the page knows: the record (GET) and, newer while the job runs, the stream's events.
function statusOf(job) {
  const view = views.get(job.id);
  if (view && view.missing) return "not-found";
  if (isExpired(job) || (view && view.expired)) return "expired";
  const seen = live.get(job.id);
  if (view && TERMINAL.has(view.status)) return view.status;
  if (seen && seen.status) return seen.status; // set by task.started, a step or the end
  return view ? view.status : "queued";
}

function progressBar(status, done, total) {
  const pct = total ? Math.round((100 * done) / total) : 0;
  const bar = el("div", {
    class: `bar ${status}`,
    role: "progressbar",
    "aria-valuemin": "0",
    "aria-valuemax": String(total),
    "aria-valuenow": String(done),
    "aria-label": `${status}: ${done} of ${total} steps`,
  });
  bar.append(el("span", { style: `width: ${status === "failed" ? 100 : pct}%` }));
  return bar;
}

function renderJob(job) {
  const view = views.get(job.id);
  const status = statusOf(job);
  const label = status === "not-found" ? "not found" : status;
  const head = el(
    "div",
    { class: "job-head" },
    el("span", { class: `badge ${status}` }, label),
    el("span", { class: "job-id" }, job.id),
    el("span", { class: "muted" }, `${job.file} · ${new Date(job.submittedAt).toLocaleString()}`),
  );
  const box = el("div", { class: `job ${status}`, "data-job": job.id }, head);
  if (status === "not-found") {
    box.append(el("div", { class: "muted" }, "No such job on this server (or not yours)."));
    return box;
  }
  if (status === "expired") {
    box.append(el("div", { class: "muted" }, "Outputs are past retention and no longer available."));
    return box;
  }
  if (!view) return box;
  const total = view.progress.steps_total;
  const seen = live.get(job.id);
  const done = Math.max(view.progress.steps_done, seen ? seen.steps.size : 0);
  head.append(progressBar(status, Math.min(done, total), total));
  head.append(el("span", { class: "muted" }, `${Math.min(done, total)}/${total} steps`));
  const preview = previewOf(view.outputs);
  const placeholder = placeholderOf(job.id, view.outputs);
  if (preview || placeholder) box.append(previewFrame(preview, placeholder));
  const downloads = el("ul", { class: "outputs" });
  for (const [step, out] of Object.entries(view.outputs)) {
    if (!out.url) {
      downloads.append(el("li", {}, `${step}: ${out.kind === "metadata" ? "metadata" : "expired"}`));
      continue;
    }
    const caption = `${step}: ${out.format} ${out.width}×${out.height}, ${formatBytes(out.bytes)}`;
    downloads.append(el("li", {}, el("a", { href: out.url, download: "", rel: "noopener" }, caption)));
  }
  if (downloads.childElementCount) box.append(downloads);
  if (view.errors.length) {
    const list = el("ul", { class: "errors" });
    for (const e of view.errors) {
      list.append(el("li", {}, `${e.step ? `step ${e.step}: ` : ""}${e.code}: ${e.message}`));
    }
    box.append(list);
  }
  return box;
}

function render() {
  const jobs = loadHistory();
  const list = $("jobs");
  list.replaceChildren();
  if (!jobs.length) {
    list.append(el("p", { class: "empty" }, "No jobs yet: submit an image."));
    return;
  }
  for (const job of jobs) list.append(renderJob(job));
}

// GET /v1/jobs/{id}: true when the job is still running (so worth following).
async function refresh(id) {
  const resp = await fetch(`/v1/jobs/${encodeURIComponent(id)}`);
  if (resp.status === 404) {
    views.set(id, { missing: true });
    render();
    return false;
  }
  if (!resp.ok) throw new Error(`GET /v1/jobs/${id}: ${resp.status}`);
  const view = await resp.json();
  views.set(id, view);
  render();
  return !(TERMINAL.has(view.status) || view.expired);
}

// Follow one job's event stream until its terminal event; resolves false when the stream
// could not be had (no EventSource, or the server refused it), so the caller polls instead.
function stream(id) {
  if (!window.EventSource) return Promise.resolve(false);
  return new Promise((resolve) => {
    const source = new EventSource(`/v1/jobs/${encodeURIComponent(id)}/events`);
    const seen = live.get(id) || { status: null, steps: new Set() };
    live.set(id, seen);
    // The worker took the job's task: it is processing, before any step is done.
    const onStarted = () => {
      if (!seen.status) seen.status = "processing";
      render();
    };
    const onStep = (e) => {
      const event = JSON.parse(e.data);
      seen.steps.add(event.data.step);
      seen.status = "processing";
      render();
    };
    const onEnd = (e) => {
      source.close();
      seen.status = e.type === "pixstream.job.completed" ? "completed" : "failed";
      render();
      resolve(true);
    };
    source.addEventListener("pixstream.task.started", onStarted);
    source.addEventListener("pixstream.step.completed", onStep);
    source.addEventListener("pixstream.step.failed", onStep);
    source.addEventListener("pixstream.job.completed", onEnd);
    source.addEventListener("pixstream.job.failed", onEnd);
    // A dropped connection is retried by the browser itself (with Last-Event-ID); CLOSED
    // means it gave up, e.g. a 503 when the server has too many streams open.
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) resolve(false);
    };
  });
}

async function poll(id) {
  while (await refresh(id)) await new Promise((r) => setTimeout(r, POLL_MS));
}

async function follow(id) {
  if (following.has(id)) return;
  following.add(id);
  try {
    if (!(await refresh(id))) return;
    if (!(await stream(id))) await poll(id);
    await refresh(id); // the record's outputs, presigned, and its errors
  } catch (err) {
    console.warn("following stopped", id, err);
  } finally {
    following.delete(id);
  }
}

function showNewest(id) {
  const node = document.querySelector(`[data-job="${id}"]`);
  if (node) node.scrollIntoView({ block: "nearest" });
}

async function submit(event) {
  event.preventDefault();
  const message = $("message");
  message.className = "message";
  message.textContent = "";
  const file = $("file").files[0];
  let spec;
  try {
    spec = JSON.parse($("spec").value);
  } catch (err) {
    message.className = "message error";
    message.textContent = `The spec is not valid JSON: ${err.message}`;
    return;
  }
  const form = new FormData();
  form.append("spec", JSON.stringify(spec));
  form.append("file", file, file.name);
  $("send").disabled = true;
  try {
    const resp = await fetch("/v1/jobs", {
      method: "POST",
      body: form,
      headers: { "Idempotency-Key": crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) },
    });
    const body = await resp.json().catch(() => null);
    if (resp.status !== 202) {
      const retry = resp.headers.get("Retry-After");
      message.className = "message error";
      message.textContent = describeProblem(body, resp.status) + (retry ? ` (retry in ${retry} s)` : "");
      return;
    }
    const jobs = loadHistory();
    jobs.unshift({ id: body.job_id, file: file.name, submittedAt: Date.now() });
    saveHistory(jobs);
    message.textContent = `Accepted: job ${body.job_id}`;
    render();
    showNewest(body.job_id); // on a phone the list is below the form
    follow(body.job_id);
  } catch (err) {
    message.className = "message error";
    message.textContent = `Could not reach the server: ${err.message}`;
  } finally {
    $("send").disabled = false;
  }
}

async function loadPresets() {
  try {
    const resp = await fetch("/v1/presets");
    if (!resp.ok) return;
    const body = await resp.json();
    for (const preset of body.presets) {
      presets[preset.name] = preset;
      $("preset").append(el("option", { value: preset.name }, preset.name));
    }
    syncPreset();
  } catch (err) {
    console.warn("presets unavailable", err);
  }
}

// The select names the preset the spec text asks for, and "custom" for anything else.
function syncPreset() {
  let name = "";
  try {
    const spec = JSON.parse($("spec").value);
    const keys = spec && typeof spec === "object" ? Object.keys(spec) : [];
    if (keys.length === 1 && typeof spec.preset === "string" && presets[spec.preset]) name = spec.preset;
  } catch {
    // not JSON (yet): a custom spec
  }
  $("preset").value = name;
}

// A link to the page with `#job=<id>` adds that job to this browser's history.
function adoptLinkedJob() {
  const match = /^#job=([A-Za-z0-9_-]{1,64})$/.exec(location.hash);
  if (!match) return;
  const jobs = loadHistory();
  if (!jobs.some((j) => j.id === match[1])) {
    jobs.unshift({ id: match[1], file: "(linked)", submittedAt: Date.now() });
    saveHistory(jobs);
  }
}

function init() {
  $("spec").value = JSON.stringify(EXAMPLE_SPEC, null, 2);
  $("preset").addEventListener("change", (e) => {
    const name = e.target.value;
    $("spec").value = JSON.stringify(name ? { preset: name } : EXAMPLE_SPEC, null, 2);
  });
  $("spec").addEventListener("input", syncPreset);
  $("submit").addEventListener("submit", submit);
  $("clear").addEventListener("click", () => {
    saveHistory([]);
    views.clear();
    live.clear();
    placeholders.clear();
    render();
  });
  adoptLinkedJob();
  render();
  loadPresets();
  // Resume following unfinished jobs; expired ones are never queried.
  for (const job of loadHistory()) if (!isExpired(job)) follow(job.id);
}

init();
