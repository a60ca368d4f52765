/**
 * The manager serves the web client: its page and assets without a token (GET/HEAD only), the API
 * still behind the token, nothing outside web/dist, a clear 503 when the app is not built, and
 * createApiApp refuses to make an API route public.
 */
import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { HopError } from "../common/errors.js";
import { createLogger } from "../common/log.js";
import { MemoryStore, serveManager, type ManagerHandle } from "../cluster/index.js";
import { createApiApp } from "../host/server.js";
import { WEB_PUBLIC_ROUTES } from "./static.js";

const TOKEN = "web-static-test-token-0123456789";
let dir = "";

async function startManager(dist: string): Promise<ManagerHandle> {
  const saved = process.env["HOP_WEB_DIST"];
  process.env["HOP_WEB_DIST"] = dist;
  try {
    return await serveManager({ listen: "127.0.0.1:0", db: ":memory:", token: TOKEN, store: new MemoryStore() });
  } finally {
    if (saved === undefined) delete process.env["HOP_WEB_DIST"];
    else process.env["HOP_WEB_DIST"] = saved;
  }
}

void describe("web client served by the manager", () => {
  let m: ManagerHandle;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "hop-web-static-"));
    await mkdir(join(dir, "dist", "assets"), { recursive: true });
    await writeFile(join(dir, "dist", "index.html"), "<!doctype html><title>Hopvisor</title><script type=module src=/assets/app-1234.js></script>");
    await writeFile(join(dir, "dist", "assets", "app-1234.js"), "console.log('hop')");
    await writeFile(join(dir, "secret.txt"), "not for the web");
    m = await startManager(join(dir, "dist"));
  });

  after(async () => {
    await m.close();
    await rm(dir, { recursive: true, force: true });
  });

  void test("the page and its assets need no token; the API does", async () => {
    const page = await fetch(`${m.url}/`);
    assert.equal(page.status, 200);
    assert.match(page.headers.get("content-type") ?? "", /^text\/html/);
    assert.match(page.headers.get("content-security-policy") ?? "", /default-src 'self'/);
    assert.match(await page.text(), /<title>Hopvisor<\/title>/);
    assert.equal((await fetch(`${m.url}/index.html`)).status, 200);
    assert.equal((await fetch(`${m.url}/`, { method: "HEAD" })).status, 200);

    const js = await fetch(`${m.url}/assets/app-1234.js`);
    assert.equal(js.status, 200);
    assert.match(js.headers.get("content-type") ?? "", /^text\/javascript/);
    assert.match(js.headers.get("cache-control") ?? "", /immutable/);
    assert.equal(await js.text(), "console.log('hop')");

    assert.equal((await fetch(`${m.url}/v1/hosts`)).status, 401);
    assert.equal((await fetch(`${m.url}/v1/health`, { headers: { authorization: "Bearer wrong-token-wrong-token" } })).status, 401);
    assert.equal((await fetch(`${m.url}/v1/health`, { headers: { authorization: `Bearer ${TOKEN}` } })).status, 200);
    // Public means GET/HEAD of those routes only; anything else still needs the token.
    assert.equal((await fetch(`${m.url}/`, { method: "POST" })).status, 401);
    assert.equal((await fetch(`${m.url}/favicon.ico`)).status, 401);
  });

  void test("nothing outside web/dist is served", async () => {
    for (const path of ["/assets/..%2f..%2fsecret.txt", "/assets/%2e%2e/%2e%2e/secret.txt", "/assets/.hidden.js", "/assets/missing.js", "/assets/app-1234.exe"]) {
      const r = await fetch(`${m.url}${path}`);
      // 404 from the asset route; 401 when the client resolved the dots and the path left /assets.
      assert.ok(r.status === 404 || r.status === 401, `${path}: ${r.status}`);
      assert.doesNotMatch(await r.text(), /not for the web/);
    }
  });

  void test("the web routes stay out of the API's OpenAPI document", async () => {
    const doc = (await (await fetch(`${m.url}/v1/openapi.json`, { headers: { authorization: `Bearer ${TOKEN}` } })).json()) as { paths: Record<string, unknown> };
    assert.deepEqual(Object.keys(doc.paths).filter((p) => !p.startsWith("/v1/")), []);
  });

  void test("without a build, / answers a clear 503", async () => {
    const bare = await startManager(join(dir, "no-such-dist"));
    try {
      const r = await fetch(`${bare.url}/`);
      assert.equal(r.status, 503);
      const body = (await r.json()) as { error: { code: string; message: string } };
      assert.equal(body.error.code, "WEB_CLIENT_NOT_BUILT");
      assert.match(body.error.message, /npm run build:web/);
      assert.equal((await fetch(`${bare.url}/assets/app-1234.js`)).status, 404);
      assert.equal((await fetch(`${bare.url}/v1/health`, { headers: { authorization: `Bearer ${TOKEN}` } })).status, 200, "the API works without the web client");
    } finally {
      await bare.close();
    }
  });

  void test("an API route cannot be made public", async () => {
    for (const route of ["/v1/health", "/v1/*", "/*", "/:any", "v1"]) {
      await assert.rejects(
        createApiApp({ token: TOKEN, log: createLogger("test"), role: "test", register: () => undefined, publicRoutes: [route] }),
        (err: unknown) => err instanceof HopError && err.code === "BAD_PUBLIC_ROUTE",
        route,
      );
    }
    assert.ok(WEB_PUBLIC_ROUTES.every((r) => !r.startsWith("/v1")));
  });
});
