// Builds the dashboard into dist/, which the API serves at /. Every asset is
// bundled locally: users may have no internet.
import { defineConfig } from "vite";

export default defineConfig({
  base: "/",
  oxc: { jsx: { runtime: "automatic", importSource: "preact" } },
  build: { outDir: "dist", emptyOutDir: true, sourcemap: false, chunkSizeWarningLimit: 300 },
});
