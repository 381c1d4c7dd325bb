import { useEffect, useRef, useState, type MouseEvent } from "react";
import { AUTH_EVENT, setStoredKey, storedKey } from "./api";
import { config } from "./config";
import { navigate, PATHS, useRoute, type Route } from "./router";
import { AnalyseView } from "./views/AnalyseView";
import { ModelView } from "./views/ModelView";
import { WorklistView } from "./views/WorklistView";

const TITLES: Record<Route, string> = { analyse: "Analyse", worklist: "Worklist", model: "Model" };

export function App() {
  const route = useRoute();
  // Bumped when the key changes, so every view reloads what it showed with the new key.
  const [authVersion, setAuthVersion] = useState(0);
  const [authProblem, setAuthProblem] = useState<string | null>(null);
  const [hasKey, setHasKey] = useState(storedKey() !== null);
  const mainRef = useRef<HTMLElement>(null);

  useEffect(() => {
    const on = (e: Event) => setAuthProblem((e as CustomEvent<string>).detail || "an API key is needed");
    window.addEventListener(AUTH_EVENT, on);
    return () => window.removeEventListener(AUTH_EVENT, on);
  }, []);

  useEffect(() => {
    document.title = `${TITLES[route]} · MediFlow`;
  }, [route]);

  function go(e: MouseEvent<HTMLAnchorElement>, r: Route) {
    if (e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    e.preventDefault();
    navigate(r);
    mainRef.current?.focus();
  }

  function applyKey(key: string | null) {
    setStoredKey(key);
    setHasKey(key !== null);
    setAuthProblem(null);
    setAuthVersion((v) => v + 1);
  }

  return (
    <div className="page">
      <a className="skip-link" href="#main">Skip to the content</a>
      <header className="site-header">
        <div className="brand">
          <p className="brand-name">MediFlow</p>
          <p className="subtitle">Pediatric chest X-ray screening aid</p>
        </div>
        <nav aria-label="Views" className="nav">
          {(Object.keys(PATHS) as Route[]).map((r) => (
            <a key={r} href={PATHS[r]} onClick={(e) => go(e, r)} aria-current={r === route ? "page" : undefined}>
              {TITLES[r]}
            </a>
          ))}
        </nav>
      </header>
      <p className="disclaimer" role="note" data-testid="disclaimer">
        <strong data-testid="disclaimer-text">{config.disclaimer}</strong>{" "}
        <span>Not a diagnosis. For pediatric (ages 1–5) anterior-posterior chest X-rays; not for adults.</span>
      </p>
      {(authProblem !== null || hasKey) && (
        <KeyPanel problem={authProblem} hasKey={hasKey} onKey={applyKey} />
      )}
      <main id="main" ref={mainRef} tabIndex={-1} className="main">
        {route === "analyse" && <AnalyseView key={authVersion} />}
        {route === "worklist" && <WorklistView key={authVersion} />}
        {route === "model" && <ModelView key={authVersion} />}
      </main>
      <footer className="site-footer">
        <p>MediFlow {config.version} · <a href="/docs">API documentation</a></p>
      </footer>
    </div>
  );
}

function KeyPanel({ problem, hasKey, onKey }: { problem: string | null; hasKey: boolean; onKey: (k: string | null) => void }) {
  const [value, setValue] = useState("");
  const inputRef = useRef<HTMLInputElement>(null);
  useEffect(() => { if (problem !== null) inputRef.current?.focus(); }, [problem]);
  if (problem === null && hasKey) {
    return (
      <section className="panel key-panel" aria-label="API key">
        <p className="key-status">
          <span>An API key is in use for this browser tab.</span>
          <button type="button" className="button" onClick={() => onKey(null)}>Forget key</button>
        </p>
      </section>
    );
  }
  return (
    <section className="panel key-panel" aria-labelledby="key-heading">
      <h2 id="key-heading" className="panel-title">API key</h2>
      {problem !== null && (
        <p className="callout callout-error" role="alert" data-testid="key-problem">
          {hasKey ? `The API key was refused: ${problem}.` : "This server needs an API key: enter it below."}
        </p>
      )}
      <form className="key-form" onSubmit={(e) => {
        e.preventDefault();
        if (value.trim()) onKey(value.trim());
        setValue("");
      }}>
        <label className="field">
          <span>API key for this server (kept only in this browser tab)</span>
          <input ref={inputRef} type="password" autoComplete="off" value={value}
                 onChange={(e) => setValue(e.target.value)} />
        </label>
        <button type="submit" className="button primary">Use key</button>
        {hasKey && <button type="button" className="button" onClick={() => onKey(null)}>Forget key</button>}
      </form>
    </section>
  );
}
