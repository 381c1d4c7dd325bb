// Builds the app into the Python package (mediflow/serving/static), which FastAPI serves at /static.
// The output must be byte-identical for the same sources and lockfile: CI rebuilds it and fails on a
// difference, so nothing here may depend on time, paths or the machine.
import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

export default defineConfig({
  plugins: [react()],
  base: "/static/",
  build: {
    outDir: "../mediflow/serving/static",
    emptyOutDir: true,
    assetsDir: "assets",
    // No source maps: they would ship absolute-free but large files in the wheel.
    sourcemap: false,
    // The strict CSP forbids inline scripts; keep every asset a file (no data: URL inlining of scripts).
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    chunkSizeWarningLimit: 400,
  },
});
