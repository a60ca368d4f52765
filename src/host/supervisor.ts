import { randomBytes, randomUUID } from "node:crypto";
import { EventEmitter } from "node:events";
import { join } from "node:path";
import { HopError } from "../common/errors.js";
import { createLogger, type Logger } from "../common/log.js";
import { parseInput } from "../common/validation.js";
import { defaultCacheDir } from "../common/paths.js";
import { DEFAULT_VGA_KIB } from "../engine/index.js";
import { ensureImage, kernelCmdline, type GuestImage } from "../image/index.js";
import { createDataDisk, Datastore } from "../storage/index.js";
import { randomMac, vmCreateSchema, type VmConfig, type VmCreateRequest } from "../vm/config.js";
import { nextState, type VmAction, type VmState } from "../vm/lifecycle.js";
import type { VmStats } from "../vm/ipc.js";
import { ConsoleBuffer } from "./console.js";
import { defaultProfile, imagePaths, TemplateStore } from "./templates.js";
import type { ConsoleStream, ExecResult, HostEvent, Supervisor, VmInfo } from "./types.js";
import { forkVmProcess, VmProcessHandle } from "./vmproc.js";
import type { ChildProcess } from "node:child_process";

export class VmNotFoundError extends HopError {
  constructor(name: string) {
    super("VM_NOT_FOUND", `no VM named '${name}' on this host`, { status: 404 });
  }
}

interface VmRecord {
  config: VmConfig;
  state: VmState;
  proc: VmProcessHandle | undefined;
  console: ConsoleBuffer;
  lastError?: string;
  startMs?: number;
  startPhases?: Record<string, number>;
  startedFrom?: "template" | "cold";
  /** Set while the host itself is stopping the process, so its exit is not a crash. */
  expectingExit: boolean;
}

export interface LocalSupervisorOptions {
  hostName: string;
  datastore: string;
  cacheDir?: string;
  log?: Logger;
}

/**
 * The host agent's VM supervisor: owns the VMs defined on its datastore, runs each in its own
 * process, and drives the lifecycle state machine. A VM process that dies is reported as
 * crashed; the supervisor carries on.
 */
export class LocalSupervisor implements Supervisor {
  readonly hostName: string;
  readonly datastore: Datastore;
  readonly cacheDir: string;
  private readonly log: Logger;
  private readonly vms = new Map<string, VmRecord>();
  private readonly events = new EventEmitter();
  private readonly templates: TemplateStore;
  private image: Promise<GuestImage> | undefined;
  /** One VM process forked ahead of need, so a start does not wait for Node to boot. */
  private spare: ChildProcess | undefined;
  private closing = false;

  constructor(opts: LocalSupervisorOptions) {
    this.hostName = opts.hostName;
    this.datastore = new Datastore(opts.datastore);
    this.cacheDir = opts.cacheDir ?? defaultCacheDir();
    this.log = opts.log ?? createLogger("host", { host: opts.hostName });
    this.templates = new TemplateStore(this.cacheDir, this.log);
    this.events.setMaxListeners(0);
  }

  /** A pre-forked VM process for the next start (and fork the one after it). */
  private takeSpare(): ChildProcess | undefined {
    const spare = this.spare;
    this.spare = undefined;
    if (!this.closing) {
      const next = forkVmProcess();
      next.unref();
      next.channel?.unref();
      next.on("error", () => undefined);
      this.spare = next;
    }
    if (spare !== undefined) {
      spare.ref();
      spare.channel?.ref();
    }
    return spare;
  }

  /** Loads the VMs defined on the datastore (they start powered off). */
  async init(): Promise<void> {
    await this.datastore.init();
    for (const config of await this.datastore.listVmConfigs<VmConfig>()) {
      this.vms.set(config.name, { config, state: "stopped", proc: undefined, console: new ConsoleBuffer(), expectingExit: false });
    }
    this.log.info({ vms: this.vms.size, datastore: this.datastore.root }, "host agent supervisor ready");
  }

  /** The guest image (built on first use, then cached). */
  getImage(): Promise<GuestImage> {
    let image = this.image;
    if (image === undefined) {
      image = ensureImage({ cacheDir: this.cacheDir, log: this.log });
      image.catch(() => (this.image = undefined));
      this.image = image;
    }
    return image;
  }

  /** Boots and caches the template for a hardware profile ahead of time (tests, demo). */
  async prepareTemplate(memoryMiB: number, diskMiB?: number): Promise<string> {
    return this.templates.ensure(await this.getImage(), defaultProfile(memoryMiB, diskMiB));
  }

  list(): VmInfo[] {
    return [...this.vms.values()].map((r) => this.info(r));
  }

  get(name: string): VmInfo {
    return this.info(this.record(name));
  }

  async create(req: VmCreateRequest): Promise<VmInfo> {
    const r = parseInput(vmCreateSchema, req, "body");
    if (this.vms.has(r.name)) throw new HopError("VM_EXISTS", `a VM named '${r.name}' already exists on this host`, { status: 409 });
    const config: VmConfig = {
      name: r.name,
      uuid: randomUUID(),
      memoryMiB: r.memoryMiB,
      mac: r.mac ?? randomMac(randomBytes),
      boot: r.boot,
      createdAt: new Date().toISOString(),
      ...(r.ip !== undefined ? { ip: r.ip } : {}),
      ...(r.gw !== undefined ? { gw: r.gw } : {}),
    };
    // Reserve the name before any await so two creates cannot race.
    const record: VmRecord = { config, state: "defined", proc: undefined, console: new ConsoleBuffer(), expectingExit: false };
    this.vms.set(r.name, record);
    try {
      if (r.diskMiB !== undefined) {
        const rel = join("vms", r.name, "disk.img");
        await createDataDisk(this.datastore.resolvePath(rel), r.diskMiB);
        config.disk = { path: rel, sizeMiB: r.diskMiB };
      }
      await this.datastore.saveVmConfig(r.name, config);
    } catch (err) {
      this.vms.delete(r.name);
      throw err;
    }
    this.emit({ type: "vm.created", vm: r.name, at: new Date().toISOString() });
    this.log.info({ vm: r.name, memoryMiB: config.memoryMiB, disk: config.disk?.sizeMiB }, "VM created");
    return this.info(record);
  }

  async start(name: string): Promise<VmInfo> {
    const rec = this.record(name);
    this.transition(rec, "start");
    const t0 = performance.now();
    try {
      const image = await this.getImage();
      const { config } = rec;
      const disk = config.disk !== undefined ? this.datastore.resolvePath(config.disk.path) : undefined;
      const base = {
        t: "init" as const,
        name: config.name,
        memoryMiB: config.memoryMiB,
        vgaMemoryKiB: DEFAULT_VGA_KIB,
        nic: "virtio" as const,
        image: imagePaths(image),
        ...(disk !== undefined ? { disk } : {}),
      };
      let proc: VmProcessHandle;
      if (config.boot === "template") {
        const statePath = await this.templates.ensure(image, defaultProfile(config.memoryMiB, config.disk?.sizeMiB));
        proc = new VmProcessHandle({
          ...base,
          start: {
            mode: "restore",
            statePath,
            identity: {
              hostname: config.name,
              mac: config.mac,
              mountDisk: disk !== undefined,
              ...(config.ip !== undefined ? { ip: config.ip } : {}),
              ...(config.gw !== undefined ? { gw: config.gw } : {}),
            },
          },
        }, this.takeSpare());
      } else {
        const cmdline = kernelCmdline({
          hostname: config.name,
          mac: config.mac,
          mountDisk: disk !== undefined,
          ...(config.ip !== undefined ? { ip: config.ip } : {}),
          ...(config.gw !== undefined ? { gw: config.gw } : {}),
        });
        proc = new VmProcessHandle({ ...base, start: { mode: "boot", cmdline } });
      }
      this.attach(rec, proc);
      const ready = await new Promise<{ startMs: number; phases: Record<string, number> }>((resolve, reject) => {
        proc.once("ready", (m: { startMs: number; phases: Record<string, number> }) => resolve(m));
        proc.once("exit", () =>
          reject(new HopError(proc.fatalError?.code ?? "VM_START_FAILED", `VM '${name}' failed to start: ${proc.fatalError?.message ?? proc.stopReason ?? "its process exited"}`, { status: 500 })),
        );
      });
      rec.startMs = Math.round(performance.now() - t0);
      rec.startPhases = ready.phases;
      rec.startedFrom = config.boot;
      delete rec.lastError;
      this.transition(rec, "started");
      this.log.info({ vm: name, startMs: rec.startMs, phases: ready.phases, from: config.boot }, "VM running");
      return this.info(rec);
    } catch (err) {
      rec.lastError = (err as Error).message;
      if (rec.proc !== undefined) {
        rec.expectingExit = true;
        rec.proc.kill();
        await rec.proc.waitExit(5_000);
      }
      if (rec.state === "starting") this.setState(rec, "stopped", rec.lastError);
      throw err;
    }
  }

  async pause(name: string): Promise<VmInfo> {
    const rec = this.record(name);
    nextState(name, rec.state, "pause");
    await this.requireProc(rec).request({ op: "pause" });
    this.transition(rec, "pause");
    return this.info(rec);
  }

  async resume(name: string): Promise<VmInfo> {
    const rec = this.record(name);
    nextState(name, rec.state, "resume");
    await this.requireProc(rec).request({ op: "resume" });
    this.transition(rec, "resume");
    return this.info(rec);
  }

  async shutdown(name: string, opts: { timeoutMs?: number } = {}): Promise<VmInfo> {
    const rec = this.record(name);
    const proc = this.requireProc(rec);
    const timeoutMs = opts.timeoutMs ?? 30_000;
    this.transition(rec, "shutdown");
    rec.expectingExit = true;
    try {
      await proc.request({ op: "shutdown", timeoutMs: Math.min(timeoutMs, 10_000) }, timeoutMs);
    } catch (err) {
      this.log.warn({ vm: name, err: (err as Error).message }, "graceful shutdown request failed; powering off");
    }
    if (!(await proc.waitExit(timeoutMs))) {
      this.log.warn({ vm: name, timeoutMs }, "guest did not power off in time; hard power-off");
      await this.hardStop(proc);
    }
    return this.info(rec);
  }

  async poweroff(name: string): Promise<VmInfo> {
    const rec = this.record(name);
    const proc = this.requireProc(rec);
    this.transition(rec, "poweroff");
    rec.expectingExit = true;
    await this.hardStop(proc);
    return this.info(rec);
  }

  async destroy(name: string, opts: { force?: boolean; deleteDisk?: boolean } = {}): Promise<void> {
    const rec = this.record(name);
    if (rec.proc !== undefined && !rec.proc.exited) {
      if (opts.force !== true) nextState(name, rec.state, "destroy");
      await this.poweroff(name);
    }
    nextState(name, rec.state, "destroy");
    await this.datastore.removeVm(name, { keepDisk: opts.deleteDisk !== true && rec.config.disk !== undefined });
    this.vms.delete(name);
    this.emit({ type: "vm.destroyed", vm: name, at: new Date().toISOString() });
  }

  async exec(name: string, command: string, opts: { timeoutMs?: number } = {}): Promise<ExecResult> {
    const rec = this.record(name);
    if (rec.state !== "running") {
      throw new HopError("VM_NOT_RUNNING", `cannot exec in VM '${name}' while it is ${rec.state}`, { status: 409 });
    }
    const timeoutMs = opts.timeoutMs ?? 60_000;
    return this.requireProc(rec).request<ExecResult>({ op: "exec", command, timeoutMs }, timeoutMs + 5_000);
  }

  async stats(name: string): Promise<VmStats> {
    return this.requireProc(this.record(name)).request<VmStats>({ op: "stats" });
  }

  consoleWrite(name: string, data: Buffer): void {
    const rec = this.record(name);
    if (rec.proc === undefined || rec.proc.exited) throw new HopError("VM_NOT_RUNNING", `VM '${name}' is not running`, { status: 409 });
    void rec.proc.request({ op: "consoleWrite", data }).catch((err: unknown) => this.log.debug({ vm: name, err }, "console write failed"));
  }

  console(name: string): ConsoleStream {
    return this.record(name).console;
  }

  onEvent(fn: (ev: HostEvent) => void): () => void {
    this.events.on("event", fn);
    return () => this.events.off("event", fn);
  }

  /** Process id of a VM's process (tests and benchmarks). */
  pidOf(name: string): number | undefined {
    return this.record(name).proc?.pid;
  }

  startPhases(name: string): Record<string, number> | undefined {
    return this.record(name).startPhases;
  }

  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    this.spare?.kill();
    this.spare = undefined;
    const running = [...this.vms.values()].filter((r) => r.proc !== undefined && !r.proc.exited);
    await Promise.all(
      running.map(async (r) => {
        try {
          if (r.state === "running") await this.shutdown(r.config.name, { timeoutMs: 10_000 });
          else await this.poweroff(r.config.name);
        } catch (err) {
          this.log.warn({ vm: r.config.name, err: (err as Error).message }, "stop during close failed; killing");
          r.proc?.kill();
        }
      }),
    );
  }

  // --- internals ---

  private record(name: string): VmRecord {
    const rec = this.vms.get(name);
    if (rec === undefined) throw new VmNotFoundError(name);
    return rec;
  }

  private requireProc(rec: VmRecord): VmProcessHandle {
    if (rec.proc === undefined || rec.proc.exited) {
      throw new HopError("VM_NOT_RUNNING", `VM '${rec.config.name}' is ${rec.state}: it has no running process`, { status: 409 });
    }
    return rec.proc;
  }

  private async hardStop(proc: VmProcessHandle): Promise<void> {
    await proc.request({ op: "poweroff" }, 3_000).catch(() => undefined);
    if (!(await proc.waitExit(5_000))) {
      proc.kill();
      await proc.waitExit(5_000);
    }
  }

  private attach(rec: VmRecord, proc: VmProcessHandle): void {
    rec.proc = proc;
    rec.expectingExit = false;
    proc.on("console", (chunk: Buffer) => rec.console.push(chunk));
    proc.on("fatal", (e: { message: string }) => (rec.lastError = e.message));
    proc.on("exit", (code: number | null, signal: NodeJS.Signals | null) => {
      if (rec.proc !== proc) return;
      rec.proc = undefined;
      const clean = proc.stopReason !== undefined && proc.fatalError === undefined && code === 0;
      if (rec.state === "starting") return; // start() reports the failure
      if (rec.expectingExit || clean) {
        this.setState(rec, "stopped", proc.stopReason ?? "stopped by the host");
        return;
      }
      const reason = proc.fatalError?.message ?? `VM process ended unexpectedly (${signal ?? `exit code ${String(code)}`})`;
      rec.lastError = reason;
      this.log.error({ vm: rec.config.name, code, signal, reason }, "VM crashed");
      this.setState(rec, "crashed", reason);
      this.emit({ type: "vm.crashed", vm: rec.config.name, at: new Date().toISOString(), reason });
    });
  }

  private transition(rec: VmRecord, action: VmAction): void {
    this.setState(rec, nextState(rec.config.name, rec.state, action));
  }

  private setState(rec: VmRecord, state: VmState, reason?: string): void {
    if (rec.state === state) return;
    rec.state = state;
    this.emit({ type: "vm.state", vm: rec.config.name, state, at: new Date().toISOString(), ...(reason !== undefined ? { reason } : {}) });
  }

  private emit(ev: HostEvent): void {
    this.events.emit("event", ev);
  }

  private info(rec: VmRecord): VmInfo {
    return {
      name: rec.config.name,
      uuid: rec.config.uuid,
      state: rec.state,
      config: rec.config,
      ...(rec.proc?.pid !== undefined ? { pid: rec.proc.pid } : {}),
      ...(rec.lastError !== undefined ? { lastError: rec.lastError } : {}),
      ...(rec.startMs !== undefined ? { startMs: rec.startMs } : {}),
      ...(rec.startedFrom !== undefined ? { startedFrom: rec.startedFrom } : {}),
    };
  }
}
