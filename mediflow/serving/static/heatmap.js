// MediFlow heatmap overlay: shows where the model looked, over an X-ray, with an opacity control and
// a show/hide toggle. Self-contained ES module (styles in heatmap.css, which it links).
//
// Any page: import { attachHeatmap } from "/static/heatmap.js" and call
//   attachHeatmap(stage, image, { dataUrl, className, controlsParent, opacity, visible, onChange })
// where `stage` (position: relative) holds the <img> `image`. It returns { overlay, controls, remove() }.
// One overlay per page: the elements have fixed ids (#heatmap-overlay, #heatmap-controls,
// #heatmap-toggle, #heatmap-opacity).
//
// The doctor's page includes it with <script type="module" src="/static/heatmap.js"></script>; when
// the page has #preview-stage holding <img id="preview">, the module listens on `document` for:
//   "mediflow:analyzing" {file}          -> remove the previous overlay
//   "mediflow:result"    {file, result}  -> draw result.heatmap; when the page's request did not ask
//                                           for one, offer a button that asks (?heatmap=true)
//   "mediflow:error"     {file, message} -> remove the overlay
// The heatmap is a square PNG (the model's squashed input), so it is stretched over the image box.

const ANALYZE_HEATMAP_URL = "/api/vision/analyze?heatmap=true";
const STYLESHEET = "/static/heatmap.css";
export const DEFAULT_OPACITY = 45; // percent


const $ = (id) => document.getElementById(id);
const element = (tag, props) => Object.assign(document.createElement(tag), props);
// The controls' box: the toggle and slider, or the doctor's page's "show" button; one at a time.
const controlsBox = () => element("div", { id: "heatmap-controls", className: "mf-heatmap-controls" });

/** Link heatmap.css once: a <style> element would be refused by a page's Content-Security-Policy. */
export function ensureStylesheet() {
  if (document.querySelector(`link[href="${STYLESHEET}"]`)) return;
  document.head.append(element("link", { rel: "stylesheet", href: STYLESHEET }));
}

/** A wrapping <label>, so the control's accessible name is its visible text. */
function labelled(...parts) {
  const label = document.createElement("label");
  label.append(...parts);
  return label;
}

/** The toggle, the opacity slider and the caveat; `settings` ({opacity, visible}) is updated in place. */
function overlayControls(settings, className, changed) {
  const box = controlsBox();
  const check = element("input", { type: "checkbox", id: "heatmap-toggle", checked: settings.visible });
  check.addEventListener("change", () => { settings.visible = check.checked; changed(); });

  const range = element("input", { type: "range", id: "heatmap-opacity", min: "0", max: "100", step: "5",
                                   value: String(settings.opacity) });
  range.setAttribute("aria-valuetext", `${settings.opacity}%`);
  range.addEventListener("input", () => {
    settings.opacity = Number(range.value);
    range.setAttribute("aria-valuetext", `${settings.opacity}%`);
    changed();
  });

  const note = element("p", { className: "mf-heatmap-note" });
  note.textContent = `Red: regions that most raised the model's score for ${className || "its finding"}. ` +
    "A visual aid to the model's attention, not a localisation of disease.";
  box.append(labelled(check, "Show heatmap"), labelled("Heatmap opacity", range), note);
  return box;
}

/**
 * Lay the heatmap `dataUrl` over `image` (inside `stage`, which must be position: relative) and add
 * its controls to `controlsParent` (default: the stage's parent). `onChange({opacity, visible})`
 * lets a page keep the reader's choice for the next image.
 */
export function attachHeatmap(stage, image, { dataUrl, className, controlsParent, opacity = DEFAULT_OPACITY,
                                               visible = true, onChange = () => {} } = {}) {
  ensureStylesheet();
  const settings = { opacity, visible };
  // alt="": decorative for screen readers; the note in the controls says what it shows.
  const overlay = element("img", { id: "heatmap-overlay", className: "mf-heatmap", alt: "", src: dataUrl });
  stage.append(overlay);

  // Keep the overlay exactly over the rendered image (it may be letterboxed, resized or still loading).
  const place = () => Object.assign(overlay.style, {
    left: `${image.offsetLeft}px`, top: `${image.offsetTop}px`,
    width: `${image.offsetWidth}px`, height: `${image.offsetHeight}px`,
  });
  const applyOpacity = () => { overlay.style.opacity = String(settings.visible ? settings.opacity / 100 : 0); };
  const observer = new ResizeObserver(place);
  observer.observe(image);

  const controls = overlayControls(settings, className, () => { applyOpacity(); onChange({ ...settings }); });
  (controlsParent || stage.parentElement || document.body).append(controls);
  place();
  applyOpacity();
  return {
    overlay,
    controls,
    remove() {
      observer.disconnect();
      overlay.remove();
      controls.remove();
    },
  };
}

// -- the doctor's page ------------------------------------------------------------------------------
export const heatmap = {
  handle: null,
  button: null,
  file: null,
  opacity: DEFAULT_OPACITY,
  visible: true,

  clear() {
    this.handle?.remove();
    this.button?.remove();
    this.handle = this.button = null;
  },

  show(dataUrl, className) {
    const stage = $("preview-stage");
    const img = $("preview");
    if (!stage || !img || img.hidden) return;
    this.clear();
    this.handle = attachHeatmap(stage, img, {
      dataUrl, className, opacity: this.opacity, visible: this.visible,
      onChange: ({ opacity, visible }) => { this.opacity = opacity; this.visible = visible; },
    });
  },

  /** No map in the result: a button that asks the server for one. */
  offer() {
    this.clear();
    const box = controlsBox();
    const button = element("button", { type: "button", id: "heatmap-button", className: "button",
                                       textContent: "Show where the model looked" });
    button.addEventListener("click", () => this.request(button));
    box.append(button);
    ($("preview-stage")?.parentElement || document.body).append(box);
    this.button = box;
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
    else this.offer();
  },
};

ensureStylesheet();
// Only the doctor's page (a #preview-stage fed by app.js's events) is wired automatically; other
// pages import attachHeatmap and decide themselves when to draw.
if ($("preview-stage")) {
  document.addEventListener("mediflow:analyzing", () => heatmap.clear());
  document.addEventListener("mediflow:error", () => heatmap.clear());
  document.addEventListener("mediflow:result", (e) => heatmap.onResult(e.detail.file, e.detail.result));
}
