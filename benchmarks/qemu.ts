/**
 * QEMU side of the migration benchmark, so Hopvisor's figures can be printed next to QEMU's on
 * the same machine with the same guest (our kernel and initramfs, booted by qemu-system-i386
 * under TCG). The method is the one in ../shared/notes/anchors.md: the guest prints a heartbeat
 * line every 10 ms on ttyS0; source and destination serial ports both connect to one host
 * listener that timestamps every line; QMP drives the migration and its STOP/RESUME events
 * give the pause. Each case boots one guest and migrates it back and forth `runs` times (the
 * destination of one run is the source of the next).
 *   node dist/benchmarks/qemu.js [--runs N] [--memory MIB]
 * Needs qemu-system-i386 (bash scripts/install-qemu.sh).
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { rmSync } from "node:fs";
import { mkdtemp, realpath, rm } from "node:fs/promises";
import { connect, createServer, type AddressInfo, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { ensureImage, kernelCmdline, type GuestImage } from "../src/image/index.js";
import { report, summarize, type Metric } from "./report.js";
import { setTimeout as sleep } from "node:timers/promises";

export interface QemuRun {
  /** Live: migrate command to completion. Quick: stop command to `cont` done (the whole move). */
  totalMs: number;
  /** Source STOP event to destination RESUME event (QEMU's own timestamps); NaN if the run did not converge. */
  pauseMs: number;
  /** Longest silence between heartbeat lines at the host, 0.5 s before the migration to 1 s after it. */
  gapMs: number;
  /** False if the migration did not complete within timeoutMs (it was then cancelled). */
  converged: boolean;
}

export interface QemuCaseResult {
  name: "live-idle" | "live-dirty-32" | "live-dirty-64" | "quick-idle";
  runs: QemuRun[];
  settings: string;
}

type CaseName = QemuCaseResult["name"];

const QEMU = "qemu-system-i386";
const CASES: Record<CaseName, { mode: "live" | "quick"; dirtyMiB: number }> = {
  "live-idle": { mode: "live", dirtyMiB: 0 },
  "live-dirty-32": { mode: "live", dirtyMiB: 32 },
  "live-dirty-64": { mode: "live", dirtyMiB: 64 },
  "quick-idle": { mode: "quick", dirtyMiB: 0 },
};
const ALL_CASES = Object.keys(CASES) as CaseName[];

const HEARTBEAT_MS = 10;
/** migrate-set-parameters for every case: 10 GiB/s (bytes/s), i.e. no throttling on loopback. */
const MAX_BANDWIDTH = 10 * 2 ** 30;
/** Live cases only (QEMU's default is 300 ms). */
const DOWNTIME_LIMIT_MS = 50;
const GAP_BEFORE_MS = 500;
const GAP_AFTER_MS = 1000;
const BOOT_TIMEOUT_MS = 120_000;
const STEP_TIMEOUT_MS = 30_000;

export function qemuAvailable(): boolean {
  const r = spawnSync(QEMU, ["--version"], { stdio: "ignore" });
  return r.error === undefined && r.status === 0;
}

export async function runQemuMigrationCases(opts: {
  runs: number;
  memoryMiB: number;
  cases?: CaseName[];
  timeoutMs?: number;
  log?: (s: string) => void;
}): Promise<QemuCaseResult[]> {
  if (!qemuAvailable()) throw new Error(`${QEMU} is not installed (run: bash scripts/install-qemu.sh)`);
  const log = opts.log ?? ((): void => undefined);
  const image = await ensureImage();
  const version = qemuVersion();
  const results: QemuCaseResult[] = [];
  for (const name of opts.cases ?? ALL_CASES) {
    results.push(await runCase(name, image, { runs: opts.runs, memoryMiB: opts.memoryMiB, timeoutMs: opts.timeoutMs ?? 60_000, version, log }));
  }
  return results;
}

/** "QEMU emulator version 7.2.22 (Debian ...)" -> "QEMU 7.2.22". */
function qemuVersion(): string {
  const out = spawnSync(QEMU, ["--version"], { encoding: "utf8" }).stdout ?? "";
  return `QEMU ${/version (\S+)/.exec(out)?.[1] ?? "?"}`;
}

function settingsOf(name: CaseName, memoryMiB: number, version: string): string {
  const spec = CASES[name];
  const guest = `${version} ${QEMU} -accel tcg, 1 vCPU, ${memoryMiB} MiB, hb -i ${HEARTBEAT_MS}${spec.dirtyMiB > 0 ? `, dirty -w ${spec.dirtyMiB}` : ""}`;
  if (spec.mode === "live") {
    return `${guest}; live pre-copy over tcp:127.0.0.1, max-bandwidth 10 GiB/s, downtime-limit ${DOWNTIME_LIMIT_MS} ms; total = migrate to completed; pause = source STOP to destination RESUME`;
  }
  return `${guest}; quick: stop, migrate to "exec:cat > FILE" (max-bandwidth 10 GiB/s), new process -incoming "exec:cat FILE", cont; total = stop to cont done; pause = source STOP to destination RESUME`;
}

async function runCase(name: CaseName, image: GuestImage, opts: { runs: number; memoryMiB: number; timeoutMs: number; version: string; log: (s: string) => void }): Promise<QemuCaseResult> {
  const spec = CASES[name];
  const { log } = opts;
  installExitHook();
  const dir = await mkdtemp(join(tmpdir(), "hop-bench-qemu-"));
  tempDirs.add(dir);
  const hub = await SerialHub.listen();
  const vms = new Set<QemuVm>();
  let serial = 0;
  const startVm = async (incoming?: string): Promise<QemuVm> => {
    const id = ++serial;
    const args = [
      "-accel", "tcg", "-m", String(opts.memoryMiB), "-smp", "1",
      "-kernel", image.bzimage, "-initrd", image.initrd, "-append", kernelCmdline({ hostname: "qemu" }),
      "-display", "none", "-vga", "none", "-no-reboot", "-nic", "none",
      "-serial", `tcp:127.0.0.1:${hub.port}`,
      "-qmp", `unix:${join(dir, `qmp${id}.sock`)},server=on,wait=off`,
      ...(incoming !== undefined ? ["-incoming", incoming] : []),
    ];
    const vm = new QemuVm(`${name}#${id}`, args);
    vms.add(vm);
    await vm.connect(join(dir, `qmp${id}.sock`));
    return vm;
  };
  try {
    const t0 = performance.now();
    let guest = await startVm();
    await hub.waitText(/HOPVISOR-READY/, 0, BOOT_TIMEOUT_MS, "the guest's ready line");
    const bootMs = performance.now() - t0;
    // The shell starts just after the ready line; input sent before it opens the tty is lost.
    await hub.waitText(/\/# /, 0, STEP_TIMEOUT_MS, "the shell prompt");
    if (spec.dirtyMiB > 0) {
      const at = hub.offset();
      hub.type(`dirty -w ${spec.dirtyMiB} &\n`);
      await hub.waitText(/DIRTY start/, at, STEP_TIMEOUT_MS, "dirty to start");
    }
    const beatsBefore = hub.beats.length;
    hub.type(`hb -i ${HEARTBEAT_MS}\n`);
    await hub.waitBeats(beatsBefore + 50, STEP_TIMEOUT_MS);
    const b0 = performance.now();
    await sleep(2000);
    log(`${name}: booted in ${(bootMs / 1000).toFixed(1)} s; heartbeat gap without migration ${hub.gap(b0, performance.now()).toFixed(0)} ms`);

    const runs: QemuRun[] = [];
    for (let i = 0; i < opts.runs; i++) {
      const step = spec.mode === "live" ? liveMigration : quickMigration;
      const { run, guest: next, detail } = await step(guest, { hub, startVm, dir, run: i, timeoutMs: opts.timeoutMs });
      guest = next;
      runs.push(run);
      log(`${name} run ${i + 1}/${opts.runs}: ${run.converged ? "" : "DID NOT CONVERGE, "}total ${run.totalMs.toFixed(0)} ms, pause ${Number.isNaN(run.pauseMs) ? "-" : `${run.pauseMs.toFixed(0)} ms`}, gap ${run.gapMs.toFixed(0)} ms${detail}`);
    }
    if (hub.lost > 0) log(`${name}: ${hub.lost} heartbeat line(s) never reached the host`);
    return { name, runs, settings: settingsOf(name, opts.memoryMiB, opts.version) };
  } finally {
    await Promise.all([...vms].map((vm) => vm.kill()));
    hub.close();
    await rm(dir, { recursive: true, force: true });
    tempDirs.delete(dir);
  }
}

interface StepContext {
  hub: SerialHub;
  startVm: (incoming?: string) => Promise<QemuVm>;
  dir: string;
  run: number;
  timeoutMs: number;
}

interface StepResult {
  run: QemuRun;
  /** The VM the guest now runs in (the destination, or the source if the migration was cancelled). */
  guest: QemuVm;
  detail: string;
}

async function prepareSource(src: QemuVm, live: boolean): Promise<void> {
  await src.qmp.execute("migrate-set-capabilities", { capabilities: [{ capability: "events", state: true }] });
  await src.qmp.execute("migrate-set-parameters", { "max-bandwidth": MAX_BANDWIDTH, ...(live ? { "downtime-limit": DOWNTIME_LIMIT_MS } : {}) });
}

/** One live pre-copy migration from src to a new destination process. */
async function liveMigration(src: QemuVm, ctx: StepContext): Promise<StepResult> {
  const port = await freePort();
  const dst = await ctx.startVm(`tcp:127.0.0.1:${port}`);
  await prepareSource(src, true);
  const srcMark = src.qmp.mark();
  const dstMark = dst.qmp.mark();
  const t0 = performance.now();
  await src.qmp.execute("migrate", { uri: `tcp:127.0.0.1:${port}` });
  const end = await finishMigration(src, srcMark, t0, ctx.timeoutMs);
  if (end.status !== "completed") {
    // Cancelled: the guest kept running in the source; the destination gives up on its own.
    await dst.kill();
    await sleep(GAP_AFTER_MS);
    const run = { totalMs: end.at - t0, pauseMs: NaN, gapMs: ctx.hub.gap(t0 - GAP_BEFORE_MS, end.at + GAP_AFTER_MS), converged: false };
    return { run, guest: src, detail: await transferDetail(src) };
  }
  const stop = await src.qmp.waitEvent("STOP", srcMark, STEP_TIMEOUT_MS);
  const resume = await dst.qmp.waitEvent("RESUME", dstMark, STEP_TIMEOUT_MS);
  await sleep(Math.max(0, resume.hostAt + GAP_AFTER_MS - performance.now()));
  const run = {
    totalMs: end.at - t0,
    pauseMs: resume.qemuAt - stop.qemuAt,
    gapMs: ctx.hub.gap(t0 - GAP_BEFORE_MS, resume.hostAt + GAP_AFTER_MS),
    converged: end.at - t0 <= ctx.timeoutMs,
  };
  const detail = await transferDetail(src);
  await src.quit();
  return { run, guest: dst, detail };
}

/** One quick migration: stop, save the state to a file, load it in a new process, cont. */
async function quickMigration(src: QemuVm, ctx: StepContext): Promise<StepResult> {
  const file = join(ctx.dir, `state${ctx.run}.bin`);
  await prepareSource(src, false);
  const srcMark = src.qmp.mark();
  const t0 = performance.now();
  await src.qmp.execute("stop");
  await src.qmp.execute("migrate", { uri: `exec:cat > ${file}` });
  const end = await finishMigration(src, srcMark, t0, ctx.timeoutMs);
  if (end.status !== "completed") {
    await src.qmp.execute("cont");
    await sleep(GAP_AFTER_MS);
    const run = { totalMs: end.at - t0, pauseMs: NaN, gapMs: ctx.hub.gap(t0 - GAP_BEFORE_MS, end.at + GAP_AFTER_MS), converged: false };
    return { run, guest: src, detail: await transferDetail(src) };
  }
  const saveMs = end.at - t0;
  const detail = await transferDetail(src);
  const dst = await ctx.startVm(`exec:cat ${file}`);
  const dstMark = dst.qmp.mark();
  // The destination has no migration events yet (they are a capability set over QMP, too
  // late for -incoming); it stays paused after loading because the source was stopped.
  await until(async () => ((await dst.qmp.execute<{ status: string }>("query-status")).status === "inmigrate" ? undefined : true), STEP_TIMEOUT_MS, 5, "the destination to load the state");
  const loadedAt = performance.now();
  await dst.qmp.execute("cont");
  const doneAt = performance.now();
  await rm(file, { force: true });
  const stop = await src.qmp.waitEvent("STOP", srcMark, STEP_TIMEOUT_MS);
  const resume = await dst.qmp.waitEvent("RESUME", dstMark, STEP_TIMEOUT_MS);
  await sleep(Math.max(0, resume.hostAt + GAP_AFTER_MS - performance.now()));
  const run = {
    totalMs: doneAt - t0,
    pauseMs: resume.qemuAt - stop.qemuAt,
    gapMs: ctx.hub.gap(t0 - GAP_BEFORE_MS, resume.hostAt + GAP_AFTER_MS),
    converged: true,
  };
  await src.quit();
  return { run, guest: dst, detail: `${detail}; save ${saveMs.toFixed(0)} ms, start+load ${(loadedAt - end.at).toFixed(0)} ms, cont ${(doneAt - loadedAt).toFixed(0)} ms` };
}

/**
 * Waits for the source's migration to end; past the timeout it is cancelled. Returns the
 * final status and when (host clock) it was seen.
 */
async function finishMigration(src: QemuVm, mark: number, t0: number, timeoutMs: number): Promise<{ status: string; at: number }> {
  const ended = (e: QmpEvent): boolean => ["completed", "failed", "cancelled"].includes(String(e.data?.["status"]));
  try {
    const e = await src.qmp.waitEvent("MIGRATION", mark, Math.max(0, t0 + timeoutMs - performance.now()), ended);
    if (e.data?.["status"] === "failed") throw new Error(`migration failed: ${await migrationError(src)}`);
    return { status: String(e.data?.["status"]), at: e.hostAt };
  } catch (err) {
    if (!(err instanceof TimeoutError)) throw err;
  }
  await src.qmp.execute("migrate_cancel");
  // It can still complete while the cancel is on its way; the caller follows the guest.
  const e = await src.qmp.waitEvent("MIGRATION", mark, STEP_TIMEOUT_MS, ended);
  return { status: String(e.data?.["status"]), at: performance.now() };
}

async function migrationError(src: QemuVm): Promise<string> {
  const info = await src.qmp.execute<{ "error-desc"?: string }>("query-migrate").catch(() => ({ "error-desc": undefined }));
  return info["error-desc"] ?? "no error description";
}

/** What QEMU itself reports for the last migration (for the log). */
async function transferDetail(src: QemuVm): Promise<string> {
  const info = await src.qmp.execute<{ status?: string; "total-time"?: number; downtime?: number; ram?: { transferred?: number; "dirty-sync-count"?: number } }>("query-migrate");
  if (info.status !== "completed") return ` (QEMU: ${info.status ?? "no migration"})`;
  const mib = (info.ram?.transferred ?? 0) / 2 ** 20;
  return ` (QEMU: total-time ${info["total-time"] ?? "?"} ms, downtime ${info.downtime ?? "?"} ms, ${mib.toFixed(0)} MiB sent, ${info.ram?.["dirty-sync-count"] ?? "?"} dirty syncs)`;
}

// ---------------------------------------------------------------------------------------------
// Serial listener: every QEMU's ttyS0 connects here; heartbeat lines are timestamped on arrival.

class SerialHub {
  /** Host arrival times (performance.now()) of heartbeat lines, in order. */
  readonly beats: number[] = [];
  /** Heartbeat sequence numbers skipped (lines lost on the way, e.g. across a switchover). */
  lost = 0;
  private lastSeq = 0;
  private readonly conns = new Map<Socket, string>();
  private text = "";
  private textBase = 0;
  private readonly changed = new Notifier();

  private constructor(private readonly server: Server) {
    server.on("connection", (sock) => this.attach(sock));
  }

  static async listen(): Promise<SerialHub> {
    const server = createServer();
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    return new SerialHub(server);
  }

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  /** Position in the console text received so far (for waitText). */
  offset(): number {
    return this.textBase + this.text.length;
  }

  /** Types into the console. Only used before the first migration, when one QEMU is connected. */
  type(s: string): void {
    const socks = [...this.conns.keys()];
    if (socks.length !== 1) throw new Error(`expected one serial connection, have ${socks.length}`);
    socks[0]?.write(s);
  }

  async waitText(re: RegExp, from: number, timeoutMs: number, what: string): Promise<void> {
    await this.changed.until(() => (re.test(this.text.slice(Math.max(0, from - this.textBase))) ? true : undefined), timeoutMs, what);
  }

  async waitBeats(count: number, timeoutMs: number): Promise<void> {
    await this.changed.until(() => (this.beats.length >= count ? true : undefined), timeoutMs, `${count} heartbeat lines`);
  }

  /** Longest interval between consecutive heartbeat lines that arrived within [from, to]. */
  gap(from: number, to: number): number {
    const ts = this.beats.filter((t) => t >= from && t <= to);
    if (ts.length < 2) return to - from;
    let max = 0;
    for (let i = 1; i < ts.length; i++) max = Math.max(max, (ts[i] ?? 0) - (ts[i - 1] ?? 0));
    return max;
  }

  close(): void {
    for (const sock of this.conns.keys()) sock.destroy();
    this.server.close();
  }

  private attach(sock: Socket): void {
    sock.setNoDelay(true);
    sock.setEncoding("latin1");
    this.conns.set(sock, "");
    sock.on("data", (chunk: string) => this.onData(sock, chunk, performance.now()));
    sock.on("error", () => undefined); // "close" follows
    sock.on("close", () => this.conns.delete(sock));
  }

  private onData(sock: Socket, chunk: string, at: number): void {
    // Keep a bounded tail of the console text for waitText.
    this.text += chunk;
    if (this.text.length > 65536) {
      const cut = this.text.length - 32768;
      this.text = this.text.slice(cut);
      this.textBase += cut;
    }
    const lines = ((this.conns.get(sock) ?? "") + chunk).split("\n");
    this.conns.set(sock, lines.pop() ?? "");
    for (const line of lines) {
      const m = /(?:^|\s)HB (\d+)\r?$/.exec(line);
      if (m === null) continue;
      const seq = Number(m[1]);
      if (this.lastSeq > 0 && seq > this.lastSeq + 1) this.lost += seq - this.lastSeq - 1;
      this.lastSeq = seq;
      this.beats.push(at);
    }
    this.changed.notify();
  }
}

// ---------------------------------------------------------------------------------------------
// QEMU processes and QMP.

/** QEMU processes and temp dirs still in use: cleaned up when Node exits however it exits. */
const children = new Set<ChildProcess>();
const tempDirs = new Set<string>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once("exit", () => {
    for (const c of children) c.kill("SIGKILL");
    for (const d of tempDirs) rmSync(d, { recursive: true, force: true });
  });
}

class QemuVm {
  readonly proc: ChildProcess;
  private qmpClient: Qmp | undefined;
  private readonly exited: Promise<void>;
  private alive = true;
  private stderr = "";

  constructor(
    readonly name: string,
    args: string[],
  ) {
    this.proc = spawn(QEMU, args, { stdio: ["ignore", "ignore", "pipe"] });
    children.add(this.proc);
    this.proc.stderr?.setEncoding("utf8");
    this.proc.stderr?.on("data", (s: string) => (this.stderr = (this.stderr + s).slice(-4000)));
    this.exited = new Promise((resolve) => {
      const done = (): void => {
        this.alive = false;
        children.delete(this.proc);
        resolve();
      };
      this.proc.once("exit", done);
      this.proc.once("error", (err) => {
        this.stderr += err.message;
        done();
      });
    });
  }

  get qmp(): Qmp {
    if (this.qmpClient === undefined) throw new Error(`${this.name}: QMP is not connected`);
    return this.qmpClient;
  }

  /** Connects to the QMP socket once QEMU has created it. */
  async connect(path: string): Promise<void> {
    const deadline = performance.now() + STEP_TIMEOUT_MS;
    for (;;) {
      if (!this.alive) throw new Error(`${this.name}: QEMU exited during start-up: ${this.stderr.trim() || "no message"}`);
      try {
        this.qmpClient = await Qmp.connect(path);
        return;
      } catch (err) {
        if (performance.now() > deadline) throw new Error(`${this.name}: cannot connect to QMP: ${(err as Error).message}`, { cause: err });
        await sleep(10);
      }
    }
  }

  /** Asks QEMU to quit; kills it if it has not gone within 5 s. */
  async quit(): Promise<void> {
    if (!this.alive) return;
    void this.qmpClient?.execute("quit").catch(() => undefined); // the connection may close before the reply
    if (!(await Promise.race([this.exited.then(() => true), sleep(5000).then(() => false)]))) await this.kill();
    this.qmpClient?.close();
  }

  async kill(): Promise<void> {
    this.qmpClient?.close();
    if (this.alive) this.proc.kill("SIGKILL");
    await this.exited;
  }
}

interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  /** QEMU's timestamp of the event (epoch ms, microsecond resolution). */
  qemuAt: number;
  /** When it arrived here (performance.now()). */
  hostAt: number;
}

interface QmpMessage {
  QMP?: unknown;
  id?: number;
  return?: unknown;
  error?: { class: string; desc: string };
  event?: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

class Qmp {
  readonly events: QmpEvent[] = [];
  private buf = "";
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void; command: string }>();
  private readonly changed = new Notifier();
  private greeted = false;
  private closed: Error | undefined;

  private constructor(private readonly sock: Socket) {
    sock.setEncoding("utf8");
    sock.on("data", (s: string) => this.onData(s));
    sock.on("error", () => undefined); // "close" follows
    sock.on("close", () => {
      this.closed = new Error("QMP connection closed");
      for (const p of this.pending.values()) p.reject(new Error(`${p.command}: QMP connection closed`));
      this.pending.clear();
      this.changed.notify();
    });
  }

  static async connect(path: string): Promise<Qmp> {
    const sock = connect(path);
    await once(sock, "connect");
    const qmp = new Qmp(sock);
    try {
      await qmp.changed.until(() => (qmp.greeted ? true : undefined), STEP_TIMEOUT_MS, "the QMP greeting", () => qmp.closed);
      await qmp.execute("qmp_capabilities");
    } catch (err) {
      qmp.close();
      throw err;
    }
    return qmp;
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.closed !== undefined) return Promise.reject(new Error(`${command}: QMP connection closed`));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: (v) => resolve(v as T), reject, command });
      this.sock.write(JSON.stringify({ execute: command, ...(args !== undefined ? { arguments: args } : {}), id }) + "\n");
    });
  }

  /** Index to pass to waitEvent so that only later events count. */
  mark(): number {
    return this.events.length;
  }

  async waitEvent(name: string, since: number, timeoutMs: number, match: (e: QmpEvent) => boolean = () => true): Promise<QmpEvent> {
    return this.changed.until(() => this.events.slice(since).find((e) => e.event === name && match(e)), timeoutMs, `QMP event ${name}`, () => this.closed);
  }

  close(): void {
    this.sock.destroy();
  }

  private onData(s: string): void {
    const hostAt = performance.now();
    this.buf += s;
    let nl: number;
    while ((nl = this.buf.indexOf("\n")) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (line === "") continue;
      const msg = JSON.parse(line) as QmpMessage;
      if (msg.QMP !== undefined) this.greeted = true;
      else if (msg.event !== undefined) {
        const ts = msg.timestamp ?? { seconds: 0, microseconds: 0 };
        this.events.push({ event: msg.event, ...(msg.data !== undefined ? { data: msg.data } : {}), qemuAt: ts.seconds * 1000 + ts.microseconds / 1000, hostAt });
      } else if (msg.id !== undefined) {
        const p = this.pending.get(msg.id);
        this.pending.delete(msg.id);
        if (msg.error !== undefined) p?.reject(new Error(`${p.command}: ${msg.error.desc}`));
        else p?.resolve(msg.return);
      }
    }
    this.changed.notify();
  }
}

// ---------------------------------------------------------------------------------------------
// Small helpers.

class TimeoutError extends Error {}

/** Wakes waiters whenever something they may be waiting for has changed. */
class Notifier {
  private readonly waiters = new Set<() => void>();

  notify(): void {
    for (const w of [...this.waiters]) w();
  }

  /** Resolves with check()'s first defined value; rejects on timeout or when failed() returns an error. */
  until<T>(check: () => T | undefined, timeoutMs: number, what: string, failed: () => Error | undefined = () => undefined): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const finish = (f: () => void): void => {
        clearTimeout(timer);
        this.waiters.delete(test);
        f();
      };
      const test = (): void => {
        const v = check();
        if (v !== undefined) return finish(() => resolve(v));
        const err = failed();
        if (err !== undefined) finish(() => reject(new Error(`waiting for ${what}: ${err.message}`)));
      };
      const timer = setTimeout(() => finish(() => reject(new TimeoutError(`timed out after ${timeoutMs} ms waiting for ${what}`))), timeoutMs);
      this.waiters.add(test);
      test();
    });
  }
}

/** Polls an async check every intervalMs until it returns a value. */
async function until<T>(check: () => Promise<T | undefined>, timeoutMs: number, intervalMs: number, what: string): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v !== undefined) return v;
    if (performance.now() > deadline) throw new TimeoutError(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(intervalMs);
  }
}


async function freePort(): Promise<number> {
  const s = createServer();
  s.listen(0, "127.0.0.1");
  await once(s, "listening");
  const { port } = s.address() as AddressInfo;
  s.close();
  await once(s, "close");
  return port;
}

// ---------------------------------------------------------------------------------------------
// Run directly: node dist/benchmarks/qemu.js [--runs N] [--memory MIB]

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { runs: { type: "string", default: "5" }, memory: { type: "string", default: "128" } } });
  const runs = Number(values.runs);
  const memoryMiB = Number(values.memory);
  // Ctrl-C: exit through process.exit so that the exit hook kills QEMU and removes temp dirs.
  process.once("SIGINT", () => process.exit(130));
  process.once("SIGTERM", () => process.exit(143));
  const results = await runQemuMigrationCases({ runs, memoryMiB, log: (s) => console.log(s) });
  const metrics: Metric[] = [];
  for (const c of results) {
    const ok = c.runs.filter((r) => r.converged);
    metrics.push({ ...summarize(`${c.name}_converged`, "runs", [ok.length]), runs: c.runs.length });
    metrics.push(summarize(`${c.name}_total_ms`, "ms", ok.map((r) => r.totalMs)));
    metrics.push(summarize(`${c.name}_pause_ms`, "ms", ok.map((r) => r.pauseMs)));
    metrics.push(summarize(`${c.name}_heartbeat_gap_ms`, "ms", ok.map((r) => r.gapMs)));
  }
  await report("qemu", metrics, { qemu: qemuAvailable() ? qemuVersion() : "", memoryMiB, runs, cases: results });
}

if (process.argv[1] !== undefined && (await realpath(process.argv[1]).catch(() => "")) === fileURLToPath(import.meta.url)) await main();
