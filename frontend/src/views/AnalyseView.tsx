// Analyse: choose or drop one or more X-rays; each is analysed in turn, with upload progress; the
// selected one is shown in the viewer beside its finding.
import { useEffect, useRef, useState, type DragEvent } from "react";
import { analyze, ApiError, needsServerPreview, type Analysis, type InputCheck } from "../api";
import { config, formatBytes } from "../config";
import { Finding } from "../components/Finding";
import { InputCheckView } from "../components/InputCheckView";
import { ImageViewer } from "../components/ImageViewer";
import { findingText, reviewText } from "../finding";

interface Item {
  id: number;
  file: File;
  state: "queued" | "uploading" | "analysing" | "done" | "error";
  progress: number;
  result?: Analysis;
  error?: string;
  /** The input check's refusal (no finding). */
  rejection?: InputCheck;
  /** What the viewer shows: the browser's own decoding, or the server's PNG for DICOM and TIFF. */
  imageUrl?: string;
}

let nextId = 1;
const ACCEPT = "image/jpeg,image/png,image/webp,image/tiff,application/dicom,.jpg,.jpeg,.png,.webp,.tif,.tiff,.dcm,.dicom";

export function AnalyseView() {
  const [items, setItems] = useState<Item[]>([]);
  const [selected, setSelected] = useState<number | null>(null);
  const [dragging, setDragging] = useState(false);
  const [status, setStatus] = useState("Choose or drop chest X-rays to analyse.");
  const inputRef = useRef<HTMLInputElement>(null);
  const queue = useRef<Promise<void>>(Promise.resolve());
  const urls = useRef<string[]>([]);

  useEffect(() => () => { urls.current.forEach((u) => URL.revokeObjectURL(u)); }, []);

  const update = (id: number, patch: Partial<Item>) =>
    setItems((all) => all.map((it) => (it.id === id ? { ...it, ...patch } : it)));

  async function run(item: Item) {
    if (item.file.size > config.maxUploadBytes) {
      update(item.id, { state: "error", error: `${formatBytes(item.file.size)} is larger than the ${config.maxUpload} limit` });
      setStatus(`${item.file.name}: not analysed.`);
      return;
    }
    update(item.id, { state: "uploading" });
    setStatus(`Analysing ${item.file.name}…`);
    try {
      const result = await analyze(item.file, (f) => update(item.id, { progress: f, state: f >= 1 ? "analysing" : "uploading" }));
      let imageUrl = result.preview ?? undefined;
      if (!imageUrl && !needsServerPreview(item.file)) {
        imageUrl = URL.createObjectURL(item.file);
        urls.current.push(imageUrl);
      }
      update(item.id, { state: "done", progress: 1, result, imageUrl });
      const why = reviewText(result.needs_review, result.input_check?.status === "warning");
      setStatus(`${item.file.name}: ${findingText(result.prediction)}. ${why}`.trim());
    } catch (e) {
      const message = e instanceof ApiError ? e.message : String(e);
      const rejection = e instanceof ApiError && e.inputCheck ? e.inputCheck : undefined;
      update(item.id, { state: "error", error: message, rejection });
      setStatus(`${item.file.name}: not analysed.`);
    }
  }

  function add(files: File[]) {
    if (!files.length) return;
    const added = files.map((file): Item => ({ id: nextId++, file, state: "queued", progress: 0 }));
    setItems((all) => [...added, ...all]);
    setSelected(added[0].id);
    // One upload at a time: the server analyses one image at a time anyway.
    for (const it of added) queue.current = queue.current.then(() => run(it));
  }

  function onDrop(e: DragEvent<HTMLDivElement>) {
    e.preventDefault();
    setDragging(false);
    add(Array.from(e.dataTransfer.files));
  }

  const current = items.find((it) => it.id === selected) ?? null;

  return (
    <div className="layout">
      <section className="panel" aria-labelledby="upload-heading">
        <h1 id="upload-heading" className="panel-title">Analyse X-rays</h1>
        <div className={`drop-zone${dragging ? " drop-zone-active" : ""}`} data-testid="drop-zone"
             onDragOver={(e) => { e.preventDefault(); setDragging(true); }}
             onDragLeave={() => setDragging(false)} onDrop={onDrop}>
          <p className="drop-hint">Drag and drop chest X-rays here, or</p>
          <button type="button" className="button primary" data-testid="choose-button"
                  aria-describedby="file-rules" onClick={() => inputRef.current?.click()}>Choose X-rays…</button>
          <input ref={inputRef} type="file" multiple accept={ACCEPT} hidden data-testid="file-input"
                 aria-label="Chest X-ray files" onChange={(e) => {
                   add(Array.from(e.target.files ?? []));
                   e.target.value = "";
                 }} />
          <p id="file-rules" className="hint">
            JPEG, PNG, WebP, TIFF or DICOM, up to {config.maxUpload} each. Images are analysed in memory; the server
            keeps them only if it was started with a study store that stores images.
          </p>
        </div>
        <p className="status" role="status" aria-live="polite" data-testid="status">{status}</p>
        {items.length > 0 && (
          <ul className="file-list" aria-label="Analysed files">
            {items.map((it) => (
              <li key={it.id}>
                <button type="button" className="file-item" aria-pressed={it.id === selected}
                        onClick={() => setSelected(it.id)} data-state={it.state}>
                  <span className="file-name">{it.file.name} ({formatBytes(it.file.size)})</span>
                  <span className="file-state">{stateText(it)}</span>
                  {(it.state === "uploading" || it.state === "analysing") && (
                    <progress max={1} value={it.state === "analysing" ? undefined : it.progress}
                              aria-label={`Upload of ${it.file.name}`} />
                  )}
                </button>
              </li>
            ))}
          </ul>
        )}
      </section>

      <section className="panel" aria-labelledby="result-heading">
        <h2 id="result-heading" className="panel-title">Finding</h2>
        {!current && <p className="hint">The finding for the selected file appears here.</p>}
        {current?.state === "error" && (
          <div className="callout callout-error" role="alert" data-testid="error">
            <p className="error-title">{current.file.name} was not analysed</p>
            <p data-testid="error-detail">{current.error}</p>
          </div>
        )}
        {current?.state === "error" && current.rejection && <InputCheckView check={current.rejection} />}
        {current && current.state !== "done" && current.state !== "error" && (
          <p className="hint">{stateText(current)}</p>
        )}
        {current?.result && (
          <>
            <Finding
              finding={{ prediction: current.result.prediction, confidence: current.result.confidence,
                         needsReview: current.result.needs_review, probabilities: current.result.probabilities }}
              notes={current.result.notes} disclaimer={current.result.disclaimer}
              inputCheck={current.result.input_check}
              meta={`${current.file.name} · model ${current.result.model.architecture} ${current.result.model.version}` +
                    ` · ${Math.round(current.result.inference_ms)} ms on the server` +
                    (current.result.study_id ? " · saved to the worklist" : "") +
                    (current.result.duplicate_of ? ` · the same image as study ${current.result.duplicate_of.slice(0, 8)}…, uploaded before` : "")} />
            <ImageViewer src={current.imageUrl ?? null} alt={`Chest X-ray ${current.file.name}`}
                         heatmap={current.result.heatmap ? { src: current.result.heatmap,
                                                             className: current.result.heatmap_class ?? current.result.prediction } : null}
                         heatmapStatus={current.result.heatmap ? undefined : "No heatmap for this image."} />
          </>
        )}
      </section>
    </div>
  );
}

function stateText(it: Item): string {
  switch (it.state) {
    case "queued": return "Waiting";
    case "uploading": return `Uploading ${Math.round(it.progress * 100)}%`;
    case "analysing": return "Analysing…";
    case "error": return "Not analysed";
    case "done": return it.result ? findingText(it.result.prediction) : "";
  }
}
