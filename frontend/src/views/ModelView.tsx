// Model: the model card (GET /api/model) and its latest evaluation (GET /api/model/evaluation),
// in figures and in plain words, for whoever decides whether to trust it.
import { useEffect, useState } from "react";
import { ApiError, getJSON, type Evaluation, type ModelCard } from "../api";
import { percent } from "../finding";

const fmt = (v: number | undefined | null, digits = 3) => (v === undefined || v === null ? "—" : v.toFixed(digits));

export function ModelView() {
  const [card, setCard] = useState<ModelCard | null>(null);
  const [cardError, setCardError] = useState<string | null>(null);
  const [evaluation, setEvaluation] = useState<Evaluation | null>(null);
  const [evalMessage, setEvalMessage] = useState<string>("Loading the evaluation…");

  useEffect(() => {
    getJSON<ModelCard>("/api/model").then(setCard, (e) => setCardError(e instanceof ApiError ? e.message : String(e)));
    getJSON<Evaluation>("/api/model/evaluation").then(
      (ev) => { setEvaluation(ev); setEvalMessage(""); },
      (e) => setEvalMessage(e instanceof ApiError && e.status === 404 ? `No evaluation to show: ${e.detail}`
                            : `The evaluation cannot be shown: ${e instanceof ApiError ? e.message : String(e)}`));
  }, []);

  return (
    <div className="stack">
      <section className="panel" aria-labelledby="card-heading">
        <h1 id="card-heading" className="panel-title">The model</h1>
        {cardError && <p className="callout callout-error" role="alert">{cardError}</p>}
        {!card && !cardError && <p className="hint">Loading the model card…</p>}
        {card && <Card card={card} />}
      </section>
      <section className="panel" aria-labelledby="eval-heading">
        <h2 id="eval-heading" className="panel-title">Latest evaluation</h2>
        {evalMessage && <p className="hint" data-testid="evaluation-message">{evalMessage}</p>}
        {evaluation && <EvaluationReport ev={evaluation} card={card} />}
      </section>
    </div>
  );
}

function Card({ card }: { card: ModelCard }) {
  const v = card.validation_metrics ?? {};
  return (
    <div className="model-card" data-testid="model-card">
      <h3>Intended use</h3>
      <p>{card.intended_use}</p>
      <h3>Limitations</h3>
      <ul>{card.limitations.map((l) => <li key={l}>{l}</li>)}</ul>
      <p className="callout callout-note">{card.disclaimer}</p>
      <h3>What it is</h3>
      <dl className="facts">
        <div><dt>Architecture</dt><dd>{card.architecture}</dd></div>
        <div><dt>Version</dt><dd>{card.version}</dd></div>
        <div><dt>SHA-256</dt><dd className="mono">{card.sha256.slice(0, 16)}…</dd></div>
        <div><dt>Classes</dt><dd>{card.classes.join(", ")}</dd></div>
        {card.backend && <div><dt>Runtime</dt><dd>{card.backend}</dd></div>}
        <div><dt>Operating point</dt><dd>{card.threshold === null ? "highest score" : fmt(card.threshold)}
          {card.threshold_rule ? ` (${card.threshold_rule})` : ""}</dd></div>
        <div><dt>Review suggested below</dt><dd>{percent(card.review_below_confidence)} confidence</dd></div>
        <div><dt>Training data</dt><dd>{card.training_data}</dd></div>
      </dl>
      {card.input_check && !card.input_check.feature_checks && (
        <p className="callout callout-warning" role="alert" data-testid="input-check-missing">
          The input check runs without its feature statistics: {card.input_check.problem}
        </p>
      )}
      <OperatingPointInForce card={card} />
      {Object.keys(v).length > 0 && (
        <>
          <h3>Figures: training validation{card.site_calibration ? " and site calibration" : ""}</h3>
          <MetricsTable training={v} site={card.site_calibration} />
        </>
      )}
    </div>
  );
}

/** The operating point the server applies now, and where it was fitted (site calibration or training). */
function OperatingPointInForce({ card }: { card: ModelCard }) {
  const site = card.site_calibration;
  const lineage = card.calibration;
  return (
    <div data-testid="operating-point">
      <h3>Operating point in force</h3>
      <p>
        {card.threshold === null ? "The model calls the class with the highest score."
          : `${card.positive_class ?? "The positive class"} is called at calibrated probability ${fmt(card.threshold, 4)} or above`}
        {card.threshold !== null && (site
          ? `, fitted on ${site.n} labelled films of ${lineage ? `the site “${lineage.site}”` : "the site"}` +
            (site.min_sensitivity !== undefined ? ` to keep sensitivity ≥ ${site.min_sensitivity}` : "") + "."
          : ", fitted on the training validation split.")}
      </p>
      {lineage && (
        <dl className="facts" data-testid="calibration-lineage">
          <div><dt>Calibrated at</dt><dd>{lineage.site}</dd></div>
          <div><dt>Calibrated on</dt><dd>{lineage.date}</dd></div>
          <div><dt>Base model</dt><dd><span className="mono">{lineage.base_model_sha256.slice(0, 16)}…</span> (version {lineage.base_version})</dd></div>
          <div><dt>Weights</dt><dd>unchanged (<span className="mono">{lineage.weights_sha256.slice(0, 16)}…</span>)</dd></div>
        </dl>
      )}
    </div>
  );
}

const METRIC_ROWS = ["n", "auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity"];

function MetricsTable({ training, site }: { training: Record<string, number>; site: ModelCard["site_calibration"] }) {
  const siteValue = (k: string): string => {
    if (!site) return "";
    if (k === "n") return String(site.n);
    return fmt(site.metrics?.[k]);
  };
  const rows = METRIC_ROWS.filter((k) => k in training || (site && (k === "n" || site.metrics?.[k] !== undefined)));
  return (
    <>
      <table className="table table-narrow" data-testid="metrics-table">
        <thead><tr><th scope="col">Figure</th><th scope="col">Training validation</th>
          {site && <th scope="col">Site calibration films</th>}</tr></thead>
        <tbody>
          {rows.map((k) => (
            <tr key={k}><th scope="row">{k.replace(/_/g, " ")}</th>
              <td>{k === "n" ? (training[k] ?? "—") : fmt(training[k])}</td>
              {site && <td>{siteValue(k)}</td>}</tr>
          ))}
        </tbody>
      </table>
      {site && (
        <p className="hint">Site figures are measured on the films the operating point was fitted on, so they are
          optimistic.</p>
      )}
    </>
  );
}

function EvaluationReport({ ev, card }: { ev: Evaluation; card: ModelCard | null }) {
  const t = ev.test_dev;
  const classes = t.class_names ?? card?.classes ?? ["NORMAL", "PNEUMONIA"];
  const sameModel = !card || !ev.model.sha256 || card.sha256 === ev.model.sha256;
  return (
    <div data-testid="evaluation">
      {!sameModel && (
        <p className="callout callout-warning" role="note" data-testid="evaluation-mismatch">
          This evaluation is of another model file (SHA-256 {ev.model.sha256.slice(0, 12)}…) than the one
          serving now ({card?.sha256.slice(0, 12)}…): its figures do not describe the current model.
        </p>
      )}
      <h3>In plain words</h3>
      <ul className="plain">
        <li>On {t.n} held-out images it had never seen (test_dev), it found {Math.round(t.sensitivity * 100)} of
          every 100 films with pneumonia (sensitivity) and cleared {Math.round(t.specificity * 100)} of every 100
          normal films (specificity).</li>
        {t.auc !== null && (
          <li>Given one pneumonia film and one normal film, it scores the pneumonia film higher
            {" "}{Math.round(t.auc * 100)} times in 100 (AUC {fmt(t.auc)}, 95% interval {fmt(t.auc_ci95[0])}–{fmt(t.auc_ci95[1])}).</li>
        )}
        {t.auc !== null && ev.validation.auc !== null && (
          <li>On the validation images used while building it the AUC was {fmt(ev.validation.auc)}
            {ev.validation.auc - t.auc > 0.02 ? "; it does worse on new images than on those, so expect the lower figure."
              : "; it does about as well on new images."}</li>
        )}
        {ev.invariance_overall && (
          <li>When the same film is changed the way another hospital's equipment would change it, the call flips
            for {percent(ev.invariance_overall.flip_rate)} of films; most often under "{ev.invariance_overall.worst_variant}"
            ({percent(ev.invariance_overall.worst_flip_rate)}).</li>
        )}
      </ul>
      <h3>Test_dev against validation</h3>
      <table className="table table-narrow" data-testid="split-table">
        <thead><tr><th scope="col">Split</th><th scope="col">Images</th><th scope="col">AUC</th>
          {ev.thumbnail_baseline && <th scope="col">Thumbnail baseline AUC</th>}</tr></thead>
        <tbody>
          <tr><th scope="row">validation</th><td>{ev.validation.n}</td><td>{fmt(ev.validation.auc)}</td>
            {ev.thumbnail_baseline && <td>{fmt(ev.thumbnail_baseline.validation_auc)}</td>}</tr>
          <tr><th scope="row">test_dev</th><td>{t.n}</td><td>{fmt(t.auc)} ({fmt(t.auc_ci95[0])}–{fmt(t.auc_ci95[1])})</td>
            {ev.thumbnail_baseline && <td>{fmt(ev.thumbnail_baseline.test_dev_auc)}</td>}</tr>
        </tbody>
      </table>
      {ev.thumbnail_baseline && (
        <p className="hint">The thumbnail baseline is a simple model on tiny images: a model that barely beats it is
          likely to rely on shortcuts such as borders or exposure.</p>
      )}
      <div className="figures">
        <figure className="figure">
          <RocChart fpr={t.roc.fpr} tpr={t.roc.tpr} auc={t.auc ?? 0.5} />
          <figcaption>ROC on test_dev: each point is one threshold; the closer to the top left, the better.</figcaption>
        </figure>
        <figure className="figure">
          <CalibrationChart bins={t.calibration.bins} />
          <figcaption>Calibration on test_dev: on the diagonal, a score of 70% is right 70% of the time.</figcaption>
        </figure>
        <figure className="figure">
          <ConfusionMatrix matrix={t.confusion_matrix} classes={classes} />
          <figcaption>Confusion matrix on test_dev at threshold {fmt(t.threshold)}: accuracy {percent(t.accuracy)},
            balanced accuracy {percent(t.balanced_accuracy)}.</figcaption>
        </figure>
      </div>
      {ev.invariance && ev.invariance.length > 0 && (
        <>
          <h3>Does the call survive changes in acquisition?</h3>
          <table className="table" data-testid="invariance-table">
            <caption className="visually-hidden">Invariance: calls that flip when the film is altered</caption>
            <thead><tr><th scope="col">Change to the film</th><th scope="col">Images</th><th scope="col">Calls flipped</th>
              <th scope="col">Flip rate</th><th scope="col">Mean |Δ score|</th><th scope="col">Max |Δ score|</th></tr></thead>
            <tbody>
              {ev.invariance.map((r) => (
                <tr key={r.variant}><th scope="row">{r.variant}</th><td>{r.n}</td><td>{r.flips}</td>
                  <td>{percent(r.flip_rate)}</td><td>{fmt(r.mean_abs_dp)}</td><td>{fmt(r.max_abs_dp)}</td></tr>
              ))}
            </tbody>
          </table>
        </>
      )}
      <p className="meta">Evaluated {ev.model.architecture} ({ev.model.backend}) on {ev.machine} in {Math.round(ev.seconds)} s.</p>
    </div>
  );
}

// -- figures: plain SVG (no chart library: three small plots do not justify one) -----------------
const W = 280;
const H = 280;
const PAD = 48;
const x = (v: number) => PAD + v * (W - PAD - 10);
const y = (v: number) => H - PAD - v * (H - PAD - 10);

function Axes({ xLabel, yLabel }: { xLabel: string; yLabel: string }) {
  const ticks = [0, 0.25, 0.5, 0.75, 1];
  return (
    <g className="axes">
      <line x1={x(0)} y1={y(0)} x2={x(1)} y2={y(0)} />
      <line x1={x(0)} y1={y(0)} x2={x(0)} y2={y(1)} />
      {ticks.map((t) => (
        <g key={t}>
          <line className="grid" x1={x(t)} y1={y(0)} x2={x(t)} y2={y(1)} />
          <line className="grid" x1={x(0)} y1={y(t)} x2={x(1)} y2={y(t)} />
          <text x={x(t)} y={y(0) + 14} textAnchor="middle">{t}</text>
          <text x={x(0) - 6} y={y(t) + 4} textAnchor="end">{t}</text>
        </g>
      ))}
      <text x={x(0.5)} y={H - 6} textAnchor="middle">{xLabel}</text>
      <text transform={`translate(11 ${y(0.5)}) rotate(-90)`} textAnchor="middle">{yLabel}</text>
      <line className="diagonal" x1={x(0)} y1={y(0)} x2={x(1)} y2={y(1)} />
    </g>
  );
}

function RocChart({ fpr, tpr, auc }: { fpr: number[]; tpr: number[]; auc: number }) {
  const points = fpr.map((f, i) => `${x(f).toFixed(1)},${y(tpr[i]).toFixed(1)}`).join(" ");
  return (
    <svg viewBox={`0 0 ${W} ${H}`} className="chart" role="img" aria-label={`ROC curve, AUC ${auc.toFixed(3)}`}
         data-testid="roc-chart">
      <Axes xLabel="1 − specificity" yLabel="sensitivity" />
      <polyline className="series" points={points} />
      <text x={x(0.55)} y={y(0.1)}>AUC {auc.toFixed(3)}</text>
    </svg>
  );
}

function CalibrationChart({ bins }: { bins: { p_mean: number; frac_positive: number; n: number }[] }) {
  const used = bins.filter((b) => b.n > 0);
  const most = Math.max(1, ...used.map((b) => b.n));
  return (
    <svg viewBox={`0 0 ${W} ${H}`} className="chart" role="img" data-testid="calibration-chart"
         aria-label={`Calibration: ${used.map((b) => `score ${percent(b.p_mean)}, observed ${percent(b.frac_positive)} of ${b.n}`).join("; ")}`}>
      <Axes xLabel="mean model score" yLabel="fraction with pneumonia" />
      <polyline className="series" points={used.map((b) => `${x(b.p_mean).toFixed(1)},${y(b.frac_positive).toFixed(1)}`).join(" ")} />
      {used.map((b, i) => (
        <circle key={i} className="dot" cx={x(b.p_mean)} cy={y(b.frac_positive)} r={2 + 5 * Math.sqrt(b.n / most)} />
      ))}
    </svg>
  );
}

function ConfusionMatrix({ matrix, classes }: { matrix: number[][]; classes: string[] }) {
  const total = matrix.flat().reduce((a, b) => a + b, 0) || 1;
  return (
    <table className="table confusion" data-testid="confusion-matrix">
      <caption className="visually-hidden">Confusion matrix: rows are the true class, columns the model's call</caption>
      <thead>
        <tr><td /><th scope="colgroup" colSpan={classes.length}>Model's call</th></tr>
        <tr><th scope="col">True class</th>{classes.map((c) => <th key={c} scope="col">{c}</th>)}</tr>
      </thead>
      <tbody>
        {matrix.map((row, i) => (
          <tr key={i}>
            <th scope="row">{classes[i] ?? i}</th>
            {row.map((n, j) => (
              <td key={j} className={i === j ? "cell-right" : "cell-wrong"}>{n}<span className="cell-share"> ({percent(n / total)})</span></td>
            ))}
          </tr>
        ))}
      </tbody>
    </table>
  );
}
