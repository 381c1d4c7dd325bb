// The image viewer of every view: a canvas over the server-decoded (or browser-decoded) 8-bit image
// with window/level, zoom, pan, reset and the heatmap overlay.
//
// Why a canvas and not Cornerstone3D: the server already decodes every format it accepts (DICOM
// included, with its VOI LUT and MONOCHROME1 handling) into the 8-bit image the model saw, and the
// app shows exactly that. Cornerstone3D would decode the DICOM a second time in the browser, needs
// WebAssembly codecs and web workers (CSP 'wasm-unsafe-eval' and worker-src), and adds megabytes
// to a bundle that is ~70 kB gzipped. See docs/serving.md.
import { useCallback, useEffect, useId, useRef, useState, type KeyboardEvent, type PointerEvent } from "react";

export interface HeatmapLayer {
  src: string;
  /** The class the map explains. */
  className: string;
}

interface Props {
  src: string | null;
  alt: string;
  heatmap?: HeatmapLayer | null;
  /** Offered as a button when there is no heatmap yet. */
  onRequestHeatmap?: () => void;
  /** E.g. "Computing heatmap…" or why there is none. */
  heatmapStatus?: string;
}

interface Window_ { width: number; level: number }

/** Presets on the displayed 8-bit grey levels (X-rays have no Hounsfield scale). */
export const PRESETS: { name: string; width: number; level: number }[] = [
  { name: "As delivered", width: 256, level: 128 },
  { name: "Lung fields (darker range)", width: 170, level: 95 },
  { name: "Dense structures (brighter range)", width: 150, level: 175 },
  { name: "High contrast", width: 100, level: 128 },
];
const DEFAULT = PRESETS[0];
const MAX_SIDE = 1024; // the server's previews are at most 1024 px; browser-decoded files are scaled to it
const ZOOM_MIN = 1;
const ZOOM_MAX = 8;

// The reader's heatmap choice carries over from one image to the next, for this tab.
const heatmapPreference = { visible: true, opacity: 0.45 };

function clamp(v: number, lo: number, hi: number): number {
  return Math.min(hi, Math.max(lo, v));
}

/** Grey levels of the image (Rec. 601 luma of RGB), scaled so the long side is at most MAX_SIDE. */
function luminance(img: HTMLImageElement): { grey: Uint8ClampedArray; w: number; h: number } {
  const scale = Math.min(1, MAX_SIDE / Math.max(img.naturalWidth, img.naturalHeight));
  const w = Math.max(1, Math.round(img.naturalWidth * scale));
  const h = Math.max(1, Math.round(img.naturalHeight * scale));
  const c = document.createElement("canvas");
  c.width = w;
  c.height = h;
  const ctx = c.getContext("2d", { willReadFrequently: true })!;
  ctx.drawImage(img, 0, 0, w, h);
  const rgba = ctx.getImageData(0, 0, w, h).data;
  const grey = new Uint8ClampedArray(w * h);
  for (let i = 0, j = 0; j < grey.length; i += 4, j += 1) {
    grey[j] = 0.299 * rgba[i] + 0.587 * rgba[i + 1] + 0.114 * rgba[i + 2];
  }
  return { grey, w, h };
}

/** Linear window (DICOM PS3.3 C.11.2.1.2 style, on 0..255): level ± width/2 maps to black..white. */
function windowed(grey: Uint8ClampedArray, w: number, h: number, win: Window_): HTMLCanvasElement {
  const lut = new Uint8ClampedArray(256);
  const lo = win.level - win.width / 2;
  for (let v = 0; v < 256; v += 1) lut[v] = ((v - lo) / win.width) * 255;
  const c = document.createElement("canvas");
  c.width = w;
  c.height = h;
  const ctx = c.getContext("2d")!;
  const out = ctx.createImageData(w, h);
  for (let j = 0, i = 0; j < grey.length; j += 1, i += 4) {
    const g = lut[grey[j]];
    out.data[i] = g;
    out.data[i + 1] = g;
    out.data[i + 2] = g;
    out.data[i + 3] = 255;
  }
  ctx.putImageData(out, 0, 0);
  return c;
}

function loadImage(src: string): Promise<HTMLImageElement> {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser cannot draw this image"));
    img.src = src;
  });
}

export function ImageViewer({ src, alt, heatmap, onRequestHeatmap, heatmapStatus }: Props) {
  const id = useId();
  const canvasRef = useRef<HTMLCanvasElement>(null);
  const [base, setBase] = useState<{ grey: Uint8ClampedArray; w: number; h: number } | null>(null);
  const [failed, setFailed] = useState(false);
  const [heat, setHeat] = useState<HTMLImageElement | null>(null);
  const [win, setWin] = useState<Window_>({ width: DEFAULT.width, level: DEFAULT.level });
  const [zoom, setZoom] = useState(1);
  const [pan, setPan] = useState({ x: 0, y: 0 });
  const [mode, setMode] = useState<"window" | "pan">("window");
  const [heatVisible, setHeatVisible] = useState(heatmapPreference.visible);
  const [opacity, setOpacity] = useState(heatmapPreference.opacity);
  const drag = useRef<{ x: number; y: number; win: Window_; pan: { x: number; y: number } } | null>(null);

  const resetView = useCallback(() => {
    setWin({ width: DEFAULT.width, level: DEFAULT.level });
    setZoom(1);
    setPan({ x: 0, y: 0 });
  }, []);

  useEffect(() => {
    setBase(null);
    setFailed(false);
    resetView();
    if (!src) return;
    let live = true;
    loadImage(src).then((img) => { if (live) setBase(luminance(img)); }, () => { if (live) setFailed(true); });
    return () => { live = false; };
  }, [src, resetView]);

  useEffect(() => {
    setHeat(null);
    if (!heatmap) return;
    let live = true;
    loadImage(heatmap.src).then((img) => { if (live) setHeat(img); }, () => undefined);
    return () => { live = false; };
  }, [heatmap]);

  const windowedCanvas = useRef<{ key: string; canvas: HTMLCanvasElement } | null>(null);

  // Draw: the windowed image under the zoom/pan transform, then the heatmap stretched over it.
  useEffect(() => {
    const canvas = canvasRef.current;
    if (!canvas || !base) return;
    const key = `${win.width}/${win.level}`;
    if (windowedCanvas.current?.key !== key || windowedCanvas.current.canvas.width !== base.w
        || windowedCanvas.current.canvas.height !== base.h) {
      windowedCanvas.current = { key, canvas: windowed(base.grey, base.w, base.h, win) };
    }
    canvas.width = base.w;
    canvas.height = base.h;
    const ctx = canvas.getContext("2d")!;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, base.w, base.h);
    ctx.translate(base.w / 2 + pan.x, base.h / 2 + pan.y);
    ctx.scale(zoom, zoom);
    ctx.translate(-base.w / 2, -base.h / 2);
    ctx.imageSmoothingEnabled = zoom < 2; // past 2x the reader wants to see the pixels
    ctx.drawImage(windowedCanvas.current.canvas, 0, 0);
    if (heat && heatVisible && opacity > 0) {
      ctx.globalAlpha = opacity;
      ctx.imageSmoothingEnabled = true;
      ctx.drawImage(heat, 0, 0, base.w, base.h);
      ctx.globalAlpha = 1;
    }
  }, [base, win, zoom, pan, heat, heatVisible, opacity]);

  const setZoomClamped = useCallback((z: number) => setZoom(clamp(z, ZOOM_MIN, ZOOM_MAX)), []);

  // Wheel zoom needs a non-passive listener (React's onWheel cannot preventDefault the page scroll).
  useEffect(() => {
    const canvas = canvasRef.current;
    if (!canvas) return;
    const onWheel = (e: WheelEvent) => {
      e.preventDefault();
      setZoom((z) => clamp(z * Math.pow(1.1, -e.deltaY / 100), ZOOM_MIN, ZOOM_MAX));
    };
    canvas.addEventListener("wheel", onWheel, { passive: false });
    return () => canvas.removeEventListener("wheel", onWheel);
  }, [base]);

  function canvasScale(): number {
    const canvas = canvasRef.current;
    if (!canvas || !base) return 1;
    // The canvas is scaled to fit its box (object-fit: contain): one screen pixel is 1/fit image pixels.
    const rect = canvas.getBoundingClientRect();
    const fit = Math.min(rect.width / base.w, rect.height / base.h);
    return fit > 0 ? 1 / fit : 1;
  }

  function onPointerDown(e: PointerEvent<HTMLCanvasElement>) {
    if (e.button !== 0 && e.button !== 1) return;
    e.currentTarget.setPointerCapture(e.pointerId);
    drag.current = { x: e.clientX, y: e.clientY, win, pan };
  }

  function onPointerMove(e: PointerEvent<HTMLCanvasElement>) {
    const d = drag.current;
    if (!d) return;
    const dx = (e.clientX - d.x) * canvasScale();
    const dy = (e.clientY - d.y) * canvasScale();
    // Middle button or the pan tool pans; otherwise horizontal drag = width, vertical = level,
    // the convention of radiology viewers.
    if (mode === "pan" || (e.buttons & 4) !== 0) setPan({ x: d.pan.x + dx, y: d.pan.y + dy });
    else setWin({ width: Math.round(clamp(d.win.width + dx, 1, 512)), level: Math.round(clamp(d.win.level + dy, 0, 255)) });
  }

  function onPointerUp(e: PointerEvent<HTMLCanvasElement>) {
    drag.current = null;
    if (e.currentTarget.hasPointerCapture(e.pointerId)) e.currentTarget.releasePointerCapture(e.pointerId);
  }

  function onKeyDown(e: KeyboardEvent<HTMLCanvasElement>) {
    const step = 20 / zoom;
    const moves: Record<string, [number, number]> = {
      ArrowLeft: [step, 0], ArrowRight: [-step, 0], ArrowUp: [0, step], ArrowDown: [0, -step],
    };
    if (e.key in moves) {
      const [dx, dy] = moves[e.key];
      setPan((p) => ({ x: p.x + dx, y: p.y + dy }));
    } else if (e.key === "+" || e.key === "=") setZoomClamped(zoom * 1.25);
    else if (e.key === "-") setZoomClamped(zoom / 1.25);
    else if (e.key === "0") resetView();
    else return;
    e.preventDefault();
    e.stopPropagation(); // the worklist's J/K keys stay free; arrows here move the image
  }

  function changeVisible(v: boolean) {
    heatmapPreference.visible = v;
    setHeatVisible(v);
  }

  function changeOpacity(v: number) {
    heatmapPreference.opacity = v;
    setOpacity(v);
  }

  const preset = PRESETS.find((p) => p.width === win.width && p.level === win.level);
  const heatState = !heat ? "none" : heatVisible && opacity > 0 ? "shown" : "hidden";

  return (
    <figure className="viewer" aria-labelledby={`${id}-caption`}>
      <div className="viewer-stage">
        {src && !failed && (
          <canvas ref={canvasRef} className="viewer-canvas" role="img" aria-label={alt} tabIndex={0}
                  aria-describedby={`${id}-keys`} data-testid="viewer-canvas" data-ready={base ? "true" : "false"}
                  data-window-width={win.width} data-window-level={win.level} data-zoom={zoom.toFixed(2)}
                  data-heatmap={heatState}
                  onPointerDown={onPointerDown} onPointerMove={onPointerMove} onPointerUp={onPointerUp}
                  onPointerCancel={onPointerUp} onKeyDown={onKeyDown} />
        )}
        {!src && <p className="viewer-empty">No image to show.</p>}
        {failed && <p className="viewer-empty" data-testid="viewer-failed">No preview for this file.</p>}
      </div>
      <figcaption id={`${id}-caption`} className="visually-hidden">{alt}</figcaption>
      <p id={`${id}-keys`} className="hint">
        Drag on the image to {mode === "pan" ? "pan" : "change window (left/right) and level (up/down)"};
        wheel or + and − to zoom; arrow keys pan; 0 resets.
      </p>
      <div className="viewer-tools" role="group" aria-label="Image display">
        <label className="field">
          <span>Window preset</span>
          <select value={preset?.name ?? ""} onChange={(e) => {
            const p = PRESETS.find((q) => q.name === e.target.value);
            if (p) setWin({ width: p.width, level: p.level });
          }}>
            {!preset && <option value="">Custom ({win.width} / {win.level})</option>}
            {PRESETS.map((p) => <option key={p.name} value={p.name}>{p.name}</option>)}
          </select>
        </label>
        <label className="field">
          <span>Window width</span>
          <input type="range" min={1} max={512} value={win.width} aria-valuetext={String(win.width)}
                 onChange={(e) => setWin({ ...win, width: Number(e.target.value) })} />
        </label>
        <label className="field">
          <span>Window level</span>
          <input type="range" min={0} max={255} value={win.level} aria-valuetext={String(win.level)}
                 onChange={(e) => setWin({ ...win, level: Number(e.target.value) })} />
        </label>
        <fieldset className="segmented">
          <legend>Mouse drag</legend>
          <label><input type="radio" name={`${id}-mode`} checked={mode === "window"}
                        onChange={() => setMode("window")} /> Window/level</label>
          <label><input type="radio" name={`${id}-mode`} checked={mode === "pan"}
                        onChange={() => setMode("pan")} /> Pan</label>
        </fieldset>
        <div className="button-row">
          <button type="button" className="button" onClick={() => setZoomClamped(zoom / 1.25)}
                  disabled={zoom <= ZOOM_MIN}>Zoom out</button>
          <output className="zoom-value" aria-label="Zoom" aria-live="polite">{Math.round(zoom * 100)}%</output>
          <button type="button" className="button" onClick={() => setZoomClamped(zoom * 1.25)}
                  disabled={zoom >= ZOOM_MAX}>Zoom in</button>
          <button type="button" className="button" onClick={resetView}>Reset view</button>
        </div>
      </div>
      <div className="heatmap-tools" role="group" aria-label="Heatmap" data-testid="heatmap-controls">
        {heatmap ? (
          <>
            <label className="check">
              <input type="checkbox" checked={heatVisible} onChange={(e) => changeVisible(e.target.checked)} />
              Show heatmap
            </label>
            <label className="field">
              <span>Heatmap opacity</span>
              <input type="range" min={0} max={100} step={5} value={Math.round(opacity * 100)}
                     aria-valuetext={`${Math.round(opacity * 100)}%`} disabled={!heatVisible}
                     onChange={(e) => changeOpacity(Number(e.target.value) / 100)} />
            </label>
            <p className="hint">Where the model looked for its finding ({heatmap.className}); not a delineation of disease.</p>
          </>
        ) : onRequestHeatmap ? (
          <button type="button" className="button" onClick={onRequestHeatmap}>Show where the model looked</button>
        ) : null}
        {heatmapStatus && <p className="hint" role="status">{heatmapStatus}</p>}
      </div>
    </figure>
  );
}
