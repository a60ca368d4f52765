/**
 * `hop cluster up|down|status|balance`: a whole cluster on this machine (one manager and N host
 * agents sharing one datastore, each a detached background process logging to <dir>/logs), its
 * state, and DRS load balancing.
 *
 * `up` records what it started in <dir>/cluster.json and makes the manager the CLI's current
 * context (<config dir>/context.json), so that `hop vm ...`, `hop host list`, `hop task list`
 * talk to it without --host/--token. `down` signals exactly the pids in cluster.json, after
 * checking each still is a node process running hop.js for this cluster (never a reused pid).
 */
import { mkdir, readFile, rm } from "node:fs/promises";
import { basename, join, resolve, sep } from "node:path";
import type { Command } from "commander";
import { HopError, errorMessage } from "../common/errors.js";
import { withFileLock } from "../common/lock.js";
import type { HostInfo } from "../cluster/api-types.js";
import { ManagerClient } from "../cluster/client.js";
import { freePort, spawnHopDetached } from "../host/agents.js";
import { createTokenFile, readTokenFile } from "./serve.js";
import { clearContext, configDir, readContext, intOption, output, withJsonOption, withManager, withManagerOptions, writeContext, writeFileAtomic, type HostOptions } from "./common.js";
import { keyValues, table } from "./format.js";
import { hostTable } from "./hostadmin.js";
import { MIN_TOKEN_LENGTH, parseFraction } from "./manager.js";
import { exitCodeFor, taskStarted } from "./task.js";

/** What `hop cluster up` started, in <dir>/cluster.json. */
export interface ClusterFile {
  /** "starting" while `up` runs (pids may be partial), "up" once every host has joined. */
  state: "starting" | "up";
  managerUrl: string;
  token: string;
  dir: string;
  manager: { pid: number };
  hosts: { name: string; url: string; pid: number }[];
  createdAt: string;
}

export const CLUSTER_FILE = "cluster.json";
/** How long `down` waits after SIGTERM before SIGKILL. */
export const STOP_GRACE_MS = 15_000;

/** The directory of the current context's cluster, when `hop cluster up` made it. */
async function contextDir(): Promise<string | undefined> {
  return (await readContext().catch(() => undefined))?.dir;
}

export function defaultClusterDir(): string {
  return join(configDir(), "cluster");
}

export async function readClusterFile(dir: string): Promise<ClusterFile | undefined> {
  const file = join(dir, CLUSTER_FILE);
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new HopError("CLUSTER_FILE_UNREADABLE", `cannot read ${file}: ${(err as Error).message}`, { cause: err });
  }
  try {
    const v = JSON.parse(text) as Partial<ClusterFile>;
    if (typeof v.manager?.pid !== "number" || !Array.isArray(v.hosts)) throw new Error("missing manager.pid or hosts");
    return v as ClusterFile;
  } catch (err) {
    throw new HopError("CLUSTER_FILE_INVALID", `${file} is not a cluster file (${errorMessage(err)}); remove it if no cluster runs there`, { cause: err });
  }
}

async function writeClusterFile(c: ClusterFile): Promise<void> {
  await writeFileAtomic(join(c.dir, CLUSTER_FILE), `${JSON.stringify(c, null, 2)}\n`, 0o600);
}

// --- processes ---

/** Whether `pid` is a live process (a zombie counts as gone). */
export async function pidAlive(pid: number): Promise<boolean> {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ESRCH") return false;
    // EPERM: it exists (someone else's)
  }
  const stat = await readFile(`/proc/${pid}/stat`, "utf8").catch(() => undefined);
  if (stat === undefined) return process.platform !== "linux";
  // "pid (comm) S ...": the state follows the last ')'.
  const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
  return state !== "Z" && state !== "X";
}

export type Ownership = { ok: true } | { ok: false; reason: string };

function isNodeBinary(arg0: string): boolean {
  return arg0 === process.execPath || /^(node|nodejs)(\d+(\.\d+)*)?$/.test(basename(arg0));
}

/**
 * Whether `pid` is ours to signal: a node process running hop.js, and, given `dir`, one with an
 * argument inside that cluster directory (its --db, --datastore...). Reads /proc/<pid>/cmdline.
 */
export async function pidOwnership(pid: number, dir?: string): Promise<Ownership> {
  if (!Number.isInteger(pid) || pid <= 1) return { ok: false, reason: `pid ${pid} is not a process hop started` };
  let raw: string;
  try {
    raw = await readFile(`/proc/${pid}/cmdline`, "utf8");
  } catch (err) {
    return { ok: false, reason: `cannot read /proc/${pid}/cmdline (${(err as NodeJS.ErrnoException).code ?? errorMessage(err)})` };
  }
  const args = raw.split("\0").filter((a) => a !== "");
  const shown = args.join(" ").slice(0, 200);
  if (args.length === 0) return { ok: false, reason: `pid ${pid} has no command line (exited or a kernel thread)` };
  if (!isNodeBinary(args[0]!)) return { ok: false, reason: `pid ${pid} is not node: ${shown}` };
  if (!args.slice(1).some((a) => basename(a) === "hop.js")) return { ok: false, reason: `pid ${pid} does not run hop.js: ${shown}` };
  if (dir !== undefined) {
    const root = resolve(dir);
    if (!args.some((a) => a === root || a.startsWith(root + sep))) return { ok: false, reason: `pid ${pid} is a hop process of another directory: ${shown}` };
  }
  return { ok: true };
}

export type StopResult = "stopped" | "killed" | "gone" | "not-ours" | "still-running";

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** SIGTERM, wait up to `graceMs`, then SIGKILL (its process group: VM processes too) — only if the pid is ours. */
export async function stopPid(pid: number, dir: string | undefined, graceMs: number = STOP_GRACE_MS): Promise<{ result: StopResult; reason?: string }> {
  if (!(await pidAlive(pid))) return { result: "gone" };
  const own = await pidOwnership(pid, dir);
  if (!own.ok) return { result: "not-ours", reason: own.reason };
  try {
    process.kill(pid, "SIGTERM");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ESRCH") return { result: "gone" };
    throw err;
  }
  const deadline = Date.now() + graceMs;
  while (Date.now() < deadline) {
    await sleep(100);
    if (!(await pidAlive(pid))) return { result: "stopped" };
  }
  if (!(await pidOwnership(pid, dir)).ok) return { result: "stopped" };
  for (const target of [-pid, pid]) {
    try {
      process.kill(target, "SIGKILL");
    } catch {
      // not a group leader, or gone already
    }
  }
  for (let i = 0; i < 50; i++) {
    if (!(await pidAlive(pid))) return { result: "killed" };
    await sleep(100);
  }
  return { result: "still-running", reason: `pid ${pid} survived SIGKILL` };
}

export interface PortPlan {
  /** 0: any (the manager reports its URL through --url-file). */
  manager: number;
  hosts: { api: number; migration: number }[];
}

/** Ports for the manager and N hosts: from `basePort` upwards (manager P, host i P+2i-1 and P+2i), else free ones. */
export async function planPorts(hosts: number, basePort?: number): Promise<PortPlan> {
  if (basePort !== undefined) {
    if (basePort + 2 * hosts > 65535) throw new HopError("USAGE", `--base-port ${basePort} leaves no room for ${2 * hosts + 1} ports`, { status: 400 });
    return { manager: basePort, hosts: Array.from({ length: hosts }, (_, i) => ({ api: basePort + 2 * i + 1, migration: basePort + 2 * i + 2 })) };
  }
  const used = new Set<number>();
  const next = async (): Promise<number> => {
    for (;;) {
      const p = await freePort();
      if (!used.has(p)) {
        used.add(p);
        return p;
      }
    }
  };
  const plan: PortPlan = { manager: 0, hosts: [] };
  for (let i = 0; i < hosts; i++) plan.hosts.push({ api: await next(), migration: await next() });
  return plan;
}

/** Environment of the background processes: ours, minus the test runner's marker (it silences their logs). */
function childEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env["NODE_TEST_CONTEXT"];
  return env;
}

interface Started {
  name: string;
  pid: number;
  log: string;
  /** Set when the process exited (while `up` still watches). */
  exit?: string;
}

/** Starts `hop <args>` detached, stdout and stderr appended to `log`. */
function spawnHop(name: string, args: string[], log: string): Started {
  const child = spawnHopDetached(args, log, childEnv());
  if (child.pid === undefined) throw new HopError("SPAWN_FAILED", `cannot start the ${name} process (see ${log})`);
  const started: Started = { name, pid: child.pid, log };
  child.once("exit", (code, signal) => (started.exit = signal !== null ? `killed by ${signal}` : `exited with code ${code ?? "?"}`));
  child.once("error", (err) => (started.exit = `failed: ${err.message}`));
  child.unref();
  return started;
}

async function logTail(file: string, lines = 8): Promise<string> {
  const text = await readFile(file, "utf8").catch(() => "");
  return text.trimEnd().split("\n").slice(-lines).join("\n");
}

interface UpOptions {
  hosts: number;
  dir?: string;
  basePort?: number;
  timeout: number;
  json?: boolean;
}

export interface UpResult {
  cluster: ClusterFile;
  hosts: HostInfo[];
  logs: Record<string, string>;
}

/** Fails when the cluster in `dir` still has live processes of ours. */
async function refuseIfUp(dir: string): Promise<void> {
  const existing = await readClusterFile(dir);
  if (existing === undefined) return;
  const pids = [existing.manager.pid, ...existing.hosts.map((h) => h.pid)];
  for (const pid of pids) {
    if ((await pidAlive(pid)) && (await pidOwnership(pid, dir)).ok) {
      throw new HopError("CLUSTER_ALREADY_UP", `a cluster is already up in ${dir} (pid ${pid} runs; manager ${existing.managerUrl || "starting"}); stop it with \`hop cluster down --dir ${dir}\``, { status: 409 });
    }
  }
}

/** The cluster's token file, made once (a token too short for the manager is replaced). */
async function clusterToken(dir: string): Promise<string> {
  const file = join(dir, "cluster-token");
  const existing = await readTokenFile(file);
  return existing !== undefined && existing.length >= MIN_TOKEN_LENGTH ? existing : createTokenFile(file);
}

async function up(opts: UpOptions): Promise<UpResult> {
  const dir = resolve(opts.dir ?? defaultClusterDir());
  const logsDir = join(dir, "logs");
  const runDir = join(dir, "run");
  await mkdir(logsDir, { recursive: true });
  await mkdir(runDir, { recursive: true });
  await mkdir(join(dir, "datastore"), { recursive: true });

  return withFileLock(join(runDir, "up.lock"), () => upLocked(dir, logsDir, runDir, opts), { timeoutMs: 500 }).catch((err: unknown) => {
    if (err instanceof HopError && err.code === "LOCK_TIMEOUT") {
      throw new HopError("CLUSTER_BUSY", `another \`hop cluster up\` is running in ${dir} (lock ${join(runDir, "up.lock")})`, { status: 409, cause: err });
    }
    throw err;
  });
}

async function upLocked(dir: string, logsDir: string, runDir: string, opts: UpOptions): Promise<UpResult> {
  await refuseIfUp(dir);
  const token = await clusterToken(dir);
  const tokenFile = join(dir, "cluster-token");
  const urlFile = join(runDir, "manager.url");
  await rm(urlFile, { force: true });
  const ports = await planPorts(opts.hosts, opts.basePort);
  const deadline = Date.now() + opts.timeout * 1000;

  const started: Started[] = [];
  const cluster: ClusterFile = { state: "starting", managerUrl: "", token, dir, manager: { pid: 0 }, hosts: [], createdAt: new Date().toISOString() };

  let interrupted: string | undefined;
  const onSignal = (signal: NodeJS.Signals): void => {
    interrupted = signal;
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);

  /** Throws when interrupted, when a process died, or past the deadline (`where`: the logs to read then). */
  const check = (what: string, where: () => string = () => `see the logs in ${logsDir}`): void => {
    if (interrupted !== undefined) throw new HopError("INTERRUPTED", `interrupted (${interrupted}) while ${what}`);
    const dead = started.find((s) => s.exit !== undefined);
    if (dead !== undefined) throw new HopError("CLUSTER_UP_FAILED", `the ${dead.name} process ${dead.exit ?? "exited"} while ${what}; see ${dead.log}`);
    if (Date.now() > deadline) throw new HopError("CLUSTER_UP_TIMEOUT", `timed out after ${opts.timeout} s ${what}; ${where()}`);
  };

  try {
    const mgr = spawnHop(
      "manager",
      ["manager", "serve", "--listen", `127.0.0.1:${ports.manager}`, "--db", join(dir, "manager.db"), "--token-file", tokenFile, "--url-file", urlFile],
      join(logsDir, "manager.log"),
    );
    started.push(mgr);
    cluster.manager.pid = mgr.pid;
    await writeClusterFile(cluster);

    let managerUrl = "";
    while (managerUrl === "") {
      check("waiting for the manager to listen");
      managerUrl = (await readFile(urlFile, "utf8").catch(() => "")).trim();
      if (managerUrl === "") await sleep(100);
    }
    cluster.managerUrl = managerUrl;

    for (const [i, p] of ports.hosts.entries()) {
      const name = `host${i + 1}`;
      const s = spawnHop(
        name,
        [
          "host",
          "serve",
          "--name",
          name,
          "--datastore",
          join(dir, "datastore"),
          "--token-file",
          tokenFile,
          "--manager",
          managerUrl,
          "--listen",
          `127.0.0.1:${p.api}`,
          "--migration-listen",
          `127.0.0.1:${p.migration}`,
        ],
        join(logsDir, `${name}.log`),
      );
      started.push(s);
      cluster.hosts.push({ name, url: `http://127.0.0.1:${p.api}`, pid: s.pid });
    }
    await writeClusterFile(cluster);

    const client = new ManagerClient(managerUrl, token);
    const names = cluster.hosts.map((h) => h.name);
    let hosts: HostInfo[] = [];
    let lastError = "";
    const missing = (): string[] => names.filter((n) => !hosts.some((h) => h.name === n && h.connection === "connected"));
    for (;;) {
      check(`waiting for the hosts to join the manager${lastError !== "" ? ` (last error: ${lastError})` : ""}`, () => {
        const m = missing();
        return `not connected: ${m.join(", ")}; see ${m.map((n) => join(logsDir, `${n}.log`)).join(", ")} and ${join(logsDir, "manager.log")}`;
      });
      try {
        hosts = await client.hosts();
        lastError = "";
      } catch (err) {
        lastError = errorMessage(err);
      }
      if (names.every((n) => hosts.some((h) => h.name === n && h.connection === "connected"))) break;
      await sleep(200);
    }
    for (const h of cluster.hosts) h.url = hosts.find((x) => x.name === h.name)?.url ?? h.url;
    cluster.state = "up";
    await writeClusterFile(cluster);
    await writeContext({ url: managerUrl, token, dir });
    return { cluster, hosts: hosts.filter((h) => names.includes(h.name)), logs: Object.fromEntries(started.map((s) => [s.name, s.log])) };
  } catch (err) {
    // Stop what we started (hosts first), newest first; then forget it.
    const tails = await Promise.all(started.filter((s) => s.exit !== undefined).map(async (s) => `--- ${s.log} (last lines):\n${await logTail(s.log)}`));
    for (const s of [...started].reverse()) await stopPid(s.pid, dir, 5_000).catch(() => undefined);
    await rm(join(dir, CLUSTER_FILE), { force: true });
    await rm(urlFile, { force: true });
    if (err instanceof HopError) {
      throw new HopError(err.code, `${err.message} (stopped the processes it had started)${tails.length > 0 ? `\n${tails.join("\n")}\n---` : ""}`, { status: err.status, cause: err.cause });
    }
    throw err;
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}

export function upTable(r: UpResult): string {
  const c = r.cluster;
  const rows = [
    ["manager", "manager", c.managerUrl, String(c.manager.pid), r.logs["manager"] ?? "-"],
    ...c.hosts.map((h) => ["host", h.name, h.url, String(h.pid), r.logs[h.name] ?? "-"]),
  ];
  return [
    `cluster up in ${c.dir} (token in ${join(c.dir, "cluster-token")})`,
    table(["ROLE", "NAME", "URL", "PID", "LOG"], rows),
    `hop commands now talk to the manager at ${c.managerUrl}; stop the cluster with: hop cluster down`,
  ].join("\n");
}

export interface DownEntry {
  name: string;
  pid: number;
  result: StopResult;
  reason?: string;
}

async function down(dirOpt: string | undefined): Promise<{ dir: string; found: boolean; stopped: DownEntry[]; contextCleared: boolean }> {
  const dir = resolve(dirOpt ?? (await contextDir()) ?? defaultClusterDir());
  const c = await readClusterFile(dir);
  if (c === undefined) return { dir, found: false, stopped: [], contextCleared: false };
  // Hosts first (they stop their VMs), all at once so that the manager sees no HA restarts; then the manager.
  const hosts = await Promise.all(c.hosts.map(async (h): Promise<DownEntry> => ({ name: h.name, pid: h.pid, ...(await stopPid(h.pid, dir)) })));
  const mgr: DownEntry = { name: "manager", pid: c.manager.pid, ...(await stopPid(c.manager.pid, dir)) };
  const stopped = [...hosts, mgr];
  const left = stopped.filter((e) => e.result === "still-running");
  if (left.length > 0) {
    throw new HopError("CLUSTER_DOWN_FAILED", `could not stop ${left.map((e) => `${e.name} (pid ${e.pid})`).join(", ")}; ${join(dir, CLUSTER_FILE)} is kept`);
  }
  await rm(join(dir, CLUSTER_FILE), { force: true });
  await rm(join(dir, "run", "manager.url"), { force: true });
  const contextCleared = c.managerUrl !== "" && (await clearContext(c.managerUrl));
  return { dir, found: true, stopped, contextCleared };
}

function downText(r: Awaited<ReturnType<typeof down>>): string {
  if (!r.found) return `no cluster in ${r.dir} (no ${CLUSTER_FILE}); nothing to stop`;
  const lines = [table(["NAME", "PID", "RESULT"], r.stopped.map((e) => [e.name, String(e.pid), e.result === "not-ours" ? `not signalled: ${e.reason ?? "not ours"}` : e.result]))];
  lines.push(`cluster in ${r.dir} is down${r.contextCleared ? "; the cluster context was removed" : ""}`);
  return lines.join("\n");
}

export function register(program: Command): void {
  const cluster = program.command("cluster").description("run a whole cluster on this machine and look after it (status, load balancing)");

  withJsonOption(
    cluster
      .command("up")
      .description("start a manager and N host agents (sharing one datastore) in the background, and make the manager the current context")
      .option("--hosts <n>", "number of host agents", intOption(1, 64), 2)
      .option("--dir <dir>", "where the cluster keeps its database, datastore, logs and cluster.json (default: <config dir>/cluster)")
      .option("--base-port <port>", "use ports from here up (manager PORT, host i PORT+2i-1 and PORT+2i for migrations) instead of free ones", intOption(1, 65535))
      .option("--timeout <s>", "how long to wait for every host to join", intOption(1, 3600), 60),
  ).action(async (opts: UpOptions) => {
    const r = await up(opts);
    output(opts, { ...r.cluster, token: undefined, tokenFile: join(r.cluster.dir, "cluster-token"), logs: r.logs, hostsInfo: r.hosts }, () => upTable(r));
  });

  withJsonOption(
    cluster
      .command("down")
      .description("stop the processes `hop cluster up` started (SIGTERM, SIGKILL after 15 s) and remove the cluster context")
      .option("--dir <dir>", "the cluster's directory (default: <config dir>/cluster)"),
  ).action(async (opts: { dir?: string; json?: boolean }) => {
    const r = await down(opts.dir);
    output(opts, r, () => downText(r));
  });

  withManagerOptions(cluster.command("status").description("the manager's health and the hosts of the cluster")).action(async (opts: HostOptions) => {
    const { client, health, hosts } = await withManager(opts, async (client) => {
      const [health, hosts] = await Promise.all([client.health(), client.hosts()]);
      return { client, health, hosts };
    });
    output(opts, { url: client.baseUrl, health, hosts }, () =>
      [
        keyValues([
          ["manager", `${client.baseUrl} (id ${health.managerId}, version ${health.version})`],
          ["hosts", `${hosts.filter((h) => h.connection === "connected").length} connected of ${health.hosts}`],
          ["vms", String(health.vms)],
        ]),
        "",
        hostTable(hosts),
      ].join("\n"),
    );
  });

  withManagerOptions(
    cluster
      .command("balance")
      .description("even out the load of the hosts: show what DRS recommends and migrate those VMs (--dry-run: only show)")
      .option("--dry-run", "show the recommendations, move nothing")
      .option("--threshold <spread>", "load-score spread (0..1) to tolerate (default: the manager's --drs-threshold)", parseFraction),
  ).action(async (opts: HostOptions & { dryRun?: boolean; threshold?: number }) => {
    const drsOpts = opts.threshold !== undefined ? { threshold: opts.threshold } : {};
    const { client, rec } = await withManager(opts, async (client) => ({ client, rec: await client.drsRecommendations(drsOpts) }));
    const summary = `imbalance ${rec.imbalance.toFixed(2)} (threshold ${rec.threshold.toFixed(2)})`;
    const moves =
      rec.moves.length === 0
        ? `${summary}: nothing to move`
        : `${summary}\n${table(
            ["VM", "FROM", "TO", "IMBALANCE", "REASON"],
            rec.moves.map((m) => [m.vm, m.from, m.to, `${m.imbalanceBefore.toFixed(2)} -> ${m.imbalanceAfter.toFixed(2)}`, m.reason]),
          )}`;
    if (opts.dryRun === true || rec.moves.length === 0) {
      output(opts, { recommendations: rec }, () => moves);
      return;
    }
    const task = await withManager(opts, () => client.drsApply(drsOpts));
    output(opts, { recommendations: rec, task }, () => `${moves}\n${taskStarted(task)}`);
    exitCodeFor(task);
  });
}
