// The try-it page: upload a photo to POST /edit, follow GET /jobs/{id}, show the result beside the original.
// Plain browser JavaScript, no dependencies: it is served as it is written.
"use strict";

const POLL_INTERVAL_MS = 400;
const KEY_STORAGE = "chinfix-api-key";
const $ = (id) => document.getElementById(id);

let chosenFile = null;
let objectUrls = [];

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    return `${body.error.message} (${body.error.code})`;
  } catch {
    return `The service answered ${response.status}.`;
  }
}

function askForKey(message) {
  $("api-key-field").hidden = false;
  $("api-key").focus();
  if (message) showError(message);
}

// Keys are optional: a job that does not exist answers 401 only when the service wants one.
async function probeForKeys() {
  const response = await fetch("jobs/key-probe", { headers: authHeaders() });
  if (response.status === 401) askForKey();
}

function choose(file) {
  if (!file) return;
  chosenFile = file;
  $("drop-text").textContent = `${file.name} (${Math.round(file.size / 1024)} kB)`;
  $("submit").disabled = false;
}

function revokeObjectUrls() {
  objectUrls.forEach((url) => URL.revokeObjectURL(url));
  objectUrls = [];
}

function objectUrl(blob) {
  const url = URL.createObjectURL(blob);
  objectUrls.push(url);
  return url;
}

function showStage(status, stage, progress) {
  const order = [...$("stages").children].map((item) => item.dataset.stage);
  const current = status === "queued" ? "queued" : stage;
  const index = order.indexOf(current);
  [...$("stages").children].forEach((item, position) => {
    item.classList.toggle("current", position === index && status !== "succeeded");
    item.classList.toggle("done", position < index || status === "succeeded");
  });
  $("progress").value = status === "succeeded" ? 1 : progress || 0;
  $("status-text").textContent = status === "running" ? `${stage}: ${Math.round((progress || 0) * 100)}%` : status;
}

const FACTS = [
  ["identity similarity", (q) => q.identity_similarity],
  ["neck LPIPS", (q) => q.neck_fit && q.neck_fit.lpips],
  ["neck PSNR (dB)", (q) => q.neck_fit && q.neck_fit.psnr_db],
  ["pixels changed", (q) => q.changed_area && q.changed_area.pixels],
  ["share of the photo", (q) => q.changed_area && `${(q.changed_area.share * 100).toFixed(2)}%`],
  ["mask box", (q) => q.changed_area && q.changed_area.mask_box && q.changed_area.mask_box.join(", ")],
  ["double-chin probability before / after", (q) => q.double_chin_probability && `${q.double_chin_probability.before} / ${q.double_chin_probability.after}`],
];

function showReport(report) {
  const table = $("quality");
  table.replaceChildren();
  const quality = report.quality;
  const rows = quality ? FACTS.map(([name, value]) => [name, value(quality)]) : [];
  rows.push(["chin score before / after", report.score_before !== undefined ? `${report.score_before} / ${report.score_after}` : null]);
  rows.push(["total time", report.total_ms !== undefined ? `${(report.total_ms / 1000).toFixed(1)} s` : null]);
  for (const [name, value] of rows) {
    if (value === null || value === undefined) continue;
    const row = table.insertRow();
    const header = document.createElement("th");
    header.textContent = name;
    row.appendChild(header);
    row.insertCell().textContent = String(value);
  }
  const verdict = $("gate-verdict");
  verdict.classList.toggle("refused", Boolean(quality && !quality.passed));
  if (!quality) verdict.textContent = "";
  else if (quality.passed) verdict.textContent = "Quality check passed.";
  else verdict.textContent = `Quality check failed (${quality.returned} photo returned): ${quality.reasons.join("; ")}.`;
}

async function showResult(job) {
  const response = await fetch(job.result.url, { headers: authHeaders() });
  if (!response.ok) throw new Error(await errorMessage(response));
  const url = objectUrl(await response.blob());
  const after = $("result-image");
  const loaded = new Promise((resolve) => after.addEventListener("load", resolve, { once: true }));
  after.src = url;
  $("download").href = url;
  $("download").download = `chinfix-${job.id.slice(0, 8)}.${job.options.output === "jpeg" ? "jpg" : job.options.output}`;
  showReport(job.report || {});
  $("result").hidden = false;
  await loaded;
  $("compare").dataset.ready = "true";
}

async function follow(jobUrl) {
  for (;;) {
    const response = await fetch(jobUrl, { headers: authHeaders() });
    if (!response.ok) throw new Error(await errorMessage(response));
    const job = await response.json();
    showStage(job.status, job.stage, job.progress);
    if (job.status === "succeeded") return showResult(job);
    if (job.status === "failed") throw new Error(`${job.error.message} (${job.error.code})`);
    await new Promise((resolve) => setTimeout(resolve, POLL_INTERVAL_MS));
  }
}

async function submit(event) {
  event.preventDefault();
  if (!chosenFile) return;
  $("error").hidden = true;
  $("result").hidden = true;
  delete $("compare").dataset.ready;
  revokeObjectUrls();
  sessionStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
  $("before-image").src = objectUrl(chosenFile);

  const form = new FormData();
  form.append("image", chosenFile);
  for (const name of ["strength", "refine", "face", "output"]) form.append(name, $(name).value.trim());
  $("submit").disabled = true;
  try {
    const response = await fetch("edit", { method: "POST", body: form, headers: authHeaders() });
    if (response.status === 401) return askForKey("This service needs an API key.");
    if (!response.ok) throw new Error(await errorMessage(response));
    const accepted = await response.json();
    $("status").hidden = false;
    showStage("queued", null, 0);
    await follow(accepted.links.self);
  } catch (error) {
    showError(error.message);
  } finally {
    $("submit").disabled = false;
  }
}

function setSplit() {
  $("compare").style.setProperty("--split", `${$("slider").value}%`);
}

function init() {
  $("api-key").value = sessionStorage.getItem(KEY_STORAGE) || "";
  $("photo").addEventListener("change", () => choose($("photo").files[0]));
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("dragging"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    choose(event.dataTransfer.files[0]);
  });
  $("strength").addEventListener("input", () => { $("strength-value").textContent = $("strength").value; });
  $("slider").addEventListener("input", setSplit);
  $("edit-form").addEventListener("submit", submit);
  probeForKeys().catch(() => {});
}

init();
