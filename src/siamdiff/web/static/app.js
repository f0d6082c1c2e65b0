// The page of `siamdiff serve`: three forms posting to the JSON API. No framework, nothing from the network but
// this server.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
let served = { models: [], indexes: [] };

function showError(pane, message) {
  const box = $(".error", pane);
  box.textContent = message;
  box.hidden = !message;
}

async function post(url, form) {
  const response = await fetch(url, { method: "POST", body: form });
  let body;
  try {
    body = await response.json();
  } catch (e) {
    throw new Error(`the server answered ${response.status} without JSON`);
  }
  if (!response.ok) throw new Error(body.error || `the server answered ${response.status}`);
  return body;
}

// Run `work` with the pane's button disabled and its progress shown (with the seconds spent, where there is room).
async function busy(pane, work) {
  const button = $("button[type=submit]", pane);
  const bar = $("progress", pane);
  const elapsed = $(".elapsed", pane);
  const start = performance.now();
  const tick = elapsed ? setInterval(() => {
    elapsed.textContent = `working… ${((performance.now() - start) / 1000).toFixed(0)} s`;
  }, 500) : null;
  button.disabled = true;
  bar.hidden = false;
  showError(pane, "");
  try {
    await work();
  } catch (e) {
    showError(pane, e.message);
  } finally {
    button.disabled = false;
    bar.hidden = true;
    if (tick) clearInterval(tick);
    if (elapsed) elapsed.textContent = "";
  }
}

function fill(select, names) {
  select.replaceChildren(...names.map((n) => new Option(n, n)));
  select.disabled = names.length === 0;
}

function methodsFor(name) {
  const m = served.models.find((x) => x.name === name && x.kind !== "similarity");
  return m ? m.methods : [];
}

async function loadCatalog() {
  const status = $("#status");
  try {
    const response = await fetch("/health");
    served = await response.json();
  } catch (e) {
    status.textContent = "The server does not answer.";
    return;
  }
  const similarity = served.models.filter((m) => m.kind === "similarity").map((m) => m.name);
  const denoise = served.models.filter((m) => m.kind !== "similarity").map((m) => m.name);
  fill($("select[data-kind=similarity]"), similarity);
  fill($("select[data-kind=denoise]"), denoise);
  fill($("select[data-kind=index]"), served.indexes.map((i) => `${i.name}`));
  fill($("#denoise-form select[name=method]"), methodsFor(denoise[0]));
  status.textContent = `siamdiff ${served.version}: ${similarity.length} similarity model(s), ` +
    `${denoise.length} denoising model(s), ${served.indexes.length} index(es).`;
  if (served.indexes.length === 0) {
    showError($("#pane-search"), "This server has no index: start it with --index FILE to search one.");
  }
}

function setUpTabs() {
  const tabs = [...document.querySelectorAll("[role=tab]")];
  const select = (tab) => {
    for (const t of tabs) {
      const on = t === tab;
      t.setAttribute("aria-selected", String(on));
      t.tabIndex = on ? 0 : -1;
      document.getElementById(t.getAttribute("aria-controls")).hidden = !on;
    }
    tab.focus();
  };
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => select(tab));
    tab.addEventListener("keydown", (e) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[e.key];
      if (step) select(tabs[(i + step + tabs.length) % tabs.length]);
      if (e.key === "Home") select(tabs[0]);
      if (e.key === "End") select(tabs[tabs.length - 1]);
    });
  });
}

// Drop zones: a dropped file goes into the zone's file input; either way a preview is shown.
function setUpDrops() {
  for (const zone of document.querySelectorAll(".drop")) {
    const input = $("input[type=file]", zone);
    const preview = document.getElementById(zone.dataset.preview);
    const show = () => {
      const file = input.files[0];
      preview.hidden = !file;
      if (file) preview.src = URL.createObjectURL(file);
    };
    input.addEventListener("change", show);
    zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("over");
      if (e.dataTransfer.files.length) {
        input.files = e.dataTransfer.files;
        show();
      }
    });
  }
}

function setUpCompare() {
  const pane = $("#pane-compare");
  $("#compare-form").addEventListener("submit", (e) => {
    e.preventDefault();
    busy(pane, async () => {
      const data = new FormData(e.target);
      if (!data.get("explain")) data.delete("explain");
      const r = await post("/api/similarity", data);
      $("#compare-score").textContent = r.similarity.toFixed(3);
      $("#compare-score-name").textContent = "similarity (category first, appearance second)";
      $("#compare-decision").textContent = r.same ? "Same category" : "Different categories";
      $("#compare-decision").className = "decision " + (r.same ? "same" : "different");
      $("#compare-details").textContent = `probability of the same category ${r.probability.toFixed(3)}, ` +
        `appearance ${r.appearance.toFixed(3)}, embedding distance ${r.distance.toFixed(3)}`;
      const why = $("#compare-why-figure");
      why.hidden = !r.explain_png_base64;
      if (r.explain_png_base64) $("#compare-why").src = "data:image/png;base64," + r.explain_png_base64;
      $("#compare-result").hidden = false;
    });
  });
}

function setUpSearch() {
  const pane = $("#pane-search");
  $("#search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    busy(pane, async () => {
      const r = await post("/api/search", new FormData(e.target));
      const items = r.results.map((hit) => {
        const li = document.createElement("li");
        const img = new Image();
        img.src = hit.image_url;
        img.alt = hit.path;
        const caption = document.createElement("span");
        const graded = hit.similarity === null ? "–" : hit.similarity.toFixed(3);
        caption.textContent = `${graded} · p ${hit.probability.toFixed(3)}`;
        caption.title = hit.path;
        li.append(img, caption);
        return li;
      });
      $("#search-results").replaceChildren(...items);
    });
  });
}

function setUpDenoise() {
  const pane = $("#pane-denoise");
  const form = $("#denoise-form");
  $("select[name=model]", form).addEventListener("change", (e) => {
    fill($("select[name=method]", form), methodsFor(e.target.value));
  });
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    busy(pane, async () => {
      const data = new FormData(form);
      if (!data.get("chain")) data.delete("chain");
      const r = await post("/api/denoise", data);
      $("#denoise-before").src = URL.createObjectURL(data.get("image"));
      $("#denoise-after").src = "data:image/png;base64," + r.image_png_base64;
      const estimated = r.sigma_estimated === null ? "given" : `estimated (${r.sigma_estimator})`;
      const parts = [`σ ${r.sigma.toFixed(3)}, ${estimated}`, `method ${r.method}`];
      if (r.t_start !== null) parts.push(`t* ${r.t_start}`);
      if (r.label !== null) parts.push(`class kept ${r.label}`);
      if (r.tiles > 1) parts.push(`${r.tiles} tiles`);
      parts.push(`${r.width}×${r.height}`);
      $("#denoise-details").textContent = parts.join(" · ");
      const chain = $("#denoise-chain-figure");
      chain.hidden = !r.chain_png_base64;
      if (r.chain_png_base64) $("#denoise-chain").src = "data:image/png;base64," + r.chain_png_base64;
      $("#denoise-result").hidden = false;
    });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setUpTabs();
  setUpDrops();
  setUpCompare();
  setUpSearch();
  setUpDenoise();
  loadCatalog();
});
