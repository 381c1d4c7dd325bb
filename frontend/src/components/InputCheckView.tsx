// The input check's verdict (is this a pediatric chest film the model was made for?), shown
// wherever a finding or a refusal is shown.
import type { InputCheck } from "../api";

const STATUS_TEXT: Record<string, string> = {
  ok: "Input check: no problem found",
  warning: "Input check: warning",
  rejected: "Input check: not analysed",
};

export function InputCheckView({ check }: { check: InputCheck | null | undefined }) {
  if (!check) return null;
  const tone = check.status === "ok" ? "callout-note" : check.status === "warning" ? "callout-warning" : "callout-error";
  return (
    <div className={`callout ${tone} input-check`} data-testid="input-check" data-status={check.status}>
      <p className="input-check-title"><strong>{STATUS_TEXT[check.status] ?? check.status}</strong></p>
      {check.reasons.length > 0 && (
        <ul aria-label="Input check reasons">
          {check.reasons.map((r) => (
            <li key={r.code} data-code={r.code} data-severity={r.severity}>{r.message}</li>
          ))}
        </ul>
      )}
    </div>
  );
}

/** One badge for a worklist row: nothing when the check found no problem. */
export function InputCheckBadge({ check }: { check: InputCheck | null | undefined }) {
  if (!check || check.status === "ok") return null;
  const codes = check.reasons.filter((r) => r.severity !== "note").map((r) => r.code.replace(/_/g, " "));
  return (
    <span className="badge badge-review" data-testid="input-check-badge" data-status={check.status}
          title={check.reasons.map((r) => r.message).join(" ")}>
      Input: {codes.join(", ")}
    </span>
  );
}
