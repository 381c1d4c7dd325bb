// Worklist: stored studies by suspicion or uncertainty, one-key reads (J/K move, Enter opens,
// C confirms the model's call, N/P mark a class), and the study view beside the list.
import { useCallback, useEffect, useRef, useState } from "react";
import { ApiError, getJSON, postJSON, request, type ModelCard, type PacsDelivery, type RefusalList,
         type StudyDetail, type StudyHeatmap, type StudyList, type StudySummary } from "../api";
import { Finding } from "../components/Finding";
import { ImageViewer, type HeatmapLayer } from "../components/ImageViewer";
import { findingText } from "../finding";
import { navigate } from "../router";

const PAGE = 25;
const when = (iso: string | null) => (iso ? new Date(iso).toLocaleString() : "");
const STATE_TEXT: Record<string, string> = { unreviewed: "Unreviewed", confirmed: "Confirmed", corrected: "Corrected" };
const DELIVERY_TEXT: Record<PacsDelivery, string> = {
  sent: "SR sent", waiting: "SR waiting for PACS", failed: "SR refused by PACS",
};

/** DICOM's StudyDate (YYYYMMDD) as an ISO date, 2026-12-07: read one way in every locale, and typed
 * as is into a PACS search. Anything else is shown as stored. */
export function studyDate(da: string | null | undefined): string {
  const m = /^(\d{4})(\d{2})(\d{2})$/.exec((da ?? "").trim());
  return m ? `${m[1]}-${m[2]}-${m[3]}` : (da ?? "");
}

/** One key per class whose initial is free (NORMAL: N, PNEUMONIA: P); C, J and K are taken. */
export function labelKeys(classes: string[]): Record<string, string> {
  const keys: Record<string, string> = {};
  for (const name of classes) {
    const k = name[0].toLowerCase();
    if (!"cjk".includes(k) && !(k in keys)) keys[k] = name;
  }
  return keys;
}

export function WorklistView() {
  const [status, setStatus] = useState("unreviewed");
  const [sort, setSort] = useState("priority");
  const [offset, setOffset] = useState(0);
  const [list, setList] = useState<StudyList | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [selected, setSelected] = useState(-1);
  const [classes, setClasses] = useState<string[]>([]);
  const [message, setMessage] = useState("");
  const rowsRef = useRef<HTMLTableSectionElement>(null);
  const busy = useRef(false);

  const load = useCallback(async (keepIndex: number | null) => {
    try {
      const params = new URLSearchParams({ status, sort, limit: String(PAGE), offset: String(offset) });
      const data = await getJSON<StudyList>(`/api/studies?${params}`);
      setList(data);
      setError(null);
      setSelected(data.items.length === 0 ? -1 : keepIndex === null ? -1 : Math.min(keepIndex, data.items.length - 1));
    } catch (e) {
      setList(null);
      setError(e instanceof ApiError ? e.message : String(e));
    }
  }, [status, sort, offset]);

  useEffect(() => {
    getJSON<ModelCard>("/api/model").then((c) => setClasses(c.classes), () => undefined);
  }, []);

  useEffect(() => { void load(null); }, [load]);

  const items = list?.items ?? [];
  const study = selected >= 0 ? items[selected] ?? null : null;
  const keys = labelKeys(classes);

  const focusRow = useCallback((i: number) => {
    const row = rowsRef.current?.rows[i];
    row?.focus();
    row?.scrollIntoView({ block: "nearest" });
  }, []);

  const select = useCallback((i: number) => {
    if (i < 0 || i >= items.length) return;
    setSelected(i);
    focusRow(i);
  }, [items.length, focusRow]);

  const review = useCallback(async (label: string, note: string) => {
    if (!study || busy.current) return;
    busy.current = true;
    try {
      const s = await postJSON<StudyDetail>(`/api/studies/${study.id}/review`, { label, note: note || null });
      setMessage(`Recorded ${s.review_state === "confirmed" ? "confirmation" : "correction"}: ${label}, by ${s.reviewer}.`);
      // A reviewed study leaves the unreviewed list; the next one moves into its place.
      await load(selected);
    } catch (e) {
      setMessage(`Review not saved: ${e instanceof ApiError ? e.message : String(e)}`);
    } finally {
      busy.current = false;
    }
  }, [study, selected, load]);

  const noteRef = useRef("");

  useEffect(() => {
    function onKey(e: KeyboardEvent) {
      if (e.altKey || e.ctrlKey || e.metaKey || e.defaultPrevented) return;
      const target = e.target as HTMLElement;
      if (target.closest("input, textarea, select")) {
        if (e.key === "Escape") target.blur();
        return;
      }
      if (target.closest("button, a") && (e.key === "Enter" || e.key === " ")) return; // the control's own action
      const k = e.key.toLowerCase();
      if (k === "j" || e.key === "ArrowDown") select(Math.min(selected + 1, items.length - 1));
      else if (k === "k" || e.key === "ArrowUp") select(Math.max(selected - 1, 0));
      else if (e.key === "Enter" && items.length) select(Math.max(selected, 0));
      else if (k === "c" && study) void review(study.prediction, noteRef.current);
      else if (keys[k] && study) void review(keys[k], noteRef.current);
      else return;
      e.preventDefault();
    }
    document.addEventListener("keydown", onKey);
    return () => document.removeEventListener("keydown", onKey);
  }, [select, selected, items.length, study, review, keys]);

  const total = list?.total ?? 0;
  const count = !list ? "" : total === 0 ? "No studies to show."
    : `Studies ${list.offset + 1}–${list.offset + items.length} of ${total}.`;

  return (
    <div className="layout layout-worklist">
      <section className="panel" aria-labelledby="list-heading">
        <h1 id="list-heading" className="panel-title">Worklist</h1>
        <div className="toolbar">
          <label className="field">
            <span>Show</span>
            <select value={status} onChange={(e) => { setOffset(0); setStatus(e.target.value); }}>
              <option value="unreviewed">Unreviewed</option>
              <option value="reviewed">Reviewed</option>
              <option value="confirmed">Confirmed</option>
              <option value="corrected">Corrected</option>
              <option value="all">All</option>
            </select>
          </label>
          <label className="field">
            <span>Order</span>
            <select value={sort} onChange={(e) => { setOffset(0); setSort(e.target.value); }}>
              <option value="priority">Most suspicious first</option>
              <option value="uncertainty">Most uncertain first</option>
              <option value="received">Newest first</option>
            </select>
          </label>
          <button type="button" className="button" onClick={() => void load(selected)}>Refresh</button>
          <a className="button" href="/" onClick={(e) => { e.preventDefault(); navigate("analyse"); }}>Add studies…</a>
        </div>
        <p className="hint">
          Keys: J/K or ↓/↑ move, Enter opens, C confirms the model's finding
          {Object.entries(keys).map(([k, n]) => `, ${k.toUpperCase()} marks ${n}`).join("")}.
        </p>
        {error && <p className="callout callout-error" role="alert" data-testid="list-error">{error}</p>}
        <p className="status" role="status" aria-live="polite" data-testid="message">{message}</p>
        <p data-testid="count">{count}</p>
        {items.length > 0 && (
          <table className="table" data-testid="studies">
            <caption className="visually-hidden">Studies, {sort === "priority" ? "most suspicious first"
              : sort === "uncertainty" ? "most uncertain first" : "newest first"}</caption>
            <thead>
              <tr><th scope="col">Received</th><th scope="col">PACS study</th><th scope="col">Model finding</th>
                <th scope="col">Review</th><th scope="col">Reviewer</th></tr>
            </thead>
            <tbody ref={rowsRef}>
              {items.map((s, i) => (
                <tr key={s.id} data-id={s.id} tabIndex={i === Math.max(selected, 0) ? 0 : -1}
                    aria-selected={i === selected} onClick={() => select(i)}
                    className={i === selected ? "selected" : undefined}>
                  <td>{when(s.received_at)}<SameImage s={s} /></td>
                  <td><PacsStudy s={s} /></td>
                  <td><Finding variant="compact" finding={{ prediction: s.prediction, confidence: s.confidence,
                                                            needsReview: s.uncertain }} inputCheck={s.input_check} /></td>
                  <td>{STATE_TEXT[s.review_state] ?? s.review_state}
                    {s.review_state === "corrected" && s.review_label ? ` → ${s.review_label}` : ""}</td>
                  <td>{s.reviewer ?? ""}</td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
        <div className="button-row">
          <button type="button" className="button" disabled={offset === 0}
                  onClick={() => setOffset(Math.max(0, offset - PAGE))}>Previous page</button>
          <button type="button" className="button" disabled={!list || offset + items.length >= total}
                  onClick={() => setOffset(offset + PAGE)}>Next page</button>
        </div>
        <Refused refresh={list} />
      </section>
      <section className="panel" aria-labelledby="study-heading">
        <h2 id="study-heading" className="panel-title">Study</h2>
        {study ? <StudyView key={study.id} id={study.id} classes={classes} keys={keys}
                            onReview={review} onNote={(n) => { noteRef.current = n; }} />
               : <p className="hint">Select a study (J, or click a row) to see its image and finding.</p>}
      </section>
    </div>
  );
}

/** Uploads the input check refused: no finding and no pixels, only when and why. */
function Refused({ refresh }: { refresh: unknown }) {
  const [refused, setRefused] = useState<RefusalList | null>(null);
  useEffect(() => {
    getJSON<RefusalList>("/api/studies/refused?limit=10").then(setRefused, () => setRefused(null));
  }, [refresh]);
  if (!refused || refused.total === 0) return null;
  return (
    <details className="refused" data-testid="refused">
      <summary>Refused by the input check: {refused.total} upload{refused.total === 1 ? "" : "s"} (no finding)</summary>
      <ul>
        {refused.items.map((r) => (
          <li key={r.id} data-testid="refused-item" data-codes={r.input_check.reasons.map((x) => x.code).join(" ")}>
            {when(r.received_at)} · {r.source_format} · {r.detail}
          </li>
        ))}
      </ul>
    </details>
  );
}

interface StudyProps {
  id: string;
  classes: string[];
  keys: Record<string, string>;
  onReview: (label: string, note: string) => Promise<void>;
  onNote: (note: string) => void;
}

function StudyView({ id, classes, keys, onReview, onNote }: StudyProps) {
  const [s, setS] = useState<StudyDetail | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [imageUrl, setImageUrl] = useState<string | null>(null);
  const [imageNote, setImageNote] = useState("");
  const [heatmap, setHeatmap] = useState<HeatmapLayer | null>(null);
  const [heatmapStatus, setHeatmapStatus] = useState("");
  const [note, setNote] = useState("");

  useEffect(() => { onNote(""); }, [onNote]);

  useEffect(() => {
    let live = true;
    let url: string | null = null;
    (async () => {
      try {
        const detail = await getJSON<StudyDetail>(`/api/studies/${id}`);
        if (!live) return;
        setS(detail);
        if (!detail.has_image) {
          setImageNote("No image stored: the server keeps images only with --store-images.");
          return;
        }
        setImageNote("Loading image…");
        // ?preview=true: the server's PNG of what the model analysed (works for DICOM too).
        const blob = await (await request(`/api/studies/${id}/image?preview=true`)).blob();
        if (!live) return;
        url = URL.createObjectURL(blob);
        setImageUrl(url);
        setImageNote("");
        setHeatmapStatus("Computing heatmap…");
        const h = await getJSON<StudyHeatmap>(`/api/studies/${id}/heatmap`);
        if (!live) return;
        setHeatmap({ src: h.heatmap, className: h.heatmap_class });
        // E.g. the study was analysed by an earlier model: the map is the current model's.
        setHeatmapStatus(h.note ?? "");
      } catch (e) {
        if (!live) return;
        const msg = e instanceof ApiError ? e.message : String(e);
        setError((prev) => prev ?? msg);
        setHeatmapStatus("");
      }
    })();
    return () => {
      live = false;
      if (url) URL.revokeObjectURL(url);
    };
  }, [id]);

  if (!s) return error ? <p className="callout callout-error" role="alert">{error}</p> : <p className="hint">Loading study…</p>;

  const facts: [string, string | null][] = [
    ["Received", when(s.received_at)],
    ["Accession number", s.accession_number ?? null], ["Study date", studyDate(s.study_date) || null],
    ["Modality", s.modality ?? null], ["PACS", s.pacs_delivery ? DELIVERY_TEXT[s.pacs_delivery] : null],
    ["Status", (STATE_TEXT[s.review_state] ?? s.review_state) + (s.review_label ? `: ${s.review_label}` : "")],
    ["Patient age", s.patient_age], ["Patient sex", s.patient_sex], ["Study UID", s.study_instance_uid],
    ["Format", s.source_format], ["Model", `${s.model.architecture} ${s.model.version}`],
    ["Image SHA-256", `${s.image_sha256.slice(0, 16)}…`],
    ["Same image as", s.duplicate_of ? `study ${s.duplicate_of.slice(0, 8)}… (uploaded first)` : null],
    ["Uploads of this image", (s.same_image_uploads ?? 1) > 1 ? String(s.same_image_uploads) : null],
  ];
  return (
    <div className="study" data-testid="study" data-study-id={s.id}>
      <Finding finding={{ prediction: s.prediction, confidence: s.confidence, needsReview: s.uncertain,
                          probabilities: s.probabilities }} disclaimer={s.disclaimer} inputCheck={s.input_check} />
      {error && <p className="callout callout-error" role="alert">{error}</p>}
      {imageNote && <p className="hint" data-testid="image-note">{imageNote}</p>}
      {imageUrl && <ImageViewer src={imageUrl} alt={`Chest X-ray, study received ${when(s.received_at)}`}
                                heatmap={heatmap} heatmapStatus={heatmapStatus} />}
      <dl className="facts">
        {facts.filter(([, v]) => v).map(([k, v]) => (
          <div key={k}><dt>{k}</dt><dd>{v}</dd></div>
        ))}
      </dl>
      <h3>Review</h3>
      <label className="field field-wide">
        <span>Note (optional, saved with the review)</span>
        <textarea rows={2} maxLength={2000} value={note}
                  onChange={(e) => { setNote(e.target.value); onNote(e.target.value); }} />
      </label>
      <div className="button-row" data-testid="review-buttons">
        <button type="button" className="button primary" onClick={() => void onReview(s.prediction, note)}>
          Confirm: {findingText(s.prediction)} (C)
        </button>
        {classes.map((name) => {
          const key = Object.keys(keys).find((k) => keys[k] === name);
          return (
            <button key={name} type="button" className="button" onClick={() => void onReview(name, note)}>
              Mark {name}{key ? ` (${key.toUpperCase()})` : ""}
            </button>
          );
        })}
      </div>
      <h3>Reviews</h3>
      <ul className="history" data-testid="history">
        {s.reviews.length === 0 && <li className="hint">None yet.</li>}
        {s.reviews.map((r) => (
          <li key={r.id}>
            {r.state === "confirmed" ? "Confirmed" : "Corrected to"} {r.label} by {r.reviewer}, {when(r.reviewed_at)}
            {r.note ? ` — ${r.note}` : ""}
          </li>
        ))}
      </ul>
    </div>
  );
}

/** A worklist row's note when the same image (identical bytes) was uploaded more than once. */
function SameImage({ s }: { s: StudySummary }) {
  const n = s.same_image_uploads ?? 1;
  if (n < 2) return null;
  return (
    <span className="hint same-image" data-testid="same-image"
          title={s.duplicate_of ? `The same file as study ${s.duplicate_of}` : `This image was uploaded ${n} times`}>
      {s.duplicate_of ? ` · repeat of ${s.duplicate_of.slice(0, 8)}…` : ` · uploaded ${n} times`}
    </span>
  );
}

/** What finds a DICOM study in the PACS (accession number, modality, study date; never the
 * patient's name) and whether MediFlow's SR got there. Empty for uploads. */
function PacsStudy({ s }: { s: StudySummary }) {
  const date = studyDate(s.study_date);
  const hasIds = Boolean(s.accession_number || s.modality || date);
  if (!hasIds && !s.pacs_delivery) return null;
  return (
    <div className="pacs-study">
      {hasIds && (
        <div data-testid="pacs-study">
          {s.accession_number && (
            <div className="accession"><abbr title="Accession number">Acc.</abbr>{" "}
              <span data-testid="accession">{s.accession_number}</span></div>
          )}
          {s.modality && <span data-testid="modality">{s.modality}</span>}
          {s.modality && date ? " · " : ""}
          {date && <time dateTime={/^\d{4}-\d{2}-\d{2}$/.test(date) ? date : undefined}
                         data-testid="study-date">{date}</time>}
        </div>
      )}
      {s.pacs_delivery && (
        <span className={s.pacs_delivery === "sent" ? "hint pacs-delivery" : "badge badge-review pacs-delivery"}
              data-testid="pacs-delivery" data-state={s.pacs_delivery}>
          {DELIVERY_TEXT[s.pacs_delivery] ?? s.pacs_delivery}
        </span>
      )}
    </div>
  );
}
