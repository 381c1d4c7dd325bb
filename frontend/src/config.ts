// Values the server writes into index.html (mediflow/serving/app.py: render_index).
function meta(name: string, fallback: string): string {
  const v = document.querySelector<HTMLMetaElement>(`meta[name="${name}"]`)?.content ?? "";
  return v && !v.startsWith("{{") ? v : fallback;
}

export const config = {
  disclaimer: meta("mediflow-disclaimer", "AI-assisted preliminary reading. Clinical correlation required."),
  version: meta("mediflow-version", "dev"),
  maxUploadBytes: Number(meta("mediflow-max-upload-bytes", String(20 * 1024 * 1024))),
  maxUpload: meta("mediflow-max-upload", "20 MB"),
};

export function formatBytes(n: number): string {
  if (n >= 1024 * 1024) return `${+(n / (1024 * 1024)).toFixed(1)} MB`;
  if (n >= 1024) return `${+(n / 1024).toFixed(1)} KB`;
  return `${n} bytes`;
}
