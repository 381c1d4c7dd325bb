// MediFlow heatmap overlay: shows where the model looked, over the X-ray preview, with an opacity
// control. Self-contained ES module (styles in heatmap.css, which it links); the page includes it with
//   <script type="module" src="/static/heatmap.js"></script>
// It needs #preview-stage (position: relative) holding the <img id="preview">, and listens on
// `document` for the page's events:
//   "mediflow:analyzing" {file}          -> remove the previous overlay
//   "mediflow:result"    {file, result}  -> draw result.heatmap; when the page's request did not ask
//                                           for one, offer a button that asks (?heatmap=true)
//   "mediflow:error"     {file, message} -> remove the overlay
// The heatmap is a square PNG (the model's squashed input), so it is stretched over the image box.

const ANALYZE_HEATMAP_URL = "/api/vision/analyze?heatmap=true";
const DEFAULT_OPACITY = 45; // percent


const $ = (id) => document.getElementById(id);

export const heatmap = {
  overlay: null,
  controls: null,
  file: null,
  observer: null,
  opacity: DEFAULT_OPACITY,
  visible: true,

  clear() {
    this.overlay?.remove();
    this.controls?.remove();
    this.observer?.disconnect();
    this.overlay = this.controls = this.observer = null;
  },

  /** Keep the overlay exactly over the rendered image (it may be letterboxed or resized). */
  place() {
    const img = $("preview");
    if (!this.overlay || !img) return;
    Object.assign(this.overlay.style, {
      left: `${img.offsetLeft}px`, top: `${img.offsetTop}px`,
      width: `${img.offsetWidth}px`, height: `${img.offsetHeight}px`,
    });
  },

  applyOpacity() {
    if (!this.overlay) return;
    this.overlay.style.opacity = String(this.visible ? this.opacity / 100 : 0);
  },

  show(dataUrl, className) {
    const stage = $("preview-stage");
    const img = $("preview");
    if (!stage || !img || img.hidden) return;
    this.overlay?.remove();
    const overlay = document.createElement("img");
    overlay.id = "heatmap-overlay";
    overlay.className = "mf-heatmap";
    overlay.alt = "";  // decorative for screen readers; the note below says what it shows
    overlay.src = dataUrl;
    stage.append(overlay);
    this.overlay = overlay;
    this.place();
    this.applyOpacity();
    this.observer?.disconnect();
    this.observer = new ResizeObserver(() => this.place());
    this.observer.observe(img);
    this.renderControls({ className, hasMap: true });
  },

  renderControls({ className, hasMap }) {
    this.controls?.remove();
    const box = document.createElement("div");
    box.id = "heatmap-controls";
    box.className = "mf-heatmap-controls";
    if (hasMap) {
      const toggle = document.createElement("label");
      const check = document.createElement("input");
      check.type = "checkbox";
      check.id = "heatmap-toggle";
      check.checked = this.visible;
      check.addEventListener("change", () => { this.visible = check.checked; this.applyOpacity(); });
      toggle.append(check, "Show heatmap");

      const slider = document.createElement("label");
      const range = document.createElement("input");
      range.type = "range";
      range.id = "heatmap-opacity";
      range.min = "0";
      range.max = "100";
      range.step = "5";
      range.value = String(this.opacity);
      range.setAttribute("aria-valuetext", `${this.opacity}%`);
      range.addEventListener("input", () => {
        this.opacity = Number(range.value);
        range.setAttribute("aria-valuetext", `${this.opacity}%`);
        this.applyOpacity();
      });
      slider.append("Heatmap opacity", range);

      const note = document.createElement("p");
      note.className = "mf-heatmap-note";
      note.textContent = `Red: regions that most raised the model's score for ${className || "its finding"}. ` +
        "A visual aid to the model's attention, not a localisation of disease.";
      box.append(toggle, slider, note);
    } else {
      const button = document.createElement("button");
      button.type = "button";
      button.id = "heatmap-button";
      button.className = "button";
      button.textContent = "Show where the model looked";
      button.addEventListener("click", () => this.request(button));
      box.append(button);
    }
    ($("preview-stage")?.parentElement || document.body).append(box);
    this.controls = box;
  },

  async request(button) {
    const file = this.file;
    if (!file) return;
    button.disabled = true;
    button.textContent = "Computing heatmap…";
    try {
      const form = new FormData();
      form.append("file", file, file.name);
      const response = await fetch(ANALYZE_HEATMAP_URL, { method: "POST", body: form });
      const body = await response.json().catch(() => ({}));
      if (!response.ok || !body.heatmap) throw new Error(typeof body.detail === "string" ? body.detail : "no heatmap");
      if (file === this.file) this.show(body.heatmap, body.heatmap_class);
    } catch (err) {
      button.disabled = false;
      button.textContent = `Heatmap unavailable (${err.message}); try again`;
    }
  },

  onResult(file, result) {
    this.file = file;
    if (result && result.heatmap) this.show(result.heatmap, result.heatmap_class);
    else this.renderControls({ hasMap: false });
  },
};

function init() {
  // A stylesheet file, not a <style> element: the page's Content-Security-Policy allows only 'self'.
  if (!document.querySelector('link[href="/static/heatmap.css"]')) {
    const link = document.createElement("link");
    link.rel = "stylesheet";
    link.href = "/static/heatmap.css";
    document.head.append(link);
  }
  document.addEventListener("mediflow:analyzing", () => heatmap.clear());
  document.addEventListener("mediflow:error", () => heatmap.clear());
  document.addEventListener("mediflow:result", (e) => heatmap.onResult(e.detail.file, e.detail.result));
}

init();
