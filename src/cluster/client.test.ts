import assert from "node:assert/strict";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, test } from "node:test";
import { WebSocketServer } from "ws";
import { HopError } from "../common/errors.js";
import { ApiError, HostClient } from "../host/client.js";
import type { ClusterEvent, TaskRow } from "./types.js";
import { ManagerClient, parseClusterEvent, queryString, taskEnded, waitOpen } from "./client.js";

const TOKEN = "t0k3n-for-the-client-tests";

interface Seen {
  method: string;
  url: string;
  auth: string | undefined;
  body: unknown;
}

const task: TaskRow = {
  id: "task-1",
  kind: "vm.migrate",
  vm: "web1",
  state: "queued",
  progress: 0,
  params: {},
  cancelRequested: false,
  createdAt: "2025-01-01T00:00:00.000Z",
};

/** A stand-in manager: records each request and answers from `reply` (default: echo). */
let server: http.Server;
let wss: WebSocketServer;
let baseUrl: string;
const seen: Seen[] = [];
let reply: (s: Seen) => { status: number; body?: unknown; raw?: string } = (s) => ({ status: 200, body: { echo: s } });

before(async () => {
  server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const text = Buffer.concat(chunks).toString("utf8");
      const s: Seen = { method: req.method ?? "", url: req.url ?? "", auth: req.headers.authorization, body: text === "" ? undefined : JSON.parse(text) };
      seen.push(s);
      const r = reply(s);
      res.statusCode = r.status;
      if (r.raw !== undefined) {
        res.end(r.raw);
      } else if (r.body !== undefined) {
        res.setHeader("content-type", "application/json");
        res.end(JSON.stringify(r.body));
      } else {
        res.end();
      }
    });
  });
  wss = new WebSocketServer({ noServer: true });
  server.on("upgrade", (req, socket, head) => {
    if (req.headers.authorization !== `Bearer ${TOKEN}`) {
      const body = JSON.stringify({ error: { code: "AUTH_INVALID", message: "bad token" } });
      socket.end(`HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`);
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      const ev: ClusterEvent = { id: 7, type: "migration.progress", at: "2025-01-01T00:00:00.000Z", severity: "info", message: "m", vm: "web1", taskId: "task-1", data: { phase: "precopy" }, host: req.url ?? "" };
      ws.send(JSON.stringify(ev));
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(async () => {
  for (const c of wss.clients) c.terminate();
  wss.close();
  server.closeAllConnections();
  await new Promise<void>((r) => server.close(() => r()));
});

function last(): Seen {
  const s = seen.at(-1);
  assert.ok(s !== undefined, "no request seen");
  return s;
}

void test("queryString keeps defined values only", () => {
  assert.equal(queryString({}), "");
  assert.equal(queryString({ a: undefined }), "");
  assert.equal(queryString({ state: "running,queued", limit: 5, vm: undefined, force: true }), "?state=running%2Cqueued&limit=5&force=true");
});

void test("every route: method, path, query, body and bearer token", async () => {
  const c = new ManagerClient(`${baseUrl}/`, TOKEN);
  assert.equal(c.baseUrl, baseUrl);
  reply = () => ({ status: 200, body: { hosts: [], vms: [], tasks: [task], events: [], networks: [], datastores: [] } });

  const calls: [() => Promise<unknown>, string, string, unknown][] = [
    [() => c.health(), "GET", "/v1/health", undefined],
    [() => c.openapi(), "GET", "/v1/openapi.json", undefined],
    [() => c.hosts(), "GET", "/v1/hosts", undefined],
    [() => c.host("host 1"), "GET", "/v1/hosts/host%201", undefined],
    [() => c.maintenance("h1", { enter: true, wait: true }), "POST", "/v1/hosts/h1/maintenance", { enter: true, wait: true }],
    [() => c.removeHost("h1"), "DELETE", "/v1/hosts/h1", undefined],
    [() => c.list(), "GET", "/v1/vms", undefined],
    [() => c.get("web1"), "GET", "/v1/vms/web1", undefined],
    [() => c.create({ name: "web1", memoryMiB: 64, host: "h2", start: true }), "POST", "/v1/vms", { name: "web1", memoryMiB: 64, host: "h2", start: true }],
    [() => c.start("web1", { host: "h2" }), "POST", "/v1/vms/web1/start", { host: "h2" }],
    [() => c.start("web1"), "POST", "/v1/vms/web1/start", {}],
    [() => c.shutdown("web1", { timeoutMs: 5000 }), "POST", "/v1/vms/web1/shutdown", { timeoutMs: 5000 }],
    [() => c.poweroff("web1"), "POST", "/v1/vms/web1/poweroff", undefined],
    [() => c.pause("web1"), "POST", "/v1/vms/web1/pause", undefined],
    [() => c.resume("web1"), "POST", "/v1/vms/web1/resume", undefined],
    [() => c.suspend("web1"), "POST", "/v1/vms/web1/suspend", undefined],
    [() => c.destroy("web1", { force: true, deleteDisk: true }), "DELETE", "/v1/vms/web1?force=true&deleteDisk=true", undefined],
    [() => c.destroy("web1"), "DELETE", "/v1/vms/web1", undefined],
    [() => c.exec("web1", "uname -a", { timeoutMs: 1000 }), "POST", "/v1/vms/web1/exec", { command: "uname -a", timeoutMs: 1000 }],
    [() => c.migrate("web1"), "POST", "/v1/vms/web1/migrate", {}],
    [() => c.migrate("web1", { to: "h2", mode: "quick", wait: false }), "POST", "/v1/vms/web1/migrate", { to: "h2", mode: "quick", wait: false }],
    [() => c.tasks(), "GET", "/v1/tasks", undefined],
    [() => c.tasks({ state: ["running", "queued"], kind: "vm.migrate", vm: "web1", host: "h1", parentId: "p", limit: 5 }), "GET", "/v1/tasks?state=running%2Cqueued&kind=vm.migrate&vm=web1&host=h1&parentId=p&limit=5", undefined],
    [() => c.tasks({ state: "failed" }), "GET", "/v1/tasks?state=failed", undefined],
    [() => c.task("task-1"), "GET", "/v1/tasks/task-1", undefined],
    [() => c.cancelTask("task-1"), "POST", "/v1/tasks/task-1/cancel", undefined],
    [() => c.listEvents({ afterId: 3, typePrefix: "host.", taskId: "task-1", severity: "error", limit: 10 }), "GET", "/v1/events?afterId=3&typePrefix=host.&taskId=task-1&severity=error&limit=10", undefined],
    [() => c.networks(), "GET", "/v1/networks", undefined],
    [() => c.datastores(), "GET", "/v1/datastores", undefined],
    [() => c.drsRecommendations(), "GET", "/v1/drs/recommendations", undefined],
    [() => c.drsRecommendations({ threshold: 0.3 }), "GET", "/v1/drs/recommendations?threshold=0.3", undefined],
    [() => c.drsApply(), "POST", "/v1/drs/apply", undefined],
  ];
  for (const [call, method, url, body] of calls) {
    await call();
    const s = last();
    assert.deepEqual([s.method, s.url, s.body], [method, url, body], `${method} ${url}`);
    assert.equal(s.auth, `Bearer ${TOKEN}`);
  }
  // List routes unwrap their envelope.
  assert.deepEqual(await c.tasks(), [task]);
  assert.deepEqual(await c.hosts(), []);
});

void test("error bodies become ApiError with the server's code and status", async () => {
  const c = new ManagerClient(baseUrl, TOKEN);
  reply = () => ({ status: 404, body: { error: { code: "VM_NOT_FOUND", message: "no VM named 'x'" } } });
  await assert.rejects(c.get("x"), (err: unknown) => {
    assert.ok(err instanceof ApiError);
    assert.equal(err.code, "VM_NOT_FOUND");
    assert.equal(err.status, 404);
    assert.equal(err.message, "no VM named 'x'");
    return true;
  });
  reply = () => ({ status: 502, raw: "upstream down" });
  await assert.rejects(c.hosts(), (err: unknown) => {
    assert.ok(err instanceof ApiError);
    assert.equal(err.code, "HTTP_502");
    assert.match(err.message, /^manager answered 502 .*upstream down/);
    return true;
  });
  reply = () => ({ status: 200, raw: "{not json" });
  await assert.rejects(c.health(), (err: unknown) => err instanceof HopError && err.code === "BAD_RESPONSE" && /manager sent invalid JSON/.test(err.message));
  reply = (s) => ({ status: 200, body: { echo: s } });
});

void test("a manager that does not listen is MANAGER_UNREACHABLE, naming its URL; host agents keep HOST_UNREACHABLE", async () => {
  const probe = http.createServer();
  await new Promise<void>((r) => probe.listen(0, "127.0.0.1", r));
  const port = (probe.address() as AddressInfo).port;
  await new Promise<void>((r) => probe.close(() => r()));
  const url = `http://127.0.0.1:${port}`;
  await assert.rejects(new ManagerClient(url, TOKEN).hosts(), (err: unknown) => {
    assert.ok(err instanceof HopError);
    assert.equal(err.code, "MANAGER_UNREACHABLE");
    assert.equal(err.message, `cannot reach the manager at ${url} (ECONNREFUSED)`);
    return true;
  });
  await assert.rejects(new HostClient(url, TOKEN).list(), (err: unknown) => err instanceof HopError && err.code === "HOST_UNREACHABLE" && err.message === `cannot reach the host agent at ${url} (ECONNREFUSED)`);
  const ws = new ManagerClient(url, TOKEN).events();
  await assert.rejects(waitOpen(ws), (err: unknown) => err instanceof HopError && err.code === "MANAGER_UNREACHABLE");
});

void test("URLs must be http(s)", () => {
  assert.throws(() => new ManagerClient("127.0.0.1:7400", TOKEN), (err: unknown) => err instanceof HopError && err.code === "BAD_HOST_URL");
  assert.throws(() => new ManagerClient("ftp://x", TOKEN), /manager URL must be http/);
});

void test("events() opens the manager's event stream with the token; a refused upgrade is the server's error", async () => {
  const ws = new ManagerClient(baseUrl, TOKEN).events();
  const got = new Promise<ClusterEvent>((resolve) => ws.once("message", (data) => resolve(parseClusterEvent(data))));
  await waitOpen(ws);
  const ev = await got;
  assert.equal(ev.type, "migration.progress");
  assert.equal(ev.taskId, "task-1");
  assert.equal(ev.host, "/v1/events"); // the fake server echoes the path in `host`
  ws.close();

  const denied = new ManagerClient(baseUrl, "wrong-token-xxxxxxxx").events();
  await assert.rejects(waitOpen(denied), (err: unknown) => err instanceof ApiError && err.code === "AUTH_INVALID" && err.status === 401);

  const con = new ManagerClient(baseUrl, TOKEN).console("web 1");
  const first = new Promise<ClusterEvent>((resolve) => con.once("message", (data) => resolve(parseClusterEvent(data))));
  await waitOpen(con);
  assert.equal((await first).host, "/v1/vms/web%201/console");
  con.close();
});

void test("taskEnded", () => {
  assert.equal(taskEnded({ state: "queued" }), false);
  assert.equal(taskEnded({ state: "running" }), false);
  for (const state of ["succeeded", "failed", "cancelled"] as const) assert.equal(taskEnded({ state }), true);
});
