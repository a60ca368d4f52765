/**
 * Serves the web client (web/dist, built by `npm run build:web`) from the manager: `/` is the
 * app's page (its login screen asks for the cluster token), `/assets/...` its hashed files. These
 * routes need no token (createApiApp's `publicRoutes`); every API call the app makes carries one.
 * When the app is not built, `/` answers a 503 JSON error saying how to build it.
 */
import { readFile, stat } from "node:fs/promises";
import { extname, join, resolve, sep } from "node:path";
import type { FastifyInstance, FastifyReply } from "fastify";
import { packageRoot } from "../common/paths.js";

/** The routes of the web client: served without a token, GET/HEAD only. */
export const WEB_PUBLIC_ROUTES: readonly string[] = ["/", "/index.html", "/assets/*"];

/** Where the built app is: HOP_WEB_DIST, else web/dist of the package. */
export function webDistDir(): string {
  const fromEnv = process.env["HOP_WEB_DIST"];
  return fromEnv !== undefined && fromEnv !== "" ? resolve(fromEnv) : join(packageRoot, "web", "dist");
}

const TYPES: Readonly<Record<string, string>> = {
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".html": "text/html; charset=utf-8",
  ".json": "application/json; charset=utf-8",
  ".map": "application/json; charset=utf-8",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".ico": "image/x-icon",
  ".woff2": "font/woff2",
  ".woff": "font/woff",
  ".txt": "text/plain; charset=utf-8",
};

/**
 * The page may load only its own scripts; it talks to this origin only (HTTP and WebSocket).
 * Inline styles are allowed: xterm.js and uPlot style their elements at run time.
 */
const CSP = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self' 'unsafe-inline'",
  "img-src 'self' data:",
  "font-src 'self' data:",
  "connect-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "frame-ancestors 'none'",
].join("; ");

/** A relative asset path of plain segments (no "..", no hidden files, no backslashes). */
const ASSET_PATH = /^[A-Za-z0-9_-][A-Za-z0-9._-]*(\/[A-Za-z0-9_-][A-Za-z0-9._-]*)*$/;

function notFound(reply: FastifyReply, path: string): FastifyReply {
  return reply.code(404).type("application/json").send({ error: { code: "NOT_FOUND", message: `no web client file ${path}` } });
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch {
    return false;
  }
}

/** Registers `/`, `/index.html` and `/assets/*`. Register before the API so they stay out of its OpenAPI catalogue. */
export function registerWebClient(app: FastifyInstance, opts: { dir?: string } = {}): void {
  const dir = resolve(opts.dir ?? webDistDir());
  const assets = join(dir, "assets");

  const index = async (_req: unknown, reply: FastifyReply): Promise<FastifyReply> => {
    const file = join(dir, "index.html");
    let html: Buffer;
    try {
      html = await readFile(file);
    } catch {
      return reply
        .code(503)
        .type("application/json")
        .header("cache-control", "no-store")
        .send({ error: { code: "WEB_CLIENT_NOT_BUILT", message: `the web client is not built (no ${file}): run 'npm run build:web'` } });
    }
    return reply
      .type("text/html; charset=utf-8")
      .header("cache-control", "no-cache")
      .header("content-security-policy", CSP)
      .header("x-content-type-options", "nosniff")
      .header("referrer-policy", "no-referrer")
      .send(html);
  };
  app.get("/", index);
  app.get("/index.html", index);

  app.get<{ Params: { "*": string } }>("/assets/*", async (req, reply) => {
    const rel = req.params["*"];
    const type = TYPES[extname(rel).toLowerCase()];
    if (!ASSET_PATH.test(rel) || type === undefined) return notFound(reply, `/assets/${rel}`);
    const file = resolve(assets, rel);
    if (!file.startsWith(assets + sep) || !(await isFile(file))) return notFound(reply, `/assets/${rel}`);
    const body = await readFile(file);
    // Vite names assets by content hash: a name never changes meaning.
    return reply.type(type).header("cache-control", "public, max-age=31536000, immutable").header("x-content-type-options", "nosniff").send(body);
  });
}
