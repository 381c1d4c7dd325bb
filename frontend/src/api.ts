// The only module that talks to the server. Every request carries the API key kept for this tab
// (sessionStorage), and every failure becomes an ApiError with a message a clinician can act on.

export const KEY_STORAGE = "mediflow.apiKey";

export interface ModelRef {
  architecture: string;
  version: string;
  sha256: string;
}

/** The input check's verdict (mediflow/inference/input_check.py). */
export interface CheckReason {
  code: string;
  message: string;
  severity: "rejected" | "warning" | "note";
}

export interface InputCheck {
  status: "ok" | "warning" | "rejected";
  reasons: CheckReason[];
}

/** POST /api/vision/analyze (mediflow/serving/schemas.py: AnalysisResponse). */
export interface Analysis {
  input_check: InputCheck;
  prediction: string;
  confidence: number;
  disclaimer: string;
  probabilities: Record<string, number>;
  needs_review: boolean;
  threshold: number | null;
  model: ModelRef;
  inference_ms: number;
  notes?: string[];
  preview?: string | null;
  heatmap?: string | null;
  heatmap_class?: string | null;
  study_id?: string | null;
  duplicate_of?: string | null;
}

export interface StudySummary {
  id: string;
  received_at: string;
  source_format: string;
  prediction: string;
  confidence: number;
  probability: number;
  uncertain: boolean;
  review_state: string;
  review_label: string | null;
  reviewer: string | null;
  reviewed_at: string | null;
  has_image: boolean;
  /** Null for studies saved before the input check existed. */
  input_check?: InputCheck | null;
  /** The first study of the same image (identical bytes) when this upload repeats it. */
  duplicate_of?: string | null;
  /** Studies of this same image, this one included. */
  same_image_uploads?: number;
  /** DICOM studies: what finds the study in the PACS (never the patient's name). */
  accession_number?: string | null;
  /** DICOM StudyDate as stored: YYYYMMDD. */
  study_date?: string | null;
  /** DICOM Modality, e.g. CR or DX. */
  modality?: string | null;
  /** Studies from the DICOM node: whether the SR reached the PACS. */
  pacs_delivery?: PacsDelivery | null;
}

export type PacsDelivery = "sent" | "waiting" | "failed";

/** GET /api/studies/refused: uploads the input check refused (no finding, no pixels kept). */
export interface RefusedInput {
  id: string;
  received_at: string;
  source_format: string;
  image_sha256: string;
  detail: string;
  input_check: InputCheck;
}

export interface RefusalList {
  total: number;
  limit: number;
  offset: number;
  items: RefusedInput[];
}

export interface Review {
  id: number;
  label: string;
  state: string;
  note: string | null;
  reviewer: string;
  reviewed_at: string;
  model_prediction: string;
}

export interface StudyDetail extends StudySummary {
  image_sha256: string;
  probabilities: Record<string, number>;
  threshold: number | null;
  margin: number;
  model: ModelRef;
  study_instance_uid: string | null;
  sop_instance_uid: string | null;
  patient_age: string | null;
  patient_sex: string | null;
  review_note: string | null;
  reviews: Review[];
  disclaimer: string;
}

export interface StudyList {
  total: number;
  limit: number;
  offset: number;
  items: StudySummary[];
}

export interface StudyHeatmap {
  heatmap: string;
  heatmap_class: string;
  model: ModelRef;
  note?: string | null;
}

export interface ModelCard {
  architecture: string;
  version: string;
  sha256: string;
  classes: string[];
  positive_class: string | null;
  threshold: number | null;
  threshold_rule?: string | null;
  temperature: number;
  review_below_confidence: number;
  preprocessing: Record<string, unknown>;
  training_data: string;
  validation_metrics: Record<string, number>;
  operating_point?: { positive_class: string; calibrated_threshold: number; scale: string } | null;
  /** The labelled films of the site the operating point was fitted on, when not the validation split. */
  site_calibration?: {
    n: number;
    counts?: Record<string, number>;
    min_sensitivity?: number;
    threshold?: number | null;
    metrics?: Record<string, number | null>;
  } | null;
  /** Lineage of a recalibrated model. */
  calibration?: { base_model_sha256: string; base_version: string; weights_sha256: string; site: string; date: string } | null;
  input_check?: { feature_checks: boolean; statistics_fitted_on: string | null; problem: string | null } | null;
  training: Record<string, unknown>;
  backend?: string;
  intended_use: string;
  limitations: string[];
  disclaimer: string;
}

/** GET /api/model/evaluation: written by benchmarks/generalization.py next to the checkpoint. */
export interface Evaluation {
  model: { path: string; sha256: string; architecture: string; backend: string };
  machine: string;
  seconds: number;
  // Null where a figure is undefined (e.g. AUC on a split with one class): the benchmark writes strict JSON.
  validation: { n: number; auc: number | null };
  test_dev: {
    n: number;
    auc: number | null;
    auc_ci95: [number | null, number | null];
    class_names?: string[];
    accuracy: number;
    balanced_accuracy: number;
    sensitivity: number;
    specificity: number;
    threshold: number | null;
    confusion_matrix: number[][];
    roc: { fpr: number[]; tpr: number[] };
    calibration: { bins: { p_mean: number; frac_positive: number; n: number }[] };
  };
  thumbnail_baseline?: { validation_auc: number; test_dev_auc: number };
  invariance?: { variant: string; n: number; flips: number; flip_rate: number; mean_abs_dp: number; max_abs_dp: number }[];
  invariance_overall?: { n: number; flips: number; flip_rate: number; worst_variant: string; worst_flip_rate: number };
}

export class ApiError extends Error {
  readonly status: number;
  readonly detail: string;
  /** Set when the input check refused the image (HTTP 422 with `input_check`): no finding. */
  readonly inputCheck: InputCheck | null;

  constructor(status: number, detail: string, inputCheck: InputCheck | null = null) {
    super(inputCheck ? detail : explain(status, detail));
    this.status = status;
    this.detail = detail;
    this.inputCheck = inputCheck;
  }
}

/** FastAPI's `detail`: a string for our errors, a list of {msg} for request validation errors. */
export function detailText(detail: unknown): string {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((d) => (d && typeof d === "object" && "msg" in d ? String(d.msg) : String(d))).join("; ");
  return "";
}

/** What a status means for the person at the screen, followed by the server's own words. */
export function explain(status: number, detail: string): string {
  const d = detail ? `: ${detail}` : "";
  switch (status) {
    case 0: return "Could not reach the MediFlow service; check the connection and try again";
    case 401: return `This server needs a valid API key${d}`;
    case 403: return `This API key may not do that${d}`;
    case 413: return `The file is larger than the server accepts${d}`;
    case 422: return `The server could not use this request${d}`;
    case 503: return `The service cannot do this right now${d}`;
    default: return detail || `The server answered with status ${status}`;
  }
}

export function storedKey(): string | null {
  return sessionStorage.getItem(KEY_STORAGE);
}

export function setStoredKey(key: string | null): void {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

function authHeaders(): Record<string, string> {
  const key = storedKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

/** Fired on every 401 so the app can show its key form, whatever view asked. */
export const AUTH_EVENT = "mediflow:auth-required";

function authFailed(detail: string): void {
  window.dispatchEvent(new CustomEvent(AUTH_EVENT, { detail }));
}

async function errorFrom(res: Response): Promise<ApiError> {
  let detail = "";
  try {
    detail = detailText((await res.json()).detail);
  } catch {
    // Not JSON (e.g. a proxy's HTML error page): the status alone.
  }
  if (res.status === 401) authFailed(detail);
  return new ApiError(res.status, detail);
}

export async function request(path: string, init: RequestInit = {}): Promise<Response> {
  let res: Response;
  try {
    res = await fetch(path, { ...init, headers: { ...(init.headers as Record<string, string>), ...authHeaders() } });
  } catch {
    throw new ApiError(0, "");
  }
  if (!res.ok) throw await errorFrom(res);
  return res;
}

export const getJSON = async <T>(path: string): Promise<T> => (await request(path)).json() as Promise<T>;

export async function postJSON<T>(path: string, body: unknown): Promise<T> {
  const res = await request(path, { method: "POST", headers: { "Content-Type": "application/json" },
                                    body: JSON.stringify(body) });
  return res.json() as Promise<T>;
}

/** DICOM and TIFF: formats the server reads but browsers cannot draw. */
export function needsServerPreview(file: File): boolean {
  return ["application/dicom", "image/tiff"].includes(file.type) || /\.(dcm|dicom|tiff?)$/i.test(file.name);
}

/** Upload one file. XMLHttpRequest, not fetch: only it reports upload progress (0..1). */
export function analyze(file: File, onProgress: (fraction: number) => void): Promise<Analysis> {
  // Browsers cannot draw DICOM or TIFF: ask the server for a PNG rendering of what it analysed.
  const url = "/api/vision/analyze?heatmap=true" + (needsServerPreview(file) ? "&preview=true" : "");
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", url);
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    xhr.responseType = "json";
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    xhr.onerror = () => reject(new ApiError(0, ""));
    xhr.onload = () => {
      const body = xhr.response as { detail?: unknown; input_check?: InputCheck } | null;
      if (xhr.status >= 200 && xhr.status < 300 && body) {
        onProgress(1);
        resolve(body as Analysis);
        return;
      }
      const detail = body ? detailText(body.detail) : "";
      if (xhr.status === 401) authFailed(detail);
      reject(new ApiError(xhr.status, detail, body?.input_check ?? null));
    };
    const form = new FormData();
    form.append("file", file, file.name);
    xhr.send(form);
  });
}
