// Builds the web client into web/dist, which the manager serves at / (src/web/static.ts).
import { fileURLToPath } from "node:url";
import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

const here = fileURLToPath(new URL(".", import.meta.url));

export default defineConfig({
  root: here,
  base: "/",
  plugins: [react()],
  build: {
    outDir: "dist",
    emptyOutDir: true,
    assetsDir: "assets",
    sourcemap: false,
    chunkSizeWarningLimit: 1024,
  },
  server: {
    // `npx vite web` during development: API calls and WebSockets go to a local manager.
    proxy: {
      "/v1": { target: process.env["HOP_MANAGER_URL"] ?? "http://127.0.0.1:7400", ws: true },
    },
  },
});
