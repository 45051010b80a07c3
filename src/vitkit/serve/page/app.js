// The vitkit page: sends an image to /v1/explain (or /v1/predict for models without attention) and
// shows the top classes as bars and the attention rollout over the image. No third-party code.
"use strict";

const $ = (id) => document.getElementById(id);
let canExplain = false;

function headers(contentType) {
  const h = { "Content-Type": contentType || "application/octet-stream" };
  const key = $("api-key").value.trim();
  if (key) h["X-API-Key"] = key;
  return h;
}

async function describeModel() {
  const response = await fetch("/v1/model", { headers: headers() });
  const info = await response.json();
  if (!response.ok) {
    $("model-info").textContent = `model description unavailable: ${info.error}`;
    return;
  }
  canExplain = info.explain;
  const [c, h, w] = info.input_size;
  $("model-info").textContent =
    `${info.name} (${info.family}): ${info.classes.length} classes, ${h}×${w} input, ${c} channel(s)`;
}

async function loadSamples() {
  const names = await (await fetch("/samples")).json();
  for (const url of names) {
    const label = url.split("/").pop().replace(/\.\w+$/, "");
    const button = document.createElement("button");
    button.type = "button";
    button.setAttribute("aria-label", `sample image ${label}`);
    const img = document.createElement("img");
    img.src = url;
    img.alt = "";
    button.append(img);
    button.addEventListener("click", async () => {
      const blob = await (await fetch(url)).blob();
      classify(blob, label);
    });
    $("sample-list").append(button);
  }
}

function showStatus(text, isError) {
  $("status").textContent = text;
  $("status").classList.toggle("error", Boolean(isError));
}

function showTopk(topk) {
  const list = $("topk");
  list.replaceChildren();
  for (const { label, prob } of topk) {
    const item = document.createElement("li");
    const pct = (100 * prob).toFixed(1);
    item.innerHTML = '<div class="bar-label"><span class="name"></span><span class="prob"></span></div>' +
      '<div class="bar" role="presentation"><span></span></div>';
    item.querySelector(".name").textContent = label;
    item.querySelector(".prob").textContent = `${pct}%`;
    item.querySelector(".bar span").style.width = `${pct}%`;
    item.setAttribute("aria-label", `${label}: ${pct}%`);
    list.append(item);
  }
}

async function classify(blob, name) {
  $("preview").src = URL.createObjectURL(blob);
  $("preview-caption").textContent = name;
  $("preview-figure").hidden = false;
  showStatus("Classifying…");
  const endpoint = canExplain ? "/v1/explain" : "/v1/predict";
  try {
    const response = await fetch(`${endpoint}?topk=5`, { method: "POST", headers: headers(blob.type), body: blob });
    const result = await response.json();
    if (!response.ok) {
      showStatus(`Error ${response.status}: ${result.error}`, true);
      return;
    }
    showTopk(result.topk);
    showStatus(`${result.topk[0].label} (${(100 * result.topk[0].prob).toFixed(1)}%), ` +
      `${result.latency_ms.toFixed(0)} ms`);
    if (result.overlay_png) {
      $("model-input").src = result.input_png;
      $("overlay").src = result.overlay_png;
      $("explain").hidden = false;
    }
  } catch (err) {
    showStatus(`Request failed: ${err.message}`, true);
  }
}

function setUpInput() {
  const zone = $("drop-zone");
  $("file-input").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) classify(file, file.name);
  });
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("dragging"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const file = event.dataTransfer.files[0];
    if (file) classify(file, file.name);
  });
  $("opacity").addEventListener("input", (event) => {
    const value = event.target.value;
    $("overlay").style.opacity = value / 100;
    $("opacity-value").textContent = `${value}%`;
    event.target.setAttribute("aria-valuetext", `${value}%`);
  });
  $("api-key").addEventListener("change", describeModel);
}

setUpInput();
describeModel();
loadSamples();
