import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtemp, mkdir, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, afterEach, beforeEach, test } from "node:test";
import { CommanderError, type Command } from "commander";
import { HopError } from "../common/errors.js";
import { packageRoot } from "../common/paths.js";
import type { HostInfo } from "../cluster/api-types.js";
import type { TaskRow, VmRow } from "../cluster/types.js";
import type { MigrationReport } from "../migration/index.js";
import { CLUSTER_FILE, pidAlive, pidOwnership, planPorts, stopPid, upTable, type ClusterFile } from "./cluster.js";
import { DEFAULT_HOST_URL, clearContext, connectManager, contextFile, readContext, resolveTarget, writeContext } from "./common.js";
import { formatAgo, formatMiB } from "./format.js";
import { describeHost, hostState, hostTable } from "./hostadmin.js";
import { buildProgram } from "./main.js";
import { clusterToken } from "./manager.js";
import { describeTask, parseStates, taskTable } from "./task.js";
import { clusterVmTable } from "./vm.js";

// ---------------------------------------------------------------------------------------------
// Option parsing: the real program, every action replaced by a recorder.

interface Parsed {
  path: string;
  args: unknown[];
  opts: Record<string, unknown>;
}

function allCommands(cmd: Command): Command[] {
  return [cmd, ...cmd.commands.flatMap(allCommands)];
}

function commandPath(cmd: Command): string {
  const names: string[] = [];
  for (let c: Command | null = cmd; c !== null && c.parent !== null; c = c.parent) names.unshift(c.name());
  return names.join(" ");
}

async function parse(...argv: string[]): Promise<Parsed> {
  const program = buildProgram();
  let got: Parsed | undefined;
  for (const c of allCommands(program)) {
    c.exitOverride().configureOutput({ writeOut: () => undefined, writeErr: () => undefined });
    c.action((...a: unknown[]) => {
      const cmd = a.at(-1) as Command;
      got = { path: commandPath(cmd), args: a.slice(0, -2), opts: cmd.opts() };
    });
  }
  await program.parseAsync(["node", "hop", ...argv]);
  assert.ok(got !== undefined, `no action ran for ${argv.join(" ")}`);
  return got;
}

async function parseError(...argv: string[]): Promise<CommanderError> {
  try {
    await parse(...argv);
  } catch (err) {
    assert.ok(err instanceof CommanderError, String(err));
    return err;
  }
  assert.fail(`expected a usage error for: ${argv.join(" ")}`);
}

void test("host list/show/maintenance join `hop host serve`", async () => {
  const program = buildProgram();
  const host = program.commands.find((c) => c.name() === "host");
  assert.deepEqual(host?.commands.map((c) => c.name()).sort(), ["list", "maintenance", "serve", "show"]);

  const list = await parse("host", "list", "--json", "--host", "http://127.0.0.1:1", "--token", "t");
  assert.equal(list.path, "host list");
  assert.deepEqual(list.opts, { json: true, host: "http://127.0.0.1:1", token: "t" });
  assert.equal((await parse("host", "ls")).path, "host list");
  assert.deepEqual((await parse("host", "show", "host2")).args, ["host2"]);
  const m = await parse("host", "maintenance", "host1", "--enter", "--wait");
  assert.deepEqual([m.args, m.opts], [["host1"], { enter: true, wait: true }]);
});

void test("task list filters, show and cancel", async () => {
  const t = await parse("task", "list", "--state", "running,failed", "--kind", "vm.migrate", "--vm", "web1", "--on-host", "host1", "--parent", "p1", "--limit", "5", "--json");
  assert.deepEqual(t.opts, { state: ["running", "failed"], kind: "vm.migrate", vm: "web1", onHost: "host1", parent: "p1", limit: 5, json: true });
  assert.equal((await parseError("task", "list", "--state", "bogus")).code, "commander.invalidArgument");
  assert.equal((await parseError("task", "list", "--limit", "0")).code, "commander.invalidArgument");
  assert.deepEqual((await parse("task", "show", "abc")).args, ["abc"]);
  assert.equal((await parse("task", "cancel", "abc")).path, "task cancel");
  assert.deepEqual(parseStates(" queued , running"), ["queued", "running"]);
});

void test("cluster up/down/status/balance options", async () => {
  const up = await parse("cluster", "up", "--hosts", "3", "--dir", "/tmp/c", "--base-port", "9000");
  assert.deepEqual(up.opts, { hosts: 3, dir: "/tmp/c", basePort: 9000, timeout: 60 });
  assert.deepEqual((await parse("cluster", "up")).opts, { hosts: 2, timeout: 60 });
  assert.equal((await parseError("cluster", "up", "--hosts", "0")).code, "commander.invalidArgument");
  assert.deepEqual((await parse("cluster", "down", "--dir", "/tmp/c", "--json")).opts, { dir: "/tmp/c", json: true });
  assert.equal((await parse("cluster", "status")).path, "cluster status");
  assert.deepEqual((await parse("cluster", "balance", "--dry-run", "--threshold", "0.3")).opts, { dryRun: true, threshold: 0.3 });
  assert.equal((await parseError("cluster", "balance", "--threshold", "2")).code, "commander.invalidArgument");
});

void test("manager serve options", async () => {
  const s = await parse("manager", "serve", "--db", "m.db", "--listen", "127.0.0.1:0", "--drs", "auto", "--drs-interval-ms", "5000", "--drs-threshold", "0.25", "--url-file", "u", "--lease-ms", "3000");
  assert.deepEqual(s.opts, { db: "m.db", listen: "127.0.0.1:0", drs: "auto", drsIntervalMs: 5000, drsThreshold: 0.25, urlFile: "u", leaseMs: 3000, maxMigrationsPerHost: 4, maxMigrationsPerCluster: 8 });
  assert.equal((await parse("manager", "serve", "--db", "m.db")).opts["listen"], "127.0.0.1:7400");
  assert.equal((await parseError("manager", "serve")).code, "commander.missingMandatoryOptionValue");
  assert.equal((await parseError("manager", "serve", "--db", "x", "--token", "a", "--token-file", "b")).code, "commander.conflictingOption");
  assert.equal((await parseError("manager", "serve", "--db", "x", "--drs", "sometimes")).code, "commander.invalidArgument");
});

void test("vm create --on --start, vm start --on, vm migrate without --to", async () => {
  const c = await parse("vm", "create", "web1", "--memory", "64", "--on", "host2", "--start");
  assert.deepEqual([c.args, c.opts], [["web1"], { memory: 64, on: "host2", start: true }]);
  assert.deepEqual((await parse("vm", "start", "web1", "--on", "host1")).opts, { on: "host1" });
  assert.deepEqual((await parse("vm", "start", "web1")).opts, {});
  assert.deepEqual((await parse("vm", "migrate", "web1")).opts, { mode: "live", wait: true });
  assert.deepEqual((await parse("vm", "migrate", "web1", "--to", "host2", "--no-wait", "--mode", "quick")).opts, { to: "host2", mode: "quick", wait: false });
  // unchanged host-agent commands
  assert.deepEqual((await parse("vm", "exec", "web1", "--", "echo", "--json")).args, ["web1", ["echo", "--json"]]);
  assert.equal((await parse("host", "serve", "--datastore", "/tmp/ds")).opts["listen"], "127.0.0.1:7401");
});

// ---------------------------------------------------------------------------------------------
// Where commands send their requests: --host/--token, $HOP_HOST/$HOP_TOKEN, the context, defaults.

const ENV_KEYS = ["HOP_CONFIG_DIR", "HOP_HOST", "HOP_TOKEN"] as const;
let savedEnv: Record<string, string | undefined> = {};
let cfg = "";
const tmpDirs: string[] = [];

async function tempDir(prefix: string): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), prefix));
  tmpDirs.push(d);
  return d;
}

beforeEach(async () => {
  savedEnv = Object.fromEntries(ENV_KEYS.map((k) => [k, process.env[k]]));
  for (const k of ENV_KEYS) delete process.env[k];
  cfg = await tempDir("hop-cfg-");
  process.env["HOP_CONFIG_DIR"] = cfg;
});

afterEach(() => {
  for (const k of ENV_KEYS) {
    const v = savedEnv[k];
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
});

after(async () => {
  for (const d of tmpDirs) await rm(d, { recursive: true, force: true });
});

void test("target resolution: option > env > cluster context > default, for the URL and the token", async () => {
  await assert.rejects(resolveTarget({}), (err: unknown) => err instanceof HopError && err.code === "TOKEN_MISSING");
  await writeFile(join(cfg, "token"), "file-token\n");
  assert.deepEqual(await resolveTarget({}), { url: DEFAULT_HOST_URL, urlFrom: "default", token: "file-token" });

  await writeContext({ url: "http://127.0.0.1:7777", token: "ctx-token" });
  assert.equal((await stat(contextFile())).mode & 0o777, 0o600);
  assert.deepEqual(await readContext(), { url: "http://127.0.0.1:7777", token: "ctx-token" });
  assert.deepEqual(await resolveTarget({}), { url: "http://127.0.0.1:7777", urlFrom: "context", token: "ctx-token" });

  process.env["HOP_HOST"] = "http://127.0.0.1:8888";
  process.env["HOP_TOKEN"] = "env-token";
  assert.deepEqual(await resolveTarget({}), { url: "http://127.0.0.1:8888", urlFrom: "env", token: "env-token" });

  assert.deepEqual(await resolveTarget({ host: "http://127.0.0.1:9999", token: "opt-token" }), { url: "http://127.0.0.1:9999", urlFrom: "option", token: "opt-token" });
  // --host alone still takes the token from the environment / context
  delete process.env["HOP_TOKEN"];
  assert.deepEqual(await resolveTarget({ host: "http://127.0.0.1:9999" }), { url: "http://127.0.0.1:9999", urlFrom: "option", token: "ctx-token" });

  delete process.env["HOP_HOST"];
  assert.equal((await connectManager({})).baseUrl, "http://127.0.0.1:7777");

  assert.equal(await clearContext("http://elsewhere:1"), false);
  assert.equal(await clearContext("http://127.0.0.1:7777"), true);
  assert.equal(await readContext(), undefined);
  assert.equal((await resolveTarget({})).urlFrom, "default");
});

void test("a broken context file is reported, not ignored", async () => {
  await writeFile(contextFile(), "{nope");
  await assert.rejects(resolveTarget({}), (err: unknown) => err instanceof HopError && err.code === "CONTEXT_INVALID");
  await writeFile(contextFile(), JSON.stringify({ url: 5 }));
  await assert.rejects(readContext(), (err: unknown) => err instanceof HopError && err.code === "CONTEXT_INVALID");
});

void test("manager serve: the cluster token comes from --token, --token-file or <dir of db>/cluster-token", async () => {
  const dir = await tempDir("hop-mgr-");
  await assert.rejects(clusterToken({ token: "short", db: join(dir, "m.db") }), (err: unknown) => err instanceof HopError && err.code === "TOKEN_TOO_SHORT");
  assert.equal((await clusterToken({ token: " 0123456789abcdef ", db: join(dir, "m.db") })).token, "0123456789abcdef");
  const generated = await clusterToken({ db: join(dir, "m.db") });
  assert.match(generated.token, /^[0-9a-f]{64}$/);
  assert.match(generated.note ?? "", /generated a cluster token and wrote it to .*cluster-token/);
  assert.equal((await stat(join(dir, "cluster-token"))).mode & 0o777, 0o600);
  const again = await clusterToken({ db: join(dir, "m.db") });
  assert.equal(again.token, generated.token);
  await writeFile(join(dir, "tf"), "0123456789abcdefXYZ\n");
  assert.equal((await clusterToken({ tokenFile: join(dir, "tf"), db: "x" })).token, "0123456789abcdefXYZ");
});

// ---------------------------------------------------------------------------------------------
// Human output.

const NOW = Date.parse("2025-03-01T12:00:00.000Z");

/** Overrides where `undefined` removes the field. */
type Loose<T> = { [K in keyof T]?: T[K] | undefined };

function merge<T extends object>(base: T, over: Loose<T>): T {
  const out: Record<string, unknown> = { ...base, ...over };
  for (const k of Object.keys(out)) if (out[k] === undefined) delete out[k];
  return out as T;
}

function hostInfo(over: Loose<HostInfo>): HostInfo {
  return merge<HostInfo>({
    name: "host1",
    url: "http://127.0.0.1:7401",
    datastoreId: "ds-1",
    version: "0.1.0",
    capacity: { cpus: 4, memoryMiB: 4096 },
    load: { cpuPct: 50, memUsedMiB: 256, rssMiB: 300, vmCount: 2 },
    connection: "connected",
    maintenance: "none",
    joinedAt: "2025-03-01T11:00:00.000Z",
    lastHeartbeatAt: "2025-03-01T11:59:59.000Z",
    vms: ["a", "b"],
    reservedMiB: 256,
  }, over);
}

void test("host table: state with maintenance, VMs, memory reserved/capacity, CPU share, heartbeat age", () => {
  const text = hostTable(
    [hostInfo({}), hostInfo({ name: "host2", maintenance: "in", vms: [], reservedMiB: 0, load: undefined, lastHeartbeatAt: undefined, capacity: { cpus: 1, memoryMiB: 2048 } }), hostInfo({ name: "host3", connection: "down", maintenance: "entering" })],
    NOW,
  );
  const lines = text.split("\n");
  assert.match(lines[0]!, /^NAME\s+STATE\s+VMS\s+MEM\s+CPU\s+LAST HEARTBEAT$/);
  assert.match(lines[1]!, /^host1\s+connected\s+2\s+256\/4096 MiB\s+13% of 4 cpus\s+1s ago$/);
  assert.match(lines[2]!, /^host2\s+connected, maintenance\s+0\s+0\/2048 MiB\s+- of 1 cpu\s+-$/);
  assert.match(lines[3]!, /^host3\s+down, entering maintenance\s+2/);
  assert.equal(hostTable([]), "no hosts have joined the cluster");
  assert.equal(hostState({ connection: "disconnected", maintenance: "none" }), "disconnected");
  const shown = describeHost(hostInfo({ migrationAddress: { host: "127.0.0.1", port: 9001 } }), NOW);
  assert.match(shown, /vms:\s+2: a, b/);
  assert.match(shown, /migration:\s+127\.0\.0\.1:9001/);
  assert.match(shown, /last heartbeat:\s+2025-03-01T11:59:59\.000Z \(1s ago\)/);
});

void test("formatAgo and formatMiB", () => {
  assert.equal(formatAgo(undefined, NOW), "-");
  assert.equal(formatAgo("garbage", NOW), "-");
  assert.equal(formatAgo("2025-03-01T11:59:30.000Z", NOW), "30s ago");
  assert.equal(formatAgo("2025-03-01T11:30:00.000Z", NOW), "30m ago");
  assert.equal(formatAgo("2025-03-01T09:00:00.000Z", NOW), "3h ago");
  assert.equal(formatAgo("2025-02-20T12:00:00.000Z", NOW), "9d ago");
  assert.equal(formatAgo("2025-03-01T12:00:05.000Z", NOW), "0s ago"); // clock skew
  assert.equal(formatMiB(512), "512 MiB");
  assert.equal(formatMiB(2048), "2 GiB");
  assert.equal(formatMiB(1536), "1.5 GiB");
});

const report: MigrationReport = {
  migrationId: "m-1",
  vm: "web1",
  mode: "live",
  from: "host1",
  to: "host2",
  ok: true,
  totalMs: 800,
  downtimeMs: 30,
  downtime: { stopMs: 1, finalCopyMs: 10, stateSaveMs: 5, transferMs: 5, restoreMs: 8, resumeMs: 1 },
  bytes: 1e6,
  pages: 250,
  rounds: [],
  throttleMax: 0,
  stunnedMs: 0,
};

function taskRow(over: Loose<TaskRow>): TaskRow {
  return merge<TaskRow>({ id: "t1", kind: "vm.migrate", vm: "web1", state: "running", progress: 0.42, message: "round 2", params: { to: "host2" }, cancelRequested: false, createdAt: "2025-03-01T11:59:00.000Z", startedAt: "2025-03-01T11:59:01.000Z" }, over);
}

void test("task table and task details", () => {
  const text = taskTable(
    [
      taskRow({}),
      taskRow({ id: "t2", kind: "host.maintenance.enter", vm: undefined, host: "host1", state: "failed", error: { code: "NO_TARGET", message: "no host can take web1" }, message: undefined }),
      taskRow({ id: "t3", state: "queued", cancelRequested: true, progress: 0 }),
    ],
    NOW,
  );
  const lines = text.split("\n");
  assert.match(lines[0]!, /^ID\s+KIND\s+TARGET\s+STATE\s+PROGRESS\s+CREATED\s+MESSAGE$/);
  assert.match(lines[1]!, /^t1\s+vm\.migrate\s+web1\s+running\s+42%\s+60s ago\s+round 2$/);
  assert.match(lines[2]!, /^t2\s+host\.maintenance\.enter\s+host1\s+failed\s+42%\s+60s ago\s+NO_TARGET: no host can take web1$/);
  assert.match(lines[3]!, /^t3\s+vm\.migrate\s+web1\s+queued\*/);
  assert.equal(taskTable([]), "no tasks");

  const done = describeTask(taskRow({ state: "succeeded", progress: 1, endedAt: "2025-03-01T11:59:03.500Z", result: { report } }), NOW);
  assert.match(done, /state:\s+succeeded/);
  assert.match(done, /duration:\s+2\.5 s/);
  assert.match(done, /params:\s+\{"to":"host2"\}/);
  assert.match(done, /migrated:\s+web1: host1 -> host2 \(live\)/); // the report, formatted
  assert.doesNotMatch(done, /result:/);
  const other = describeTask(taskRow({ kind: "vm.create", result: { host: "host2" } }), NOW);
  assert.match(other, /result:\s+\{"host":"host2"\}/);
  assert.match(other, /duration:\s+59\.0 s so far/);
});

void test("cluster VM table names the host of each VM", () => {
  const vm: VmRow = {
    name: "web1",
    uuid: "u",
    host: "host2",
    generation: 3,
    desiredPower: "running",
    state: "running",
    config: { name: "web1", uuid: "u", memoryMiB: 128, mac: "02:68:6f:00:00:01", boot: "template", createdAt: "2025-03-01T11:00:00.000Z", ip: "10.0.0.5/24" },
    cpuPct: 12.4,
    updatedAt: "2025-03-01T11:00:00.000Z",
  };
  const lines = clusterVmTable([vm]).split("\n");
  assert.match(lines[0]!, /^NAME\s+HOST\s+STATE\s+MEMORY\s+IP\s+DISK\s+CPU$/);
  assert.match(lines[1]!, /^web1\s+host2\s+running\s+128 MiB\s+10\.0\.0\.5\/24\s+-\s+12%$/);
  assert.equal(clusterVmTable([]), "no VMs in the cluster");
});

void test("cluster up summary table", () => {
  const c: ClusterFile = {
    state: "up",
    managerUrl: "http://127.0.0.1:40000",
    token: "x",
    dir: "/tmp/c",
    manager: { pid: 10 },
    hosts: [{ name: "host1", url: "http://127.0.0.1:40001", pid: 11 }],
    createdAt: "2025-03-01T11:00:00.000Z",
  };
  const text = upTable({ cluster: c, hosts: [], logs: { manager: "/tmp/c/logs/manager.log", host1: "/tmp/c/logs/host1.log" } });
  assert.match(text, /^cluster up in \/tmp\/c/);
  assert.match(text, /ROLE\s+NAME\s+URL\s+PID\s+LOG/);
  assert.match(text, /manager\s+manager\s+http:\/\/127\.0\.0\.1:40000\s+10\s+\/tmp\/c\/logs\/manager\.log/);
  assert.match(text, /host\s+host1\s+http:\/\/127\.0\.0\.1:40001\s+11\s+\/tmp\/c\/logs\/host1\.log/);
  assert.match(text, /stop the cluster with: hop cluster down$/);
});

// ---------------------------------------------------------------------------------------------
// Processes: never signal a pid that is not ours.

void test("ports: from --base-port in a fixed layout, else free and distinct", async () => {
  assert.deepEqual(await planPorts(2, 9000), { manager: 9000, hosts: [{ api: 9001, migration: 9002 }, { api: 9003, migration: 9004 }] });
  await assert.rejects(planPorts(2, 65533), (err: unknown) => err instanceof HopError && err.code === "USAGE");
  const free = await planPorts(3);
  const all = free.hosts.flatMap((h) => [h.api, h.migration]);
  assert.equal(free.manager, 0);
  assert.equal(new Set(all).size, 6);
  assert.ok(all.every((p) => p > 0));
});

/** A node process running a script named hop.js inside `dir` (it just sleeps). */
async function fakeHop(dir: string): Promise<number> {
  await mkdir(join(dir, "bin"), { recursive: true });
  const script = join(dir, "bin", "hop.js");
  await writeFile(script, "setInterval(() => {}, 1000);\n");
  const child = spawn(process.execPath, [script, "host", "serve", "--datastore", join(dir, "datastore")], { stdio: "ignore" });
  const pid = child.pid;
  assert.ok(pid !== undefined);
  await new Promise((r) => setTimeout(r, 200));
  return pid;
}

void test("pid ownership: only a node process running hop.js for this cluster directory", async () => {
  const one = await pidOwnership(1);
  assert.equal(one.ok, false);
  const self = await pidOwnership(process.pid);
  assert.equal(self.ok, false);
  assert.match(self.ok ? "" : self.reason, /does not run hop\.js/);
  // pid 1 is alive but not ours: it is never signalled
  assert.deepEqual((await stopPid(1, undefined, 100)).result, "not-ours");

  const dir = await tempDir("hop-own-");
  const pid = await fakeHop(dir);
  try {
    assert.deepEqual(await pidOwnership(pid, dir), { ok: true });
    assert.deepEqual(await pidOwnership(pid), { ok: true });
    const other = await pidOwnership(pid, join(dir, "elsewhere"));
    assert.equal(other.ok, false);
    assert.match(other.ok ? "" : other.reason, /another directory/);
    assert.equal((await stopPid(pid, join(dir, "elsewhere"), 100)).result, "not-ours");
    assert.equal(await pidAlive(pid), true);
    assert.equal((await stopPid(pid, dir, 5_000)).result, "stopped");
    assert.equal(await pidAlive(pid), false);
    assert.equal((await stopPid(pid, dir)).result, "gone");
  } finally {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // gone
    }
  }
});

function runHop(args: string[], env: NodeJS.ProcessEnv = {}, timeoutMs = 30_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const childEnv: NodeJS.ProcessEnv = { ...process.env, CI: "true", ...env };
    delete childEnv["NODE_TEST_CONTEXT"];
    delete childEnv["HOP_HOST"];
    delete childEnv["HOP_TOKEN"];
    const child = spawn(process.execPath, [join(packageRoot, "bin", "hop.js"), ...args], { env: childEnv, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c: Buffer) => (stdout += c.toString()));
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

void test("cluster down without a cluster stops nothing; cluster up refuses a cluster that is up", async () => {
  const dir = await tempDir("hop-cl-");
  const none = await runHop(["cluster", "down", "--dir", dir, "--json"], { HOP_CONFIG_DIR: cfg });
  assert.equal(none.code, 0, none.stderr);
  assert.deepEqual(JSON.parse(none.stdout), { dir, found: false, stopped: [], contextCleared: false });

  // A cluster.json whose manager pid is alive and ours: `up` must refuse before starting anything.
  const pid = await fakeHop(dir);
  try {
    const c: ClusterFile = { state: "up", managerUrl: "http://127.0.0.1:1", token: "0123456789abcdef", dir, manager: { pid }, hosts: [], createdAt: new Date().toISOString() };
    await writeFile(join(dir, CLUSTER_FILE), JSON.stringify(c));
    const refused = await runHop(["cluster", "up", "--hosts", "1", "--dir", dir], { HOP_CONFIG_DIR: cfg });
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /already up .*\(CLUSTER_ALREADY_UP\)/);
    assert.equal(await pidAlive(pid), true);

    // A cluster.json pointing at pid 1 (alive, not ours): down does not signal it.
    const foreign: ClusterFile = { ...c, manager: { pid: 1 } };
    await writeFile(join(dir, CLUSTER_FILE), JSON.stringify(foreign));
    const down = await runHop(["cluster", "down", "--dir", dir, "--json"], { HOP_CONFIG_DIR: cfg });
    assert.equal(down.code, 0, down.stderr);
    const r = JSON.parse(down.stdout) as { stopped: { name: string; result: string }[] };
    assert.deepEqual(
      r.stopped.map((e) => [e.name, e.result]),
      [["manager", "not-ours"]],
    );
  } finally {
    process.kill(pid, "SIGKILL");
  }
});

void test("commands that need a manager say so when the target does not answer", async () => {
  const r = await runHop(["host", "list", "--host", "http://127.0.0.1:1", "--token", "x", "--json"], { HOP_CONFIG_DIR: cfg });
  assert.equal(r.code, 1);
  assert.match(r.stderr, /cannot reach the manager at http:\/\/127\.0\.0\.1:1 \(ECONNREFUSED\) \(MANAGER_UNREACHABLE\)/);
  assert.equal((JSON.parse(r.stdout) as { error: { code: string } }).error.code, "MANAGER_UNREACHABLE");
  const t = await runHop(["task", "list", "--host", "host1", "--token", "x"], { HOP_CONFIG_DIR: cfg });
  assert.equal(t.code, 1);
  assert.match(t.stderr, /use --on-host host1/);
});

// ---------------------------------------------------------------------------------------------
// End to end: a real manager and two host agents, started and stopped by the CLI.

void test("end to end: cluster up --hosts 2, host list, vm create/list, task list, cluster down", { timeout: 240_000 }, async () => {
  const dir = await tempDir("hop-e2e-");
  const env = { HOP_CONFIG_DIR: cfg };
  const up = await runHop(["cluster", "up", "--hosts", "2", "--dir", dir, "--json", "--timeout", "90"], env, 150_000);
  let cluster: ClusterFile | undefined;
  try {
    assert.equal(up.code, 0, `${up.stdout}\n${up.stderr}`);
    cluster = JSON.parse(up.stdout) as ClusterFile;
    assert.equal(cluster.state, "up");
    assert.deepEqual(
      cluster.hosts.map((h) => h.name),
      ["host1", "host2"],
    );
    assert.equal((await stat(contextFile())).mode & 0o777, 0o600);
    assert.equal((await readContext())?.url, cluster.managerUrl);
    for (const pid of [cluster.manager.pid, ...cluster.hosts.map((h) => h.pid)]) assert.deepEqual(await pidOwnership(pid, dir), { ok: true });

    // No --host/--token from here on: the context points at the manager.
    const hosts = await runHop(["host", "list", "--json"], env);
    assert.equal(hosts.code, 0, hosts.stderr);
    const list = (JSON.parse(hosts.stdout) as { hosts: HostInfo[] }).hosts;
    assert.deepEqual(list.map((h) => [h.name, h.connection, h.maintenance]).sort(), [
      ["host1", "connected", "none"],
      ["host2", "connected", "none"],
    ]);
    const human = await runHop(["host", "list"], env);
    assert.match(human.stdout, /^NAME\s+STATE\s+VMS\s+MEM\s+CPU\s+LAST HEARTBEAT\nhost[12]\s+connected\s+0\s+0\//);

    const status = await runHop(["cluster", "status", "--json"], env);
    assert.equal(status.code, 0, status.stderr);
    assert.equal((JSON.parse(status.stdout) as { health: { role: string } }).health.role, "manager");

    // Define (not start) a VM on host2, then one the manager places.
    const created = await runHop(["vm", "create", "e2e1", "--memory", "96", "--on", "host2", "--json"], env);
    assert.equal(created.code, 0, created.stderr);
    assert.equal((JSON.parse(created.stdout) as VmRow).host, "host2");
    const placed = await runHop(["vm", "create", "e2e2", "--memory", "96"], env);
    assert.equal(placed.code, 0, placed.stderr);
    assert.match(placed.stdout, /^created e2e2 on host[12] \(96 MiB/);
    const vms = await runHop(["vm", "list"], env);
    assert.equal(vms.code, 0, vms.stderr);
    assert.match(vms.stdout, /^NAME\s+HOST\s+STATE/);
    assert.match(vms.stdout, /\ne2e1\s+host2\s+defined/);

    const tasks = await runHop(["task", "list", "--json"], env);
    assert.equal(tasks.code, 0, tasks.stderr);
    const rows = (JSON.parse(tasks.stdout) as { tasks: TaskRow[] }).tasks;
    assert.ok(rows.some((t) => t.kind === "vm.create" && t.vm === "e2e1" && t.state === "succeeded"), JSON.stringify(rows));
    const createTask = rows.find((t) => t.vm === "e2e1");
    const shown = await runHop(["task", "show", createTask?.id ?? "?"], env);
    assert.equal(shown.code, 0, shown.stderr);
    assert.match(shown.stdout, /kind:\s+vm\.create/);

    for (const name of ["e2e1", "e2e2"]) {
      const d = await runHop(["vm", "destroy", name], env);
      assert.equal(d.code, 0, d.stderr);
    }

    // A second `up` in the same directory is refused.
    const again = await runHop(["cluster", "up", "--hosts", "1", "--dir", dir], env);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /CLUSTER_ALREADY_UP/);
  } finally {
    const down = await runHop(["cluster", "down", "--dir", dir, "--json"], env, 90_000);
    const pids = cluster !== undefined ? [cluster.manager.pid, ...cluster.hosts.map((h) => h.pid)] : [];
    assert.equal(down.code, 0, down.stderr);
    const r = JSON.parse(down.stdout) as { found: boolean; stopped: { name: string; result: string }[]; contextCleared: boolean };
    if (cluster !== undefined) {
      assert.equal(r.found, true);
      assert.ok(
        r.stopped.every((e) => e.result === "stopped" || e.result === "killed"),
        JSON.stringify(r.stopped),
      );
      assert.equal(r.contextCleared, true);
    }
    for (const pid of pids) assert.equal(await pidAlive(pid), false, `pid ${pid} still runs`);
    await assert.rejects(stat(join(dir, CLUSTER_FILE)), /ENOENT/);
    assert.equal(await readContext(), undefined);
  }
});
