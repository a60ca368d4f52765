/**
 * The host agent API over real HTTP and WebSockets (fastify on 127.0.0.1, port 0), against an
 * in-memory Supervisor that follows the real lifecycle table; plus the `hop` CLI end to end.
 */
import { parseInput } from "../common/validation.js";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import WebSocket, { type RawData } from "ws";
import { HopError } from "../common/errors.js";
import { packageRoot } from "../common/paths.js";
import { vmCreateSchema, type VmConfig, type VmCreateRequest } from "../vm/config.js";
import { isOn, nextState, type VmAction, type VmState } from "../vm/lifecycle.js";
import { ApiError, HostClient, parseHostEvent, waitOpen } from "./client.js";
import { tokensEqual } from "./auth.js";
import { parseListen, serveHost, type HostServerHandle } from "./server.js";
import type { ConsoleStream, ExecResult, HostEvent, Supervisor, VmInfo } from "./types.js";

// ---------------------------------------------------------------------------------------------
// The test double: an in-memory Supervisor with the real state machine and error codes.

class MemoryConsole implements ConsoleStream {
  private buf = Buffer.alloc(0);
  private readonly subs = new Set<(chunk: Buffer) => void>();
  push(chunk: Buffer): void {
    this.buf = Buffer.concat([this.buf, chunk]).subarray(-64 * 1024);
    for (const fn of this.subs) fn(chunk);
  }
  scrollback(): Buffer {
    return this.buf;
  }
  subscribe(fn: (chunk: Buffer) => void): () => void {
    this.subs.add(fn);
    return () => this.subs.delete(fn);
  }
}

interface MemVm {
  config: VmConfig;
  state: VmState;
  console: MemoryConsole;
  pid?: number;
  startMs?: number;
}

class MemorySupervisor implements Supervisor {
  private readonly vms = new Map<string, MemVm>();
  private readonly listeners = new Set<(ev: HostEvent) => void>();
  /** Everything written to each VM's console. */
  readonly consoleInput = new Map<string, Buffer[]>();
  private nextPid = 1000;

  constructor(readonly hostName: string) {}

  list(): VmInfo[] {
    return [...this.vms.values()].map((v) => this.info(v));
  }

  get(name: string): VmInfo {
    return this.info(this.vm(name));
  }

  async create(req: VmCreateRequest): Promise<VmInfo> {
    const r = parseInput(vmCreateSchema, req, "body");
    if (this.vms.has(r.name)) throw new HopError("VM_EXISTS", `a VM named '${r.name}' already exists on this host`, { status: 409 });
    const config: VmConfig = {
      name: r.name,
      uuid: randomUUID(),
      memoryMiB: r.memoryMiB,
      mac: r.mac ?? "02:68:6f:00:00:01",
      boot: r.boot,
      createdAt: new Date().toISOString(),
      ...(r.ip !== undefined ? { ip: r.ip } : {}),
      ...(r.gw !== undefined ? { gw: r.gw } : {}),
      ...(r.diskMiB !== undefined ? { disk: { path: `vms/${r.name}/disk.img`, sizeMiB: r.diskMiB } } : {}),
    };
    const vm: MemVm = { config, state: "defined", console: new MemoryConsole() };
    this.vms.set(r.name, vm);
    this.emit({ type: "vm.created", vm: r.name, at: new Date().toISOString() });
    return this.info(vm);
  }

  async start(name: string): Promise<VmInfo> {
    const vm = this.vm(name);
    this.move(vm, "start");
    vm.pid = this.nextPid++;
    vm.startMs = 12;
    this.move(vm, "started");
    return this.info(vm);
  }

  async pause(name: string): Promise<VmInfo> {
    const vm = this.vm(name);
    this.move(vm, "pause");
    return this.info(vm);
  }

  async resume(name: string): Promise<VmInfo> {
    const vm = this.vm(name);
    this.move(vm, "resume");
    return this.info(vm);
  }

  async shutdown(name: string, _opts?: { timeoutMs?: number }): Promise<VmInfo> {
    const vm = this.vm(name);
    this.move(vm, "shutdown");
    this.move(vm, "stopped");
    delete vm.pid;
    return this.info(vm);
  }

  async poweroff(name: string): Promise<VmInfo> {
    const vm = this.vm(name);
    this.move(vm, "poweroff");
    this.move(vm, "stopped");
    delete vm.pid;
    return this.info(vm);
  }

  async destroy(name: string, opts: { force?: boolean; deleteDisk?: boolean } = {}): Promise<void> {
    const vm = this.vm(name);
    if (isOn(vm.state)) {
      if (opts.force !== true) nextState(name, vm.state, "destroy");
      await this.poweroff(name);
    }
    nextState(name, vm.state, "destroy");
    this.vms.delete(name);
    this.emit({ type: "vm.destroyed", vm: name, at: new Date().toISOString() });
  }

  /** A toy shell: `echo ...`, `exit N`, `fail` (to stderr); anything else is "not found". */
  async exec(name: string, command: string, _opts?: { timeoutMs?: number }): Promise<ExecResult> {
    const vm = this.vm(name);
    if (vm.state !== "running") throw new HopError("VM_NOT_RUNNING", `cannot exec in VM '${name}' while it is ${vm.state}`, { status: 409 });
    const echo = /^echo (.*)$/s.exec(command);
    if (echo !== null) return { exitCode: 0, stdout: `${echo[1]}\n`, stderr: "" };
    if (command === "panic") throw new Error("the test double panicked");
    const exit = /^exit (\d+)$/.exec(command);
    if (exit !== null) return { exitCode: Number(exit[1]), stdout: "", stderr: "" };
    return { exitCode: 127, stdout: "", stderr: `sh: ${command.split(" ")[0] ?? ""}: not found\n` };
  }

  consoleWrite(name: string, data: Buffer): void {
    const vm = this.vm(name);
    if (!isOn(vm.state)) throw new HopError("VM_NOT_RUNNING", `VM '${name}' is not running`, { status: 409 });
    const list = this.consoleInput.get(name) ?? [];
    list.push(Buffer.from(data));
    this.consoleInput.set(name, list);
  }

  console(name: string): ConsoleStream {
    return this.vm(name).console;
  }

  /** Test hook: the guest prints something. */
  print(name: string, text: string): void {
    this.vm(name).console.push(Buffer.from(text));
  }

  onEvent(fn: (ev: HostEvent) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  async close(): Promise<void> {
    for (const vm of this.vms.values()) if (isOn(vm.state)) await this.poweroff(vm.config.name);
  }

  private vm(name: string): MemVm {
    const vm = this.vms.get(name);
    if (vm === undefined) throw new HopError("VM_NOT_FOUND", `no VM named '${name}' on this host`, { status: 404 });
    return vm;
  }

  private move(vm: MemVm, action: VmAction): void {
    const to = nextState(vm.config.name, vm.state, action);
    if (to === vm.state) return;
    vm.state = to;
    this.emit({ type: "vm.state", vm: vm.config.name, state: to, at: new Date().toISOString() });
  }

  private emit(ev: HostEvent): void {
    for (const fn of this.listeners) fn(ev);
  }

  private info(vm: MemVm): VmInfo {
    return {
      name: vm.config.name,
      uuid: vm.config.uuid,
      state: vm.state,
      config: vm.config,
      ...(vm.pid !== undefined ? { pid: vm.pid } : {}),
      ...(vm.startMs !== undefined ? { startMs: vm.startMs, startedFrom: vm.config.boot } : {}),
    };
  }
}

// ---------------------------------------------------------------------------------------------
// Helpers

const TOKEN = "test-token-0123456789abcdef";

let sup: MemorySupervisor;
let server: HostServerHandle;
let client: HostClient;

interface Reply {
  status: number;
  body: unknown;
}

async function http(method: string, path: string, opts: { body?: unknown; raw?: string; token?: string | null; contentType?: string } = {}): Promise<Reply> {
  const headers: Record<string, string> = {};
  if (opts.token !== null) headers["authorization"] = `Bearer ${opts.token ?? TOKEN}`;
  let body: string | undefined;
  if (opts.raw !== undefined) body = opts.raw;
  else if (opts.body !== undefined) body = JSON.stringify(opts.body);
  if (body !== undefined) headers["content-type"] = opts.contentType ?? "application/json";
  const res = await fetch(server.url + path, { method, headers, ...(body !== undefined ? { body } : {}) });
  const text = await res.text();
  return { status: res.status, body: text === "" ? undefined : JSON.parse(text) };
}

function errorOf(r: Reply): { code: string; message: string } {
  const e = (r.body as { error?: { code: string; message: string } }).error;
  assert.ok(e !== undefined, `expected an error body, got ${JSON.stringify(r.body)}`);
  return e;
}

async function expectApiError(p: Promise<unknown>, code: string, status: number): Promise<ApiError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof ApiError, `expected ApiError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    assert.equal(err.status, status);
    return err;
  }
  assert.fail(`expected ${code}`);
}

/** Buffers every message of a WebSocket from the start, so none is missed between awaits. */
function collect(ws: WebSocket): { next(ms?: number): Promise<{ data: Buffer; binary: boolean }>; closed: Promise<{ code: number; reason: string }> } {
  const queue: { data: Buffer; binary: boolean }[] = [];
  const waiters: ((m: { data: Buffer; binary: boolean }) => void)[] = [];
  ws.on("message", (data: RawData, binary: boolean) => {
    const m = { data: Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data), binary };
    const w = waiters.shift();
    if (w !== undefined) w(m);
    else queue.push(m);
  });
  const closed = new Promise<{ code: number; reason: string }>((resolve) => ws.once("close", (code: number, reason: Buffer) => resolve({ code, reason: reason.toString() })));
  return {
    next(ms = 2_000) {
      const m = queue.shift();
      if (m !== undefined) return Promise.resolve(m);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error("timed out waiting for a WebSocket message")), ms);
        waiters.push((msg) => {
          clearTimeout(timer);
          resolve(msg);
        });
      });
    },
    closed,
  };
}

/** The HTTP status (and body) of a refused WebSocket upgrade. */
function refusedUpgrade(url: string, headers: Record<string, string> = {}): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers });
    ws.on("error", () => undefined);
    ws.on("open", () => {
      ws.close();
      reject(new Error("the upgrade was accepted"));
    });
    ws.on("unexpected-response", (_req, res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => {
        resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() });
        ws.terminate();
      });
    });
  });
}

function wsUrl(path: string): string {
  return server.url.replace(/^http/, "ws") + path;
}

function runCli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const env = { ...process.env };
    delete env["HOP_TOKEN"];
    delete env["HOP_HOST"];
    const child = spawn(process.execPath, [join(packageRoot, "bin", "hop.js"), ...args], { env, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c: Buffer) => (stdout += c.toString()));
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

// ---------------------------------------------------------------------------------------------

void describe("host agent API", () => {
  before(async () => {
    sup = new MemorySupervisor("test-host");
    server = await serveHost({ supervisor: sup, token: TOKEN, listen: "127.0.0.1:0" });
    client = new HostClient(server.url, TOKEN);
  });

  after(async () => {
    await server.close();
    await sup.close();
  });

  void test("every HTTP request needs the bearer token", async () => {
    const none = await http("GET", "/v1/health", { token: null });
    assert.equal(none.status, 401);
    assert.equal(errorOf(none).code, "AUTH_REQUIRED");

    const wrong = await http("GET", "/v1/health", { token: "nope" });
    assert.equal(wrong.status, 401);
    assert.equal(errorOf(wrong).code, "AUTH_INVALID");

    const unknownRoute = await http("GET", "/v1/nothing-here", { token: null });
    assert.equal(unknownRoute.status, 401);

    // The query-string token is only for WebSockets.
    const query = await http("GET", `/v1/vms?token=${TOKEN}`, { token: null });
    assert.equal(query.status, 401);

    await expectApiError(new HostClient(server.url, "wrong").list(), "AUTH_INVALID", 401);

    const ok = await http("GET", "/v1/health");
    assert.equal(ok.status, 200);
    assert.equal((ok.body as { host: string }).host, "test-host");
    const health = await client.health();
    assert.equal(health.host, "test-host");
    assert.equal(typeof health.vms, "number");
    assert.equal(typeof health.uptimeS, "number");
  });

  void test("WebSockets need the token too (header or ?token=)", async () => {
    const none = await refusedUpgrade(wsUrl("/v1/events"));
    assert.equal(none.status, 401);
    assert.equal((JSON.parse(none.body) as { error: { code: string } }).error.code, "AUTH_REQUIRED");

    const wrong = await refusedUpgrade(wsUrl("/v1/events"), { authorization: "Bearer wrong" });
    assert.equal(wrong.status, 401);
    assert.equal((JSON.parse(wrong.body) as { error: { code: string } }).error.code, "AUTH_INVALID");

    const wrongQuery = await refusedUpgrade(wsUrl("/v1/events?token=wrong"));
    assert.equal(wrongQuery.status, 401);

    await expectApiError(waitOpen(new HostClient(server.url, "wrong").events()), "AUTH_INVALID", 401);

    const ws = new WebSocket(wsUrl(`/v1/events?token=${TOKEN}`));
    await waitOpen(ws);
    ws.close();
  });

  void test("invalid input is a 400 BAD_REQUEST naming the problem", async () => {
    const cases: [unknown, RegExp][] = [
      [{ name: "m1", memoryMiB: 50 }, /memoryMiB: memoryMiB must be at least 96/],
      [{ name: "m2", memoryMiB: 4000 }, /memoryMiB: memoryMiB must be at most 2048/],
      [{ name: "m3", memoryMiB: "abc" }, /memoryMiB: /],
      [{ name: "Bad_Name" }, /name: name must be 1-63 characters/],
      [{ name: "m4", color: "blue" }, /color/],
      [{ name: "m5", mac: "nope" }, /mac: mac must look like/],
      [undefined, /body: /],
      [[1, 2], /body: /],
    ];
    for (const [body, re] of cases) {
      const r = await http("POST", "/v1/vms", body === undefined ? {} : { body });
      assert.equal(r.status, 400, JSON.stringify(body));
      assert.equal(errorOf(r).code, "BAD_REQUEST");
      assert.match(errorOf(r).message, re);
    }

    const badJson = await http("POST", "/v1/vms", { raw: '{"name": "x",' });
    assert.equal(badJson.status, 400);
    assert.deepEqual(badJson.body, { error: { code: "BAD_REQUEST", message: "request body is not valid JSON" } });

    const badName = await http("GET", "/v1/vms/Not_Valid");
    assert.equal(badName.status, 400);
    assert.match(errorOf(badName).message, /^name: /);

    const badQuery = await http("DELETE", "/v1/vms/whatever?force=maybe");
    assert.equal(badQuery.status, 400);
    assert.match(errorOf(badQuery).message, /force/);

    const extraOnStart = await http("POST", "/v1/vms/whatever/start", { body: { now: true } });
    assert.equal(extraOnStart.status, 400);

    const wrongType = await http("POST", "/v1/vms", { raw: "name=x", contentType: "text/plain" });
    assert.equal(wrongType.status, 415);
    assert.equal(errorOf(wrongType).code, "UNSUPPORTED_MEDIA_TYPE");

    const tooBig = await http("POST", "/v1/vms", { body: { name: "big", pad: "x".repeat(1024 * 1024 + 10) } });
    assert.equal(tooBig.status, 413);
    assert.equal(errorOf(tooBig).code, "PAYLOAD_TOO_LARGE");

    await expectApiError(client.create({ name: "ok-name", memoryMiB: 50 }), "BAD_REQUEST", 400);
  });

  void test("unknown routes and unknown VMs are 404", async () => {
    const route = await http("GET", "/v1/nothing-here");
    assert.equal(route.status, 404);
    assert.equal(errorOf(route).code, "NOT_FOUND");

    for (const [method, path] of [
      ["GET", "/v1/vms/ghost"],
      ["POST", "/v1/vms/ghost/start"],
      ["POST", "/v1/vms/ghost/shutdown"],
      ["DELETE", "/v1/vms/ghost"],
    ] as const) {
      const r = await http(method, path);
      assert.equal(r.status, 404, `${method} ${path}`);
      assert.equal(errorOf(r).code, "VM_NOT_FOUND");
    }
    const exec = await http("POST", "/v1/vms/ghost/exec", { body: { command: "true" } });
    assert.equal(exec.status, 404);
    await expectApiError(client.get("ghost"), "VM_NOT_FOUND", 404);
  });

  void test("create, start, pause, resume, list, stop and destroy", async () => {
    const created = await http("POST", "/v1/vms", { body: { name: "web1", memoryMiB: 128, ip: "10.10.0.11/24", diskMiB: 16 } });
    assert.equal(created.status, 201);
    const info = created.body as VmInfo;
    assert.equal(info.name, "web1");
    assert.equal(info.state, "defined");
    assert.equal(info.config.memoryMiB, 128);
    assert.equal(info.config.disk?.sizeMiB, 16);

    await expectApiError(client.create({ name: "web1" }), "VM_EXISTS", 409);

    assert.equal((await client.start("web1")).state, "running");
    assert.equal((await client.pause("web1")).state, "paused");
    assert.equal((await client.resume("web1")).state, "running");

    const err = await expectApiError(client.resume("web1"), "VM_INVALID_TRANSITION", 409);
    assert.match(err.message, /cannot resume VM 'web1' while it is running/);
    const raw = await http("POST", "/v1/vms/web1/resume");
    assert.equal(raw.status, 409);
    assert.equal(errorOf(raw).code, "VM_INVALID_TRANSITION");

    const list = await http("GET", "/v1/vms");
    assert.equal(list.status, 200);
    const vms = (list.body as { vms: VmInfo[] }).vms;
    assert.deepEqual(
      vms.map((v) => [v.name, v.state]),
      [["web1", "running"]],
    );
    assert.deepEqual((await client.list()).map((v) => v.name), ["web1"]);
    assert.equal((await client.health()).vms, 1);

    // Destroying a running VM needs force.
    await expectApiError(client.destroy("web1"), "VM_INVALID_TRANSITION", 409);

    assert.equal((await client.shutdown("web1", { timeoutMs: 1000 })).state, "stopped");
    const badTimeout = await http("POST", "/v1/vms/web1/shutdown", { body: { timeoutMs: -1 } });
    assert.equal(badTimeout.status, 400);

    assert.equal((await client.start("web1")).state, "running");
    assert.equal((await client.poweroff("web1")).state, "stopped");
    assert.equal((await client.start("web1")).state, "running");

    const del = await http("DELETE", "/v1/vms/web1?force=true&deleteDisk=true");
    assert.equal(del.status, 204);
    assert.equal(del.body, undefined);
    await expectApiError(client.get("web1"), "VM_NOT_FOUND", 404);

    await client.create({ name: "web2" });
    await client.destroy("web2", { deleteDisk: true });
    assert.deepEqual(await client.list(), []);
  });

  void test("exec returns the guest command's exit code and output", async () => {
    await client.create({ name: "ex1" });
    await expectApiError(client.exec("ex1", "echo hi"), "VM_NOT_RUNNING", 409);
    await client.start("ex1");

    assert.deepEqual(await client.exec("ex1", "echo hello world"), { exitCode: 0, stdout: "hello world\n", stderr: "" });
    assert.deepEqual(await client.exec("ex1", "exit 3", { timeoutMs: 5000 }), { exitCode: 3, stdout: "", stderr: "" });
    const missing = await http("POST", "/v1/vms/ex1/exec", { body: { command: "frobnicate" } });
    assert.equal(missing.status, 200);
    assert.deepEqual(missing.body, { exitCode: 127, stdout: "", stderr: "sh: frobnicate: not found\n" });

    for (const body of [{}, { command: "" }, { command: "x".repeat(64 * 1024 + 1) }, { command: "true", timeoutMs: 0 }, { command: "true", timeoutMs: 600_001 }, { command: "true", shell: "bash" }]) {
      const r = await http("POST", "/v1/vms/ex1/exec", { body });
      assert.equal(r.status, 400, JSON.stringify(body).slice(0, 80));
      assert.equal(errorOf(r).code, "BAD_REQUEST");
    }
    // A non-HopError from the supervisor is a 500 INTERNAL.
    const panic = await http("POST", "/v1/vms/ex1/exec", { body: { command: "panic" } });
    assert.equal(panic.status, 500);
    assert.equal(errorOf(panic).code, "INTERNAL");
    assert.match(errorOf(panic).message, /panicked/);

    await client.destroy("ex1", { force: true });
  });

  void test("console WebSocket: scrollback, then live output; input reaches the VM", async () => {
    await client.create({ name: "con1" });
    await client.start("con1");
    sup.print("con1", "boot line 1\nboot line 2\n");

    const ws = client.console("con1");
    const msgs = collect(ws);
    await waitOpen(ws);
    const first = await msgs.next();
    assert.equal(first.binary, true);
    assert.equal(first.data.toString(), "boot line 1\nboot line 2\n");

    sup.print("con1", "live output\n");
    const live = await msgs.next();
    assert.equal(live.binary, true);
    assert.equal(live.data.toString(), "live output\n");

    ws.send(Buffer.from("uname -a\n"), { binary: true });
    ws.send("ls\n");
    const deadline = Date.now() + 2000;
    while ((sup.consoleInput.get("con1")?.length ?? 0) < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(
      sup.consoleInput.get("con1")?.map((b) => b.toString()),
      ["uname -a\n", "ls\n"],
    );

    // Typing into a stopped VM: an error as a text frame; the console stays attached.
    await client.poweroff("con1");
    ws.send("echo\n");
    const err = await msgs.next();
    assert.equal(err.binary, false);
    assert.equal((JSON.parse(err.data.toString()) as { error: { code: string } }).error.code, "VM_NOT_RUNNING");

    // Destroying the VM ends the console.
    await client.destroy("con1");
    const closed = await msgs.closed;
    assert.equal(closed.code, 1000);
    assert.match(closed.reason, /destroyed/);
  });

  void test("console WebSocket for an unknown VM closes with 4404", async () => {
    const ws = client.console("ghost");
    const msgs = collect(ws);
    await waitOpen(ws);
    const closed = await msgs.closed;
    assert.equal(closed.code, 4404);
    assert.match(closed.reason, /ghost/);

    const bad = client.console("Bad_Name");
    const badMsgs = collect(bad);
    await waitOpen(bad);
    assert.equal((await badMsgs.closed).code, 4400);
  });

  void test("events WebSocket streams host events", async () => {
    const ws = client.events();
    const msgs = collect(ws);
    await waitOpen(ws);
    await client.create({ name: "ev1" });
    await client.start("ev1");
    const events: HostEvent[] = [];
    for (let i = 0; i < 3; i++) events.push(parseHostEvent((await msgs.next()).data));
    assert.deepEqual(
      events.map((e) => [e.type, e.vm, e.type === "vm.state" ? e.state : undefined]),
      [
        ["vm.created", "ev1", undefined],
        ["vm.state", "ev1", "starting"],
        ["vm.state", "ev1", "running"],
      ],
    );
    await client.destroy("ev1", { force: true });
    ws.close();
    await msgs.closed;
  });

  void test("the hop CLI talks to the API", async () => {
    await client.create({ name: "cli1", memoryMiB: 96 });
    await client.start("cli1");

    const list = await runCli(["vm", "list", "--json", "--host", server.url, "--token", TOKEN]);
    assert.equal(list.code, 0, list.stderr);
    const parsed = JSON.parse(list.stdout) as { vms: VmInfo[] };
    assert.deepEqual(
      parsed.vms.map((v) => [v.name, v.state, v.config.memoryMiB]),
      [["cli1", "running", 96]],
    );

    const human = await runCli(["vm", "list", "--host", server.url, "--token", TOKEN]);
    assert.equal(human.code, 0, human.stderr);
    assert.match(human.stdout, /^NAME\s+STATE\s+MEMORY/);
    assert.match(human.stdout, /cli1\s+running\s+96 MiB/);

    const denied = await runCli(["vm", "list", "--json", "--host", server.url, "--token", "wrong"]);
    assert.equal(denied.code, 1);
    assert.match(denied.stderr, /^error: .+ \(AUTH_INVALID\)$/m);
    assert.doesNotMatch(denied.stderr, /\n\s+at /); // no stack trace

    const exec = await runCli(["vm", "exec", "cli1", "--host", server.url, "--token", TOKEN, "--", "exit", "7"]);
    assert.equal(exec.code, 7, exec.stderr);
    const echo = await runCli(["vm", "exec", "cli1", "--host", server.url, "--token", TOKEN, "--", "echo", "a", "b"]);
    assert.equal(echo.code, 0, echo.stderr);
    assert.equal(echo.stdout, "a b\n");

    const notFound = await runCli(["vm", "show", "ghost", "--host", server.url, "--token", TOKEN]);
    assert.equal(notFound.code, 1);
    assert.match(notFound.stderr, /\(VM_NOT_FOUND\)/);

    const usage = await runCli(["vm", "create", "x", "--memory", "lots", "--token", TOKEN]);
    assert.equal(usage.code, 2);

    await client.destroy("cli1", { force: true });
  });
});

void test("closing the server closes its WebSockets; a stopped server is HOST_UNREACHABLE", async () => {
  const s = new MemorySupervisor("closing");
  const srv = await serveHost({ supervisor: s, token: TOKEN, listen: "127.0.0.1:0" });
  const c = new HostClient(srv.url, TOKEN);
  const ws = c.events();
  const msgs = collect(ws);
  await waitOpen(ws);
  await srv.close();
  assert.equal((await msgs.closed).code, 1001);
  await s.close();

  try {
    await c.health();
    assert.fail("expected HOST_UNREACHABLE");
  } catch (err) {
    assert.ok(err instanceof HopError);
    assert.equal(err.code, "HOST_UNREACHABLE");
    assert.ok(err.message.includes(srv.url), err.message);
  }
});

void test("listen addresses and token comparison", () => {
  assert.deepEqual(parseListen("127.0.0.1:7401"), { host: "127.0.0.1", port: 7401 });
  assert.deepEqual(parseListen(":7401"), { host: "0.0.0.0", port: 7401 });
  assert.deepEqual(parseListen("[::1]:0"), { host: "::1", port: 0 });
  assert.deepEqual(parseListen("localhost:80"), { host: "localhost", port: 80 });
  for (const bad of ["7401", "host:", "a:b", "1.2.3.4:70000", ""]) {
    assert.throws(() => parseListen(bad), (err: unknown) => err instanceof HopError && err.code === "BAD_LISTEN_ADDRESS", bad);
  }
  assert.equal(tokensEqual("abc", "abc"), true);
  assert.equal(tokensEqual("abc", "abd"), false);
  assert.equal(tokensEqual("abc", "abcd"), false);
  assert.equal(tokensEqual("", "abc"), false);
});
