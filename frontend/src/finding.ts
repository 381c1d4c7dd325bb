// How a finding is worded and checked, for every view (components/Finding.tsx renders it).
// Never "diagnosis": the model flags images for a clinician, it does not diagnose.

/** The fields every finding has, from an analysis or a stored study. */
export interface FindingData {
  prediction: string;
  /** Probability of the called class, 0..1 (>= 0.5 under the serving contract). */
  confidence: number;
  needsReview: boolean;
  /** Per-class probabilities on the reported scale (the call is the class at or above 0.5). */
  probabilities?: Record<string, number>;
}

/** Why a finding is flagged for review, in words that never contradict the numbers shown: a high
 * confidence is not called low when the flag came from the input check. */
export function reviewText(needsReview: boolean, inputCheckWarned: boolean): string {
  if (!needsReview) return "";
  return inputCheckWarned ? "Manual review suggested: the input check found a problem with this image (see below)."
    : "Low model confidence: manual review suggested.";
}

/** Careful, non-diagnostic phrasing of the called class. */
export function findingText(prediction: string): string {
  const name = prediction.toUpperCase();
  if (name === "PNEUMONIA") return "Findings suggestive of pneumonia";
  if (name === "NORMAL") return "No findings suggestive of pneumonia";
  return `Findings most consistent with: ${prediction}`;
}

/** 0.9731 -> "97.3%" (half up, as Math.round). */
export function percent(p: number): string {
  return `${(Math.round(p * 1000) / 10).toFixed(1)}%`;
}

const TOLERANCE = 0.0015; // the API rounds to 4 decimals; the store may round again

/**
 * Whether the numbers agree with the call: the called class holds `confidence`, at least 0.5, and
 * no other class scores higher. When they do not (e.g. an older server that reported probabilities
 * against another threshold), the app shows the call without numbers rather than a percentage that
 * reads as the opposite call.
 */
export function isConsistent(f: FindingData): boolean {
  if (!(f.confidence >= 0.5 - TOLERANCE && f.confidence <= 1 + TOLERANCE)) return false;
  if (!f.probabilities) return true;
  const own = f.probabilities[f.prediction];
  if (own === undefined || Math.abs(own - f.confidence) > TOLERANCE) return false;
  return Object.values(f.probabilities).every((p) => p <= own + TOLERANCE);
}
