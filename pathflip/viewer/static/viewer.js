"use strict";
// The viewer page: a slide list, an OpenSeadragon deep-zoom view, grounding layers, zero-shot and cohort search.
// Every text from the server goes into the page through textContent, never as HTML.

const $ = (id) => document.getElementById(id);
const state = { key: null, slide: null, slides: [], sentences: [], layers: [], opened: null };
const viewer = OpenSeadragon({
  id: "viewer",
  prefixUrl: "/static/openseadragon/images/",
  drawer: "canvas",
  imageSmoothingEnabled: false, // heatmap layers are one pixel per patch: show the patches, not a blur
  showNavigator: true,
  maxZoomPixelRatio: 4,
});
window.pathflip = { viewer, state }; // for tests and the browser console

async function call(method, path, body) {
  const options = { method, headers: {} };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error || message; } catch (ignored) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}
const json = async (method, path, body) => (await call(method, path, body)).json();
const slidePath = (key, rest) => `/api/slides/${encodeURIComponent(key)}/${rest}`;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function note(id, text, isError = false) {
  $(id).textContent = text;
  $(id).classList.toggle("error", isError);
}

async function loadSlides() {
  const data = await json("GET", "/api/slides");
  state.slides = data.slides;
  $("labels").value = data.labels.join("\n");
  $("templates").textContent = "Prompts: " + data.templates.join("  |  ");
  const list = $("slides");
  for (const slide of data.slides) {
    const item = document.createElement("li");
    item.dataset.key = slide.key;
    const image = document.createElement("img");
    image.loading = "lazy";
    image.alt = "";
    image.src = slidePath(slide.key, "thumbnail.jpg");
    const text = document.createElement("div");
    const name = document.createElement("div");
    name.textContent = slide.slide_id;
    const label = document.createElement("div");
    label.className = "label";
    label.textContent = slide.label || "";
    text.append(name, label);
    item.append(image, text);
    item.addEventListener("click", () => openSlide(slide));
    list.append(item);
  }
  const wanted = new URLSearchParams(location.search).get("slide");
  const first = data.slides.find((slide) => slide.slide_id === wanted || slide.key === wanted);
  if (first) openSlide(first);
}

function openSlide(slide) {
  state.key = slide.key;
  state.slide = slide;
  clearLayers();
  document.body.dataset.ready = "";
  for (const item of $("slides").children) item.classList.toggle("current", item.dataset.key === slide.key);
  $("slide-title").textContent = slide.slide_id + (slide.label ? ` (${slide.label})` : "");
  $("caption-section").hidden = !slide.caption;
  $("caption").textContent = slide.caption || "";
  state.opened = new Promise((resolve) => viewer.addOnceHandler("open", resolve));
  viewer.open(slidePath(slide.key, "image.dzi"));
  setTools(false);
  prepare(slide.key).catch((error) => note("slide-status", error.message, true));
}

function setTools(enabled) {
  for (const id of ["ground-button", "classify"]) $(id).disabled = !enabled;
}

async function prepare(key) {
  const progress = $("slide-progress");
  let status = await json("POST", slidePath(key, "prepare"));
  while (status.state !== "ready") {
    if (state.key !== key) return;
    if (status.state === "failed") throw new Error(status.message);
    progress.hidden = false;
    progress.value = status.progress;
    note("slide-status", status.state === "encoding" ? `encoding patches ${Math.round(100 * status.progress)}%`
                                                     : "waiting to encode");
    await sleep(400);
    status = await json("GET", slidePath(key, "status"));
  }
  if (state.key !== key) return;
  progress.hidden = true;
  note("slide-status", `${status.patches} patches`);
  setTools(true);
  document.body.dataset.ready = key;
}

// ---- grounding layers ---------------------------------------------------------------------------

function clearLayers() {
  for (const layer of state.layers) {
    if (layer.item) viewer.world.removeItem(layer.item);
    for (const element of layer.outlines) viewer.removeOverlay(element);
  }
  state.layers = [];
  state.sentences = [];
  $("layers").replaceChildren();
  for (const id of ["download-geojson", "download-png", "clear-layers"]) $(id).disabled = true;
  document.body.dataset.layers = "0";
}

async function ground(text) {
  const key = state.key;
  const wanted = state.sentences.concat([text]);
  note("ground-note", "grounding...");
  const started = performance.now();
  const data = await json("POST", slidePath(key, "grounding"), { text: wanted, top_k: 5 });
  await state.opened;
  if (state.key !== key) return;
  clearLayers();
  state.sentences = data.layers.map((layer) => layer.sentence);
  const base = viewer.world.getItemAt(0);
  const loads = data.layers.map((layer) => addLayer(base, layer));
  await Promise.all(loads);
  await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
  note("ground-note", `${data.layers.length} layer(s) in ${Math.round(performance.now() - started)} ms`);
  for (const id of ["download-geojson", "download-png", "clear-layers"]) $(id).disabled = false;
  document.body.dataset.layers = String(data.layers.length);
}

function addLayer(base, layer) {
  const bounds = layer.bounds;
  const where = base.imageToViewportRectangle(bounds.x, bounds.y, bounds.width, bounds.height);
  const entry = { ...layer, item: null, outlines: [], visible: true };
  state.layers.push(entry);
  for (const patch of layer.top_patches) {
    const outline = document.createElement("div");
    outline.className = "top-patch";
    outline.style.borderColor = layer.colour;
    outline.title = `${layer.sentence} #${patch.rank}`;
    viewer.addOverlay({ element: outline, location: base.imageToViewportRectangle(patch.x, patch.y, patch.size, patch.size) });
    entry.outlines.push(outline);
  }
  listLayer(entry);
  return new Promise((resolve, reject) => {
    viewer.addTiledImage({
      tileSource: { type: "image", url: layer.image, buildPyramid: false },
      x: where.x, y: where.y, width: where.width,
      opacity: Number($("opacity").value),
      success: (event) => {
        entry.item = event.item;
        if (event.item.getFullyLoaded()) resolve();
        else event.item.addOnceHandler("fully-loaded-change", () => resolve());
      },
      error: (event) => reject(new Error(`layer image failed: ${event.message}`)),
    });
  });
}

function listLayer(entry) {
  const item = document.createElement("li");
  const box = document.createElement("input");
  box.type = "checkbox";
  box.checked = true;
  box.addEventListener("change", () => {
    entry.visible = box.checked;
    applyOpacity();
  });
  const swatch = document.createElement("span");
  swatch.className = "swatch";
  swatch.style.background = entry.colour;
  const text = document.createElement("span");
  text.textContent = entry.sentence;
  item.append(box, swatch, text);
  $("layers").append(item);
}

function applyOpacity() {
  const opacity = Number($("opacity").value);
  for (const layer of state.layers) {
    if (layer.item) layer.item.setOpacity(layer.visible ? opacity : 0);
    for (const outline of layer.outlines) outline.style.display = layer.visible ? "" : "none";
  }
}

async function download(kind) {
  const body = kind === "png" ? { text: state.sentences, opacity: Number($("opacity").value) }
                              : { text: state.sentences, top_k: 20 };
  const response = await call("POST", slidePath(state.key, `layers.${kind}`), body);
  const link = document.createElement("a");
  link.href = URL.createObjectURL(await response.blob());
  link.download = `${state.slide.slide_id}.${kind}`;
  link.click();
  URL.revokeObjectURL(link.href);
}

// ---- zero-shot and search -----------------------------------------------------------------------

async function classify() {
  const labels = $("labels").value.split("\n").map((line) => line.trim()).filter(Boolean);
  const data = await json("POST", slidePath(state.key, "zero-shot"), { labels });
  const list = $("scores");
  list.replaceChildren();
  for (const { label, score } of data.scores) {
    const item = document.createElement("li");
    const text = document.createElement("div");
    text.textContent = `${label}: ${(100 * score).toFixed(1)}%`;
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${(100 * score).toFixed(1)}%`;
    item.append(text, bar);
    list.append(item);
  }
}

async function search(text) {
  note("search-note", "searching...");
  const data = await json("POST", "/api/search", { text, top_k: 10 });
  const list = $("search-results");
  list.replaceChildren();
  for (const result of data.results) {
    const item = document.createElement("li");
    item.textContent = result.slide_id + " ";
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = result.score.toFixed(3);
    item.append(score);
    const slide = state.slides.find((candidate) => candidate.key === result.key);
    item.addEventListener("click", () => openSlide(slide));
    list.append(item);
  }
  if (data.indexed < data.total) {
    note("search-note", `ranked ${data.indexed} of ${data.total} slides; the others are being encoded`);
    await call("POST", "/api/index");
  } else {
    note("search-note", `ranked all ${data.total} slides`);
  }
}

function guard(id, work) {
  return (event) => {
    if (event) event.preventDefault();
    work().catch((error) => note(id, error.message, true));
  };
}

$("ground-form").addEventListener("submit", guard("ground-note", () => ground($("ground-text").value)));
$("classify").addEventListener("click", guard("ground-note", classify));
$("search-form").addEventListener("submit", guard("search-note", () => search($("search-text").value)));
$("opacity").addEventListener("input", applyOpacity);
$("clear-layers").addEventListener("click", () => clearLayers());
$("download-geojson").addEventListener("click", guard("ground-note", () => download("geojson")));
$("download-png").addEventListener("click", guard("ground-note", () => download("png")));
$("use-caption").addEventListener("click", guard("ground-note", () => {
  clearLayers();
  return ground(state.slide.caption);
}));
loadSlides().catch((error) => note("slide-status", error.message, true));
