// MediFlow doctor's page: choose or drop an X-ray, send it to the API, show the finding.
//
// Layout of this file (plain ES module, no build step):
//   api      - the only code that talks to the server
//   wording  - how results are phrased for clinicians (never "diagnosis")
//   view     - the only code that writes to the DOM
//   controller (init) - wires user events to api + view
// Extensions (a heatmap overlay, a worklist) can import these exports, or listen on `document` for
//   "mediflow:analyzing" {file}, "mediflow:result" {file, result, previewUrl}, "mediflow:error" {file, message}
// and draw into #preview-stage, without editing this file.

// heatmap=true: the overlay of where the model looked comes from the same pass (heatmap.js draws it).
const ANALYZE_URL = "/api/vision/analyze?heatmap=true";
const MODEL_URL = "/api/model";

// ---------------------------------------------------------------------------------------------- api

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

/** FastAPI's `detail` is a string for our 4xx errors and a list of {msg} for validation errors. */
export function detailText(detail) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((d) => (d && d.msg) || String(d)).join("; ");
  return "";
}

async function errorFrom(response) {
  let detail = "";
  try {
    detail = detailText((await response.json()).detail);
  } catch {
    // Not JSON (e.g. a proxy's HTML error page): fall back to the status line.
  }
  return new ApiError(detail || `the server answered ${response.status} ${response.statusText}`.trim(),
                      response.status);
}

export function isDicom(file) {
  return file.type === "application/dicom" || /\.(dcm|dicom)$/i.test(file.name || "");
}

export const api = {
  async analyze(file) {
    const form = new FormData();
    form.append("file", file, file.name);
    // Browsers cannot draw DICOM: ask the server for a PNG rendering of what it analysed.
    const url = isDicom(file) ? `${ANALYZE_URL}&preview=true` : ANALYZE_URL;
    let response;
    try {
      response = await fetch(url, { method: "POST", body: form });
    } catch {
      throw new ApiError("could not reach the MediFlow service; check the connection and try again", 0);
    }
    if (!response.ok) throw await errorFrom(response);
    return response.json();
  },

  async modelCard() {
    const response = await fetch(MODEL_URL);
    if (!response.ok) throw await errorFrom(response);
    return response.json();
  },
};

// ------------------------------------------------------------------------------------------ wording

/** Careful, non-diagnostic phrasing of the predicted class. */
export function findingText(prediction) {
  const name = String(prediction || "").toUpperCase();
  if (name === "PNEUMONIA") return "Findings suggestive of pneumonia";
  if (name === "NORMAL") return "No findings suggestive of pneumonia";
  return `Findings most consistent with: ${prediction}`;
}

export function percent(p) {
  return `${(Math.round(p * 1000) / 10).toFixed(1)}%`;
}

export function formatBytes(n) {
  if (n >= 1024 * 1024) return `${+(n / (1024 * 1024)).toFixed(1)} MB`;
  if (n >= 1024) return `${+(n / 1024).toFixed(1)} KB`;
  return `${n} bytes`;
}

// --------------------------------------------------------------------------------------------- view

const $ = (id) => document.getElementById(id);

export const view = {
  previewUrl: null,

  showPreview(file) {
    if (this.previewUrl) URL.revokeObjectURL(this.previewUrl);
    this.previewUrl = URL.createObjectURL(file);
    const img = $("preview");
    $("preview-stage").hidden = false;
    $("preview-unavailable").hidden = true;
    img.hidden = false;
    // Browsers cannot preview every file (e.g. a corrupt one); the API still says what is wrong.
    img.onerror = () => {
      img.hidden = true;
      $("preview-unavailable").hidden = false;
    };
    img.src = this.previewUrl;
    $("file-name").textContent = `${file.name} (${formatBytes(file.size)})`;
    $("drop-zone").dataset.state = "selected";
  },

  /** The status line: visible for prompts, screen-reader-only for result summaries. */
  announce(text, { visible }) {
    $("status").textContent = text;
    $("status").classList.toggle("visually-hidden", !visible);
  },

  setBusy(busy, file) {
    $("choose-button").disabled = busy;
    $("result").setAttribute("aria-busy", String(busy));
    if (busy) {
      $("status").dataset.busy = "true";
      this.announce(`Analysing ${file.name}…`, { visible: true });
    } else {
      delete $("status").dataset.busy;
    }
  },

  clear() {
    $("error").hidden = true;
    $("result").hidden = true;
  },

  showResult(result) {
    const finding = findingText(result.prediction);
    const confidence = percent(result.confidence);
    $("finding").textContent = finding;
    $("confidence-fill").style.width = `${Math.max(0, Math.min(1, result.confidence)) * 100}%`;
    const bar = $("confidence-bar");
    bar.setAttribute("aria-valuenow", String(Math.round(result.confidence * 100)));
    bar.setAttribute("aria-valuetext", confidence);
    $("confidence-value").textContent = confidence;
    $("review-warning").hidden = !result.needs_review;
    $("result").dataset.needsReview = String(Boolean(result.needs_review));

    const list = $("probabilities");
    list.replaceChildren();
    for (const [name, p] of Object.entries(result.probabilities || {})) {
      const dt = document.createElement("dt");
      dt.textContent = name;
      const dd = document.createElement("dd");
      dd.textContent = percent(p);
      list.append(dt, dd);
    }
    const notes = $("result-notes");
    notes.replaceChildren(...(result.notes || []).map((n) => {
      const li = document.createElement("li");
      li.textContent = n;
      return li;
    }));
    notes.hidden = !(result.notes || []).length;
    if (result.preview) {
      const img = $("preview");
      img.src = result.preview;
      img.hidden = false;
      $("preview-stage").hidden = false;
      $("preview-unavailable").hidden = true;
    }
    $("result-disclaimer").textContent = result.disclaimer;
    const m = result.model || {};
    $("result-meta").textContent =
      `Model ${m.architecture || "?"}${m.version ? ` ${m.version}` : ""}` +
      `${m.sha256 ? ` (sha256 ${m.sha256.slice(0, 12)})` : ""} · ${result.inference_ms} ms on the server`;
    $("error").hidden = true;
    $("result").hidden = false;
    this.announce(`${finding}. Model confidence ${confidence}.` +
      (result.needs_review ? " Manual review suggested." : ""), { visible: false });
  },

  showError(title, message) {
    $("error-title").textContent = title;
    $("error-detail").textContent = message;
    $("result").hidden = true;
    $("error").hidden = false;
    this.announce("", { visible: false }); // role=alert on #error speaks it once
  },

  showModelInfo(card) {
    const parts = [`Model: ${card.architecture}`];
    if (card.version) parts.push(card.version);
    if (card.sha256) parts.push(`sha256 ${card.sha256.slice(0, 12)}`);
    $("model-info").textContent = parts.join(" · ");
  },
};

// --------------------------------------------------------------------------------------- controller

function emit(name, detail) {
  document.dispatchEvent(new CustomEvent(name, { detail }));
}

let latestRequest = 0;

export async function analyzeFile(file) {
  const request = ++latestRequest;
  const maxBytes = Number(document.body.dataset.maxUploadBytes) || Infinity;
  view.clear();
  view.showPreview(file);
  const title = `Could not analyse ${file.name}`;
  if (file.size > maxBytes) {
    // Same limit the server enforces (413); saves sending a file that would be refused.
    const message = `the file is ${formatBytes(file.size)}, larger than the ${formatBytes(maxBytes)} limit`;
    view.showError(title, message);
    emit("mediflow:error", { file, message });
    return;
  }
  view.setBusy(true, file);
  emit("mediflow:analyzing", { file });
  try {
    const result = await api.analyze(file);
    if (request !== latestRequest) return; // a newer file was chosen meanwhile
    view.showResult(result);
    emit("mediflow:result", { file, result, previewUrl: view.previewUrl });
  } catch (err) {
    if (request !== latestRequest) return;
    view.showError(title, err.message);
    emit("mediflow:error", { file, message: err.message });
  } finally {
    if (request === latestRequest) view.setBusy(false);
  }
}

function init() {
  const input = $("file-input");
  const zone = $("drop-zone");

  $("choose-button").addEventListener("click", () => input.click());
  input.addEventListener("change", () => {
    if (input.files.length) analyzeFile(input.files[0]);
    input.value = ""; // choosing the same file again must trigger a new analysis
  });

  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.dataset.state = "dragover";
  });
  zone.addEventListener("dragleave", () => {
    zone.dataset.state = view.previewUrl ? "selected" : "empty";
  });
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.dataset.state = view.previewUrl ? "selected" : "empty";
    const files = e.dataTransfer && e.dataTransfer.files;
    if (files && files.length) analyzeFile(files[0]);
  });
  // A drop that misses the zone must not navigate away from the page (and lose the result).
  for (const type of ["dragover", "drop"]) window.addEventListener(type, (e) => e.preventDefault());

  api.modelCard().then((card) => view.showModelInfo(card)).catch(() => {
    $("model-info").textContent = "Model information unavailable";
  });
}

init();
