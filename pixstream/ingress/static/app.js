// PixStream's web page: submits jobs, polls GET /v1/jobs/{id}, keeps a history in localStorage.
// Jobs older than the retention (24 h) are shown as EXPIRED without asking the server: their
// objects are gone, so there is nothing left to fetch.
"use strict";

const HISTORY_KEY = "pixstream.jobs";
const RETENTION_MS = 24 * 3600 * 1000;
const POLL_MS = 1000;
const EXAMPLE_SPEC = {
  steps: [
    { id: "web", op: "resize", params: { width: 1024 } },
    { id: "webp", op: "convert", params: { format: "webp", quality: 80 }, input: "web" },
    { id: "thumb", op: "thumbnail", params: { size: 256 } },
  ],
};

const $ = (id) => document.getElementById(id);
const views = new Map(); // job id -> last GET /v1/jobs/{id} body
const polling = new Set();
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

function renderJob(job) {
  const view = views.get(job.id);
  const expired = isExpired(job) || (view && view.expired);
  const status = expired ? "expired" : view ? view.status : "queued";
  const head = el(
    "div",
    { class: "job-head" },
    el("span", { class: `badge ${status}` }, status),
    el("span", { class: "job-id" }, job.id),
    el("span", { class: "muted" }, `${job.file} · ${new Date(job.submittedAt).toLocaleString()}`),
  );
  const box = el("div", { class: "job" }, head);
  if (expired) {
    box.append(el("div", { class: "muted" }, "Outputs are past retention and no longer available."));
    return box;
  }
  if (!view) return box;
  const { steps_total: total, steps_done: done } = view.progress;
  head.append(el("progress", { max: String(total || 1), value: String(done) }));
  head.append(el("span", { class: "muted" }, `${done}/${total} steps`));
  const outputs = el("div", { class: "outputs" });
  for (const [step, out] of Object.entries(view.outputs)) {
    const caption = `${step}: ${out.format} ${out.width}×${out.height}, ${formatBytes(out.bytes)}`;
    const img = el("img", { src: out.url, alt: caption, loading: "lazy" });
    outputs.append(
      el("figure", {}, el("a", { href: out.url, target: "_blank", rel: "noopener" }, img),
        el("figcaption", {}, caption)),
    );
  }
  if (outputs.childElementCount) box.append(outputs);
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

async function poll(id) {
  if (polling.has(id)) return;
  polling.add(id);
  try {
    for (;;) {
      const resp = await fetch(`/v1/jobs/${encodeURIComponent(id)}`);
      if (resp.status === 404) break;
      if (resp.ok) {
        const view = await resp.json();
        views.set(id, view);
        render();
        if (view.status === "completed" || view.status === "failed" || view.expired) break;
      }
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
  } catch (err) {
    console.warn("polling stopped", id, err);
  } finally {
    polling.delete(id);
  }
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
    poll(body.job_id);
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
  } catch (err) {
    console.warn("presets unavailable", err);
  }
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
  $("submit").addEventListener("submit", submit);
  $("clear").addEventListener("click", () => {
    saveHistory([]);
    views.clear();
    render();
  });
  adoptLinkedJob();
  render();
  loadPresets();
  // Resume following unfinished jobs; expired ones are never queried.
  for (const job of loadHistory()) if (!isExpired(job)) poll(job.id);
}

init();
