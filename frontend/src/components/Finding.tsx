// THE way a finding is shown, on every view: the call, the model's confidence in it, the review
// flag, and (in the card) per-class scores, notes about the input and the disclaimer.
import { useId } from "react";
import type { InputCheck } from "../api";
import { findingText, isConsistent, percent, reviewText, type FindingData } from "../finding";
import { InputCheckBadge, InputCheckView } from "./InputCheckView";

interface Props {
  finding: FindingData;
  /** card: the full panel; compact: one line for a worklist row. */
  variant?: "card" | "compact";
  disclaimer?: string;
  notes?: string[];
  /** Shown under the card, e.g. the model and time. */
  meta?: string;
  /** The input check's verdict on the image (null: a study saved before the check existed). */
  inputCheck?: InputCheck | null;
}

export function Finding({ finding, variant = "card", disclaimer, notes, meta, inputCheck }: Props) {
  const id = useId();
  const text = findingText(finding.prediction);
  const consistent = isConsistent(finding);
  const positive = finding.prediction.toUpperCase() !== "NORMAL";
  const tone = positive ? "finding-positive" : "finding-negative";
  const review = finding.needsReview || !consistent;

  if (variant === "compact") {
    return (
      <span className={`finding-compact ${tone}`} data-testid="finding-compact" data-prediction={finding.prediction}>
        <span className="finding-call" data-testid="compact-finding">{text}</span>
        {consistent && (
          <span className="finding-confidence">
            {" · "}<span data-testid="compact-confidence">{percent(finding.confidence)}</span> confidence
          </span>
        )}
        {review && <span className="badge badge-review" data-testid="compact-review">Review</span>}
        <InputCheckBadge check={inputCheck} />
      </span>
    );
  }

  const pct = Math.round(finding.confidence * 100);
  return (
    <div className={`finding-card ${tone}`} data-testid="finding-card" data-prediction={finding.prediction}>
      <p className="finding-call finding-title" data-testid="finding">{text}</p>
      {consistent ? (
        <div className="confidence">
          <span id={`${id}-confidence`} className="confidence-label">Model confidence in this finding</span>
          <div className="meter" role="meter" aria-labelledby={`${id}-confidence`} aria-valuemin={0}
               aria-valuemax={100} aria-valuenow={pct} aria-valuetext={percent(finding.confidence)}
               data-testid="confidence-bar">
            <div className="meter-fill" style={{ width: `${Math.min(100, Math.max(0, finding.confidence * 100))}%` }} />
          </div>
          <span className="confidence-value" data-testid="confidence-value">{percent(finding.confidence)}</span>
        </div>
      ) : (
        <p className="callout callout-warning" data-testid="inconsistent">
          The model's scores for this image do not agree with its call, so no confidence is shown.
          Read the image without relying on the model.
        </p>
      )}
      {finding.needsReview && (
        <p className="callout callout-warning" data-testid="review-warning">
          <strong>{reviewText(true, inputCheck?.status === "warning")}</strong>
        </p>
      )}
      <InputCheckView check={inputCheck} />
      {consistent && finding.probabilities && (
        <dl className="probabilities" aria-label="Model score per class" data-testid="probabilities">
          {Object.entries(finding.probabilities).map(([name, p]) => (
            <div key={name} className="probability">
              <dt>{name}</dt>
              <dd>{percent(p)}</dd>
            </div>
          ))}
        </dl>
      )}
      {notes && notes.length > 0 && (
        <ul className="notes" aria-label="Notes about the input" data-testid="notes">
          {notes.map((n) => <li key={n}>{n}</li>)}
        </ul>
      )}
      {disclaimer && <p className="finding-disclaimer" data-testid="result-disclaimer">{disclaimer}</p>}
      {meta && <p className="meta">{meta}</p>}
    </div>
  );
}
