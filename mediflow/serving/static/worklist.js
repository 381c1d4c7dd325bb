// The worklist: studies by suspicion, one-key reads. Everything is rendered with textContent:
// no server string is ever parsed as HTML. An ES module (strict by default), for heatmap.js's export.
import { attachHeatmap, DEFAULT_OPACITY } from "/static/heatmap.js";

(() => {
  const KEY_STORAGE = "mediflow.apiKey";
  const PAGE = 50;
  const $ = (id) => document.getElementById(id);
  const state = { items: [], selected: -1, offset: 0, total: 0, classes: [], keys: {}, study: null, imageUrl: null,
                  busy: false, heatmap: null, heatmapView: { opacity: DEFAULT_OPACITY, visible: true } };

  class AuthError extends Error {}

  function authHeaders() {
    const key = sessionStorage.getItem(KEY_STORAGE);
    return key ? { Authorization: "Bearer " + key } : {};
  }

  async function api(path, options = {}) {
    const res = await fetch(path, { ...options, headers: { ...(options.headers || {}), ...authHeaders() } });
    if (res.ok) return res;
    let detail = res.statusText;
    try {
      const body = await res.json();
      detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (_) { /* not JSON */ }
    if (res.status === 401) {
      showKeyForm(detail);
      throw new AuthError(detail);
    }
    throw new Error(detail);
  }

  function say(text) { $("message").textContent = text; }

  function showKeyForm(detail) {
    $("key-section").hidden = false;
    say(sessionStorage.getItem(KEY_STORAGE) ? "The API key was refused: " + detail
                                            : "This server needs an API key: enter it above.");
    $("api-key").focus();
  }

  const pct = (p) => (100 * p).toFixed(1) + "%";
  const when = (iso) => (iso ? new Date(iso).toLocaleString() : "");
  // Probabilities are shown centred on the model's operating point (docs/serving.md): the threshold
  // is 50% on that scale; the calibrated value behind it is given for reference.
  const operatingPointText = (s) => {
    if (s.threshold == null) return "highest probability";
    const op = s.operating_point;
    return pct(s.threshold) + (op ? ` (calibrated P(${op.positive_class}) ${op.calibrated_threshold.toFixed(3)})` : "");
  };
  const stateText = (s) => ({ unreviewed: "Unreviewed", confirmed: "Confirmed", corrected: "Corrected" }[s] || s);

  // -- the list ------------------------------------------------------------------------------------
  async function loadList(keepIndex = false) {
    const params = new URLSearchParams({ status: $("status").value, sort: $("sort").value,
                                         limit: String(PAGE), offset: String(state.offset) });
    const data = await (await api("/api/studies?" + params)).json();
    state.items = data.items;
    state.total = data.total;
    renderList();
    $("count").textContent = data.total === 0 ? "No studies to show."
      : `Studies ${data.offset + 1}–${data.offset + data.items.length} of ${data.total}.`;
    $("prev").disabled = state.offset === 0;
    $("next").disabled = state.offset + data.items.length >= data.total;
    if (state.items.length === 0) {
      state.selected = -1;
      closeStudy();
    } else if (keepIndex) {
      await select(Math.min(Math.max(state.selected, 0), state.items.length - 1), false);
    } else {
      state.selected = -1;
    }
  }

  function renderList() {
    const tbody = $("studies").tBodies[0];
    tbody.replaceChildren();
    state.items.forEach((s, i) => {
      const tr = document.createElement("tr");
      tr.dataset.id = s.id;
      tr.tabIndex = i === Math.max(state.selected, 0) ? 0 : -1;  // one tab stop for the whole table
      tr.setAttribute("aria-selected", String(i === state.selected));
      const cells = [
        when(s.received_at),
        `${s.prediction} (${pct(s.confidence)})`,
        pct(s.probability),
        s.uncertain ? "Uncertain" : "",
        stateText(s.review_state) + (s.review_label && s.review_state === "corrected" ? ` → ${s.review_label}` : ""),
        s.reviewer || "",
      ];
      cells.forEach((text, c) => {
        const td = document.createElement("td");
        td.textContent = text;
        if (c === 1 && s.prediction === "PNEUMONIA") td.className = "suspicious";
        if (c === 3 && s.uncertain) td.className = "flag";
        tr.appendChild(td);
      });
      tr.addEventListener("click", () => select(i, true));
      tbody.appendChild(tr);
    });
  }

  async function select(index, focusRow) {
    if (index < 0 || index >= state.items.length) return;
    state.selected = index;
    const rows = $("studies").tBodies[0].rows;
    Array.from(rows).forEach((tr, i) => {
      tr.setAttribute("aria-selected", String(i === index));
      tr.tabIndex = i === index ? 0 : -1;
    });
    if (focusRow) rows[index].focus();
    rows[index].scrollIntoView({ block: "nearest" });
    await openStudy(state.items[index].id);
  }

  // -- one study ----------------------------------------------------------------------------------
  function closeStudy() {
    state.study = null;
    $("study").hidden = true;
    clearHeatmap();
    if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
    state.imageUrl = null;
  }

  async function openStudy(id) {
    const s = await (await api(`/api/studies/${id}`)).json();
    state.study = s;
    $("study").hidden = false;
    $("study-heading").textContent = `Study received ${when(s.received_at)}`;
    $("finding").textContent = `Model finding: ${s.prediction}, confidence ${pct(s.confidence)}` +
      (s.uncertain ? " (uncertain: read with care)" : "") + `. ${s.disclaimer}`;
    const probs = $("probabilities").tBodies[0];
    probs.replaceChildren();
    for (const [name, p] of Object.entries(s.probabilities)) {
      const tr = probs.insertRow();
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = name;
      tr.appendChild(th);
      tr.insertCell().textContent = pct(p);
    }
    const meta = $("meta");
    meta.replaceChildren();
    const facts = [["Status", stateText(s.review_state) + (s.review_label ? `: ${s.review_label}` : "")],
                   ["Decision threshold", operatingPointText(s)],
                   ["Patient age", s.patient_age], ["Patient sex", s.patient_sex],
                   ["Study UID", s.study_instance_uid], ["Model", `${s.model.architecture} ${s.model.version}`],
                   ["Image SHA-256", s.image_sha256.slice(0, 16) + "…"]];
    for (const [k, v] of facts) {
      if (!v) continue;
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = v;
      meta.append(dt, dd);
    }
    const history = $("history");
    history.replaceChildren();
    for (const r of s.reviews) {
      const li = document.createElement("li");
      li.textContent = `${r.state === "confirmed" ? "Confirmed" : "Corrected to"} ${r.label} by ${r.reviewer}, ` +
        `${when(r.reviewed_at)}` + (r.note ? ` — ${r.note}` : "");
      history.appendChild(li);
    }
    if (!s.reviews.length) {
      const li = document.createElement("li");
      li.textContent = "None yet.";
      li.className = "empty";
      history.appendChild(li);
    }
    $("note").value = "";
    renderReviewButtons(s);
    await showImage(s);
  }

  async function showImage(s) {
    const img = $("study-image");
    clearHeatmap();
    if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
    state.imageUrl = null;
    img.hidden = true;
    if (!s.has_image) {
      $("image-note").textContent = "No image stored: the server keeps images only with --store-images.";
      return;
    }
    $("image-note").textContent = "Loading image…";
    try {
      const blob = await (await api(`/api/studies/${s.id}/image?preview=true`)).blob();
      if (!state.study || state.study.id !== s.id) return;  // the reader moved on meanwhile
      state.imageUrl = URL.createObjectURL(blob);
      img.src = state.imageUrl;
      img.alt = `Chest X-ray, study received ${when(s.received_at)}`;
      img.hidden = false;
      $("image-note").textContent = "";
    } catch (e) {
      $("image-note").textContent = "Image cannot be shown: " + e.message;
      return;
    }
    await showHeatmap(s);
  }

  function clearHeatmap() {
    state.heatmap?.remove();
    state.heatmap = null;
    $("heatmap-status").textContent = "";
  }

  /** The map of where the model looked, over the shown image; the reader's opacity carries over. */
  async function showHeatmap(s) {
    $("heatmap-status").textContent = "Computing heatmap…";
    try {
      const h = await (await api(`/api/studies/${s.id}/heatmap`)).json();
      if (!state.study || state.study.id !== s.id || $("study-image").hidden) return;  // moved on meanwhile
      clearHeatmap();
      state.heatmap = attachHeatmap($("study-stage"), $("study-image"), {
        dataUrl: h.heatmap, className: h.heatmap_class, controlsParent: $("heatmap-box"),
        ...state.heatmapView, onChange: (view) => { state.heatmapView = view; },
      });
      // E.g. the study was analysed by an earlier model: the map is the current model's.
      $("heatmap-status").textContent = h.note || "";
    } catch (e) {
      if (!state.study || state.study.id !== s.id) return;
      $("heatmap-status").textContent = e instanceof AuthError ? "" : "Heatmap unavailable: " + e.message;
    }
  }

  function renderReviewButtons(s) {
    const box = $("review-buttons");
    box.replaceChildren();
    const confirm = document.createElement("button");
    confirm.type = "button";
    confirm.textContent = `Confirm ${s.prediction} (C)`;
    confirm.addEventListener("click", () => review(s.prediction));
    box.appendChild(confirm);
    for (const name of state.classes) {
      const b = document.createElement("button");
      b.type = "button";
      const key = Object.keys(state.keys).find((k) => state.keys[k] === name);
      b.textContent = `Mark ${name}` + (key ? ` (${key.toUpperCase()})` : "");
      b.addEventListener("click", () => review(name));
      box.appendChild(b);
    }
  }

  async function review(label) {
    if (!state.study || state.busy) return;
    state.busy = true;
    try {
      const body = { label, note: $("note").value || null };
      const s = await (await api(`/api/studies/${state.study.id}/review`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) })).json();
      say(`Recorded ${s.review_state === "confirmed" ? "confirmation" : "correction"}: ${label}, by ${s.reviewer}.`);
      // Reviewed studies leave the unreviewed list; the next one moves into the same place.
      await loadList(true);
    } catch (e) {
      if (!(e instanceof AuthError)) say("Review not saved: " + e.message);
    } finally {
      state.busy = false;
    }
  }

  // -- uploads -------------------------------------------------------------------------------------
  async function uploadFiles(files) {
    let done = 0;
    const failed = [];
    for (const f of files) {
      say(`Analysing ${done + 1} of ${files.length}…`);
      const form = new FormData();
      form.append("file", f, f.name);
      try {
        await api("/api/vision/analyze", { method: "POST", body: form });
      } catch (e) {
        if (e instanceof AuthError) return;
        failed.push(`${f.name}: ${e.message}`);
      }
      done += 1;
    }
    say(`Analysed ${done - failed.length} of ${files.length}.` + (failed.length ? " Failed: " + failed.join("; ") : ""));
    $("upload").value = "";
    state.offset = 0;
    await loadList(false);
  }

  // -- start ---------------------------------------------------------------------------------------
  async function start() {
    try {
      const card = await (await api("/api/model")).json();
      state.classes = card.classes;
      state.keys = {};
      for (const name of card.classes) {
        const k = name[0].toLowerCase();
        // One key per class when its initial is free (NORMAL: N, PNEUMONIA: P); C and J/K are taken.
        if (!"cjk".includes(k) && !(k in state.keys)) state.keys[k] = name;
      }
      $("label-keys").textContent = Object.entries(state.keys)
        .map(([k, n]) => `${k.toUpperCase()} mark ${n}`).join(", ");
      if (card.disclaimer) $("disclaimer").textContent = card.disclaimer;
      if (sessionStorage.getItem(KEY_STORAGE)) $("key-section").hidden = false;
      await loadList(false);
      if (state.items.length) await select(0, true);
      say("");
    } catch (e) {
      if (!(e instanceof AuthError)) say("Cannot load the worklist: " + e.message);
    }
  }

  function onKey(e) {
    if (e.altKey || e.ctrlKey || e.metaKey) return;
    if (e.target.closest("input, textarea, select") && e.key !== "Escape") return;
    if (e.target.closest("button") && (e.key === "Enter" || e.key === " ")) return;  // the button's own action
    const k = e.key.toLowerCase();
    if (k === "j" || e.key === "ArrowDown") { select(state.selected + 1, true); e.preventDefault(); }
    else if (k === "k" || e.key === "ArrowUp") { select(Math.max(state.selected - 1, 0), true); e.preventDefault(); }
    else if (e.key === "Enter" && state.selected >= 0) { select(state.selected, true); e.preventDefault(); }
    else if (e.key === "Escape") { e.target.blur?.(); }
    else if (k === "c" && state.study) { review(state.study.prediction); e.preventDefault(); }
    else if (state.keys[k] && state.study) { review(state.keys[k]); e.preventDefault(); }
  }

  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
    $("api-key").value = "";
    start();
  });
  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    state.items = [];
    renderList();
    closeStudy();
    say("API key forgotten.");
  });
  $("upload-form").addEventListener("submit", (e) => {
    e.preventDefault();
    if ($("upload").files.length) uploadFiles(Array.from($("upload").files));
    else say("Choose one or more images first.");
  });
  for (const id of ["status", "sort"]) $(id).addEventListener("change", () => { state.offset = 0; loadList(false); });
  $("refresh").addEventListener("click", () => loadList(true));
  $("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); loadList(false); });
  $("next").addEventListener("click", () => { state.offset += PAGE; loadList(false); });
  document.addEventListener("keydown", onKey);
  start();
})();
