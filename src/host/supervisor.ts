import { randomBytes, randomUUID } from "node:crypto";
import { EventEmitter } from "node:events";
import { join } from "node:path";
import { HopError } from "../common/errors.js";
import { roundMs } from "../common/time.js";
import { createLogger, type Logger } from "../common/log.js";
import { parseInput } from "../common/validation.js";
import { defaultCacheDir } from "../common/paths.js";
import { DEFAULT_VGA_KIB } from "../engine/constants.js";
import { ensureImage, kernelCmdline, type GuestImage } from "../image/index.js";
import { readFile, rm } from "node:fs/promises";
import { withFileLock } from "../common/lock.js";
import { adoptRequestSchema, type AdoptRequest } from "../cluster/protocol.js";
import { createDataDisk, Datastore } from "../storage/index.js";
import { PAGE_SIZE, type MigrationReport } from "../migration/index.js";
import type { MigrateOutResult, WarmMessage, WarmupSpec } from "../vm/ipc.js";
import { adoptedConfig, incomingRequestSchema, migrateRequestSchema, MigrationListener, type IncomingOutcome, type IncomingRequest, type IncomingTicket, type MigratePeerResolver, type MigrateRequest } from "./migration.js";
import { ApiError } from "./client.js";
import { randomMac, vmCreateSchema, vmNameSchema, type VmConfig, type VmCreateRequest } from "../vm/config.js";
import { nextState, type VmAction, type VmState } from "../vm/lifecycle.js";
import type { RecycleResult, VmStats } from "../vm/ipc.js";
import { ConsoleBuffer } from "./console.js";
import { defaultProfile, imagePaths, TemplateStore } from "./templates.js";
import type { ConsoleStream, ExecResult, HostEvent, Supervisor, VmInfo } from "./types.js";
import { forkVmProcess, VmProcessHandle } from "./vmproc.js";
import { HostNetwork, type HostNetworkOptions, type NetworkDetail, type NetworkInfo, type NetworkService, type NetworksResponse } from "./network.js";
import type { ChildProcess } from "node:child_process";
import { z } from "zod";

/** After an incoming migration that took the spare VM process failed, how long until the next one is forked. */
const SPARE_FORK_DELAY_MS = 500;
/**
 * After a VM moved in on the spare VM process: how long until the next one is forked, if none
 * came meanwhile. A VM that moves out of this host leaves its process behind as the spare (see
 * recycleAsSpare), so a host that VMs move in and out of forks none: forking held this host
 * agent's event loop (and the consoles and switch ports it serves) for 8-16 ms on a 2-core VM,
 * half a second after every move in.
 */
const SPARE_REFILL_AFTER_ARRIVAL_MS = 10_000;
/** How long a VM process that was migrated away may take to drop its VM (recycle). */
const RECYCLE_TIMEOUT_MS = 5_000;

/**
 * How long after a VM moved in to fork the next spare VM process, if none has come by then.
 * Late (`lateMs`) when this host has sent a VM away since the move in before this one: VMs go
 * both ways, and one that leaves gives its process as the spare (see recycleAsSpare). Soon
 * (SPARE_FORK_DELAY_MS) when VMs only arrive, one after another, as in an evacuation: the next
 * move in would otherwise fork and warm its own process.
 */
export function spareRefillDelayMs(previousMoveInAt: number, lastMoveOutAt: number, lateMs: number): number {
  return previousMoveInAt > lastMoveOutAt ? SPARE_FORK_DELAY_MS : lateMs;
}

function ms(t0: number): number {
  return roundMs(performance.now() - t0);
}


function zeroDowntime(): MigrationReport["downtime"] {
  return { stopMs: 0, finalCopyMs: 0, stateSaveMs: 0, transferMs: 0, restoreMs: 0, resumeMs: 0 };
}

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
  startedFrom?: "template" | "cold" | "suspended";
  /** Set while the host itself is stopping the process, so its exit is not a crash. */
  expectingExit: boolean;
  /** Set once the VM has left this host: its old process' exit means nothing any more. */
  gone?: boolean;
}

/** What this host knows of a migration into it (kept after the end, to answer a source that lost the outcome). */
interface IncomingEntry {
  name: string;
  outcome: IncomingOutcome;
  proc?: VmProcessHandle;
}

export interface LocalSupervisorOptions {
  hostName: string;
  datastore: string;
  cacheDir?: string;
  log?: Logger;
  /** The cluster token: authenticates migrations between host agents (both ways). */
  token?: string;
  /** Where to accept migration connections (needs `token`); port 0 picks a free port. */
  migrationListen?: { host: string; port: number };
  /** Resolves `--to` (a host name or URL) to the target host agent. */
  peers?: MigratePeerResolver;
  /** Virtual networking: underlay, VTEP remotes, networks, host access (default: none; networks in the datastore are still loaded). */
  network?: Omit<HostNetworkOptions, "dir" | "log">;
  /** After a VM moved in on the spare VM process, fork the next one after this long if none came, unless VMs only arrive (default SPARE_REFILL_AFTER_ARRIVAL_MS; see spareRefillDelayMs). */
  spareRefillAfterArrivalMs?: number;
}

/**
 * The host agent's VM supervisor: owns the VMs defined on its datastore, runs each in its own
 * process, and drives the lifecycle state machine. A VM process that dies is reported as
 * crashed; the supervisor carries on.
 */
export class LocalSupervisor implements Supervisor, NetworkService {
  readonly hostName: string;
  /** The host's virtual switch, VXLAN endpoint and networks. */
  readonly net: HostNetwork;
  readonly datastore: Datastore;
  readonly cacheDir: string;
  private readonly log: Logger;
  private readonly vms = new Map<string, VmRecord>();
  private readonly events = new EventEmitter();
  private readonly templates: TemplateStore;
  private image: Promise<GuestImage> | undefined;
  /** One VM process forked ahead of need, so a start does not wait for Node to boot. */
  private spare: ChildProcess | undefined;
  private spareTimer: NodeJS.Timeout | undefined;
  /** The spare was sent its warm-up (see warmup.ts). */
  private spareWarmed = false;
  private closing = false;
  private readonly token: string | undefined;
  private readonly peers: MigratePeerResolver | undefined;
  private readonly migrationListen: { host: string; port: number } | undefined;
  private readonly spareRefillAfterArrivalMs: number;
  /** When a VM last arrived here, and last left (performance.now(); see spareRefillDelayMs). */
  private lastMoveInAt = -Infinity;
  private lastMoveOutAt = -Infinity;
  private migrationListener: MigrationListener | undefined;
  private migrationAddr: { host: string; port: number } | undefined;
  private readonly incoming = new Map<string, IncomingEntry>();
  private readonly outgoing = new Map<string, { name: string; proc: VmProcessHandle }>();
  /** Names being adopted right now (reserved before the datastore is read). */
  private readonly adopting = new Set<string>();
  /** VM processes fenceAll() has killed (or is killing). */
  private readonly fencedProcs = new WeakSet<VmProcessHandle>();
  /** Asked before every start and incoming migration; throws to refuse (the manager link: no lease, no start). */
  private startGuard: (() => void) | undefined;

  constructor(opts: LocalSupervisorOptions) {
    this.hostName = opts.hostName;
    this.datastore = new Datastore(opts.datastore);
    this.cacheDir = opts.cacheDir ?? defaultCacheDir();
    this.log = opts.log ?? createLogger("host", { host: opts.hostName });
    this.templates = new TemplateStore(this.cacheDir, this.log);
    this.events.setMaxListeners(0);
    this.token = opts.token;
    this.peers = opts.peers;
    this.migrationListen = opts.migrationListen;
    this.spareRefillAfterArrivalMs = opts.spareRefillAfterArrivalMs ?? SPARE_REFILL_AFTER_ARRIVAL_MS;
    this.net = new HostNetwork({ ...opts.network, dir: this.datastore.resolvePath("networks"), log: this.log });
  }

  /**
   * A pre-forked VM process for the next start. The one after it is forked at once, or, for
   * an incoming migration (`forkNext: false`), by scheduleSpare() once that migration is over:
   * its switchover should not compete for the CPU with Node starting up.
   */
  private takeSpare(opts: { forkNext?: boolean } = {}): ChildProcess | undefined {
    const spare = this.spare;
    this.spare = undefined;
    this.spareWarmed = false;
    if (opts.forkNext !== false) this.scheduleSpare(0, false);
    if (spare !== undefined) {
      spare.ref();
      spare.channel?.ref();
    }
    return spare;
  }

  /**
   * Forks the next spare VM process after `delayMs` (unless there is one). With `warm` (after a
   * move into this host, the next is likely to come the same way), its engine code is warmed
   * too, or the spare already there is.
   */
  private scheduleSpare(delayMs: number, warm: boolean): void {
    if (this.closing) return;
    const spare = this.spare;
    if (spare !== undefined) {
      if (warm && !this.spareWarmed) void this.warmSpare(spare);
      return;
    }
    if (this.spareTimer !== undefined) return;
    const fork = (): void => {
      this.spareTimer = undefined;
      if (this.closing || this.spare !== undefined) return;
      const next = forkVmProcess();
      next.unref();
      next.channel?.unref();
      next.on("error", () => undefined);
      this.spare = next;
      if (warm) void this.warmSpare(next);
    };
    if (delayMs === 0) fork();
    else {
      this.spareTimer = setTimeout(fork, delayMs);
      this.spareTimer.unref();
    }
  }

  /**
   * A move into this host ended (`arrived`: the VM runs here): a warm spare for the next, once no
   * other move in is under way (the last one schedules it).
   */
  private spareAfterIncoming(done: IncomingEntry, arrived: boolean): void {
    const previousMoveInAt = this.lastMoveInAt;
    if (arrived) this.lastMoveInAt = performance.now();
    if (!this.otherMovesIn(done)) this.scheduleSpare(arrived ? spareRefillDelayMs(previousMoveInAt, this.lastMoveOutAt, this.spareRefillAfterArrivalMs) : SPARE_FORK_DELAY_MS, true);
  }

  /** The spare VM process's pid (none: undefined). */
  get sparePid(): number | undefined {
    return this.spare?.pid;
  }

  /**
   * After a VM moved out: its VM process, which dropped the VM, becomes this host's spare when
   * there is none (see RecycleOp). True when the process was dealt with (kept or let go).
   */
  private async recycleAsSpare(proc: VmProcessHandle): Promise<boolean> {
    if (this.closing || this.spare !== undefined || proc.exited) return false;
    let result: RecycleResult;
    try {
      result = await proc.request<RecycleResult>({ op: "recycle" }, RECYCLE_TIMEOUT_MS);
    } catch {
      return false;
    }
    if (!result.recycled) return false;
    if (this.closing || this.spare !== undefined || proc.exited) {
      proc.kill();
      await proc.waitExit(RECYCLE_TIMEOUT_MS);
      return true;
    }
    const child = proc.detach();
    child.unref();
    child.channel?.unref();
    child.on("error", () => undefined);
    this.spare = child;
    this.spareWarmed = true;
    if (this.spareTimer !== undefined) {
      clearTimeout(this.spareTimer);
      this.spareTimer = undefined;
    }
    this.log.debug({ pid: child.pid, rssMiB: result.rssMiB, lifetimes: result.lifetimes }, "the VM process of a VM that moved out is the spare now");
    return true;
  }

  /** Whether a move into this host other than `entry` is under way. */
  private otherMovesIn(entry: IncomingEntry): boolean {
    for (const e of this.incoming.values()) if (e !== entry && e.outcome === "pending") return true;
    return false;
  }

  /**
   * The warm-up for the process taking an incoming VM (see VmInit.warmup), unless other moves
   * into this host are under way (an evacuation): then the CPU is better spent on them.
   */
  private async incomingWarmup(entry: IncomingEntry): Promise<WarmupSpec | undefined> {
    return this.otherMovesIn(entry) ? undefined : this.warmupSpec();
  }

  /** The template to warm VM processes with, once the image is built and a template is cached. */
  private async warmupSpec(): Promise<WarmupSpec | undefined> {
    const image = this.image;
    if (image === undefined) return undefined;
    try {
      return await this.templates.warmup(await image);
    } catch {
      return undefined;
    }
  }

  private async warmSpare(child: ChildProcess): Promise<void> {
    this.spareWarmed = true;
    const spec = await this.warmupSpec();
    if (spec === undefined || this.spare !== child || !child.connected) {
      if (this.spare === child) this.spareWarmed = false;
      return;
    }
    const msg: WarmMessage = { t: "warm", spec };
    child.send(msg, (err) => {
      if (err !== null) this.log.debug({ err }, "warming the spare VM process failed");
    });
  }

  /** Loads the VMs defined on the datastore (they start powered off). */
  async init(): Promise<void> {
    await this.datastore.init();
    await this.net.init();
    for (const config of await this.datastore.listVmConfigs<VmConfig>()) {
      // A shared datastore holds the VMs of several hosts: load only ours.
      if (config.host !== undefined && config.host !== this.hostName) continue;
      const suspended = await this.datastore.exists(this.suspendPath(config.name));
      this.vms.set(config.name, { config, state: suspended ? "suspended" : "stopped", proc: undefined, console: new ConsoleBuffer(), expectingExit: false });
    }
    if (this.migrationListen !== undefined) {
      if (this.token === undefined) throw new HopError("MIGRATION_NO_TOKEN", "a migration listener needs the cluster token", { status: 500 });
      this.migrationListener = new MigrationListener((id, socket, head) => this.routeMigrationSocket(id, socket, head), this.log);
      this.migrationAddr = await this.migrationListener.listen(this.migrationListen.host, this.migrationListen.port);
      this.log.info({ address: this.migrationAddr }, "accepting migrations");
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
    if (this.vms.has(r.name) || this.adopting.has(r.name)) throw new HopError("VM_EXISTS", `a VM named '${r.name}' already exists on this host`, { status: 409 });
    const config: VmConfig = {
      name: r.name,
      uuid: randomUUID(),
      memoryMiB: r.memoryMiB,
      mac: r.mac ?? randomMac(randomBytes),
      boot: r.boot,
      createdAt: new Date().toISOString(),
      host: this.hostName,
      generation: 1,
      ...(r.ip !== undefined && r.network === undefined ? { ip: r.ip } : {}),
      ...(r.gw !== undefined ? { gw: r.gw } : {}),
      ...(r.network !== undefined ? { network: r.network } : {}),
    };
    // Reserve the name before any await so two creates cannot race.
    const record: VmRecord = { config, state: "defined", proc: undefined, console: new ConsoleBuffer(), expectingExit: false };
    this.vms.set(r.name, record);
    let allocated = false;
    try {
      if (r.network !== undefined) {
        // The address is the VM's for life: it is kept in its config and moves with it.
        const a = await this.net.allocate(r.network, config.uuid, r.ip);
        allocated = true;
        config.ip = a.cidr;
        if (r.gw === undefined && a.gateway !== undefined) config.gw = a.gateway;
      }
      if (r.diskMiB !== undefined) {
        const rel = join("vms", r.name, "disk.img");
        await createDataDisk(this.datastore.resolvePath(rel), r.diskMiB);
        config.disk = { path: rel, sizeMiB: r.diskMiB };
      }
      await this.datastore.saveVmConfig(r.name, config);
    } catch (err) {
      this.vms.delete(r.name);
      if (allocated && r.network !== undefined) await this.net.release(r.network, config.uuid).catch(() => undefined);
      throw err;
    }
    this.emit({ type: "vm.created", vm: r.name, at: new Date().toISOString() });
    this.log.info({ vm: r.name, memoryMiB: config.memoryMiB, disk: config.disk?.sizeMiB }, "VM created");
    return this.info(record);
  }

  async start(name: string): Promise<VmInfo> {
    const rec = this.record(name);
    this.startGuard?.();
    this.transition(rec, "start");
    const t0 = performance.now();
    // Right before the VM process is created: the VM is still ours and the host may still run VMs.
    const checkpoint = (): void => {
      if (rec.gone === true) throw new HopError("VM_OWNERSHIP_CHANGED", `VM '${name}' was released by this host while it started`, { status: 409 });
      this.startGuard?.();
    };
    try {
      // The shared datastore may say another host (or a newer generation) owns the VM now: an
      // HA restart elsewhere while this host was away. Then it must never run here again.
      await this.guardOwnership(rec);
      const image = await this.getImage();
      const { config } = rec;
      const disk = config.disk !== undefined ? this.datastore.resolvePath(config.disk.path) : undefined;
      if (config.network !== undefined) await this.net.ensure(config.network);
      const base = {
        t: "init" as const,
        name: config.name,
        memoryMiB: config.memoryMiB,
        vgaMemoryKiB: DEFAULT_VGA_KIB,
        nic: "virtio" as const,
        image: imagePaths(image),
        ...(disk !== undefined ? { disk } : {}),
        ...(config.network !== undefined ? { net: { mtu: this.net.mtuOf(config.network) } } : {}),
      };
      let proc: VmProcessHandle;
      const suspendedState = await this.datastore.exists(this.suspendPath(name)) ? this.datastore.resolvePath(this.suspendPath(name)) : undefined;
      if (suspendedState !== undefined) {
        checkpoint();
        proc = new VmProcessHandle({ ...base, start: { mode: "resume", statePath: suspendedState } }, this.takeSpare());
      } else if (config.boot === "template") {
        const statePath = await this.templates.ensure(image, defaultProfile(config.memoryMiB, config.disk?.sizeMiB));
        checkpoint();
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
        checkpoint();
        proc = new VmProcessHandle({ ...base, start: { mode: "boot", cmdline } });
      }
      this.attach(rec, proc);
      this.net.attachVm(config, proc, "active");
      const ready = await new Promise<{ startMs: number; phases: Record<string, number> }>((resolve, reject) => {
        proc.once("ready", (m: { startMs: number; phases: Record<string, number> }) => resolve(m));
        proc.once("exit", () =>
          reject(new HopError(proc.fatalError?.code ?? "VM_START_FAILED", `VM '${name}' failed to start: ${proc.fatalError?.message ?? proc.stopReason ?? "its process exited"}`, { status: 500 })),
        );
      });
      rec.startMs = Math.round(performance.now() - t0);
      rec.startPhases = ready.phases;
      rec.startedFrom = suspendedState !== undefined ? "suspended" : config.boot;
      // Resumed from its suspended state: that state is used up (resuming it twice would fork the guest's history).
      if (suspendedState !== undefined) await rm(suspendedState, { force: true });
      delete rec.lastError;
      this.transition(rec, "started");
      this.log.info({ vm: name, startMs: rec.startMs, phases: ready.phases, from: config.boot }, "VM running");
      return this.info(rec);
    } catch (err) {
      // Forgotten meanwhile (owned elsewhere, released): stop what was started, report nothing.
      if (rec.gone === true) {
        if (rec.proc !== undefined && !rec.proc.exited) {
          rec.proc.kill();
          await rec.proc.waitExit(5_000);
        }
        throw err;
      }
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
    if (rec.config.network !== undefined) {
      await this.net.release(rec.config.network, rec.config.uuid).catch((err: unknown) => this.log.warn({ vm: name, err: (err as Error).message }, "releasing the VM's address failed"));
    }
    this.emit({ type: "vm.destroyed", vm: name, at: new Date().toISOString() });
  }

  async exec(name: string, command: string, opts: { timeoutMs?: number } = {}): Promise<ExecResult> {
    const rec = this.record(name);
    if (rec.state !== "running" && rec.state !== "migrating") {
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
    if (this.spareTimer !== undefined) clearTimeout(this.spareTimer);
    // Host access first: it is machine state outside this process.
    await this.net.removeHostAccess();
    await this.migrationListener?.close();
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
    await this.net.close();
  }

  // --- cluster: HA adopt, release, self-fencing, ownership ---

  /**
   * A check run before every start (adopt's too) and incoming migration; it throws to refuse.
   * The manager link installs one that refuses while this host holds no lease. undefined: none.
   */
  setStartGuard(guard: (() => void) | undefined): void {
    this.startGuard = guard;
  }

  /** Publishes a host event to the event stream (the manager link's lease transitions). */
  publish(ev: HostEvent): void {
    this.emit(ev);
  }

  /** The VM's config as the (shared) datastore has it now; undefined when there is none. */
  private async datastoreConfig(name: string): Promise<VmConfig | undefined> {
    const file = join(this.datastore.vmDir(name), "config.json");
    let text: string;
    try {
      text = await readFile(file, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw new HopError("DATASTORE_READ_FAILED", `cannot read ${file}: ${(err as Error).message}`, { status: 500, cause: err });
    }
    try {
      return JSON.parse(text) as VmConfig;
    } catch (err) {
      throw new HopError("VM_CONFIG_CORRUPT", `${file} is not valid JSON: ${(err as Error).message}`, { status: 500, cause: err });
    }
  }

  /**
   * Throws VM_OWNERSHIP_CHANGED (409) and forgets the VM here (its files untouched) when the
   * datastore names another host, or a newer generation than this host's record.
   */
  private async guardOwnership(rec: VmRecord): Promise<void> {
    const name = rec.config.name;
    const current = await this.datastoreConfig(name);
    if (current === undefined) return;
    const mine = rec.config.generation ?? 0;
    const theirs = current.generation ?? 0;
    const elsewhere = current.host !== undefined && current.host !== this.hostName;
    if (!elsewhere && theirs <= mine) return;
    const owner = `host ${current.host ?? "(none)"} at generation ${theirs}`;
    this.log.warn({ vm: name, owner: current.host, generation: theirs, ours: mine }, "VM is owned elsewhere now: forgetting it");
    this.forget(rec, `owned by ${owner}`);
    throw new HopError("VM_OWNERSHIP_CHANGED", `VM '${name}' belongs to ${owner} now (this host had generation ${mine}); this host forgot it and did not start it`, { status: 409 });
  }

  /** Drops the VM's record (no file is touched) and reports it released. */
  private forget(rec: VmRecord, reason: string): void {
    rec.gone = true;
    const name = rec.config.name;
    if (this.vms.get(name) === rec) this.vms.delete(name);
    this.emit({ type: "vm.released", vm: name, at: new Date().toISOString(), reason });
  }

  /**
   * HA restart: takes over VM `name` of a failed host from the shared datastore. The config must
   * still name `fromHost` at `generation` (else VM_OWNERSHIP_CHANGED, nothing changed); it is
   * rewritten (atomically, under a lock file) to name this host at generation + 1. A leftover
   * suspended state is deleted (the memory is lost in an HA restart; resuming it later would fork
   * the guest's history). Then the VM starts from its template with its own identity and disk,
   * unless `start: false`.
   */
  async adopt(name: string, body: AdoptRequest): Promise<VmInfo> {
    const vm = parseInput(vmNameSchema, name, "name");
    const r = parseInput(adoptRequestSchema, body, "body");
    if (this.closing) throw new HopError("HOST_CLOSING", `host ${this.hostName} is shutting down`, { status: 503 });
    if (this.vms.has(vm) || this.adopting.has(vm)) throw new HopError("VM_EXISTS", `a VM named '${vm}' already exists on host ${this.hostName}`, { status: 409 });
    if (r.start) this.startGuard?.();
    const notFound = (): HopError => new HopError("VM_NOT_FOUND", `no VM named '${vm}' on the datastore ${this.datastore.root}`, { status: 404 });
    this.adopting.add(vm);
    let rec: VmRecord;
    try {
      if ((await this.datastoreConfig(vm)) === undefined) throw notFound();
      // The lock serializes adopts of this VM by every host sharing the datastore (compare and swap).
      const config = await withFileLock(
        join(this.datastore.vmDir(vm), ".adopt.lock"),
        async () => {
          const current = await this.datastoreConfig(vm);
          if (current === undefined) throw notFound();
          const generation = current.generation ?? 0;
          if (current.host !== r.fromHost || generation !== r.generation) {
            throw new HopError(
              "VM_OWNERSHIP_CHANGED",
              `VM '${vm}' is owned by host ${current.host ?? "(none)"} at generation ${generation}, not by ${r.fromHost} at generation ${r.generation}: not adopted`,
              { status: 409 },
            );
          }
          await rm(this.datastore.resolvePath(this.suspendPath(vm)), { force: true });
          const next: VmConfig = { ...current, host: this.hostName, generation: generation + 1 };
          await this.datastore.saveVmConfig(vm, next);
          return next;
        },
        { timeoutMs: 10_000, staleMs: 30_000 },
      ).catch((err: unknown) => {
        if ((err as NodeJS.ErrnoException).code === "ENOENT") throw notFound();
        throw err;
      });
      rec = { config, state: "stopped", proc: undefined, console: new ConsoleBuffer(), expectingExit: false };
      this.vms.set(vm, rec);
    } finally {
      this.adopting.delete(vm);
    }
    const generation = rec.config.generation ?? 0;
    this.emit({ type: "vm.adopted", vm, at: new Date().toISOString(), from: r.fromHost, generation });
    this.log.warn({ vm, from: r.fromHost, generation }, "VM adopted from a failed host");
    if (!r.start) return this.info(rec);
    try {
      return await this.start(vm);
    } catch (err) {
      const e = err as HopError;
      throw new HopError("VM_ADOPT_START_FAILED", `VM '${vm}' was adopted (host ${this.hostName}, generation ${generation}) but did not start: ${e.message}`, { status: e.status ?? 500, cause: err });
    }
  }

  /**
   * Forgets the listed VMs this host has (their files are untouched): another host owns them
   * now. A VM whose process runs here is powered off hard first (this should not happen while
   * the lease works: it is logged as an error). Names this host does not have are ignored.
   * Resolves with the names released.
   */
  async releaseVms(names: readonly string[], reason: string): Promise<string[]> {
    const released: string[] = [];
    await Promise.all(
      [...new Set(names)].map(async (name) => {
        const rec = this.vms.get(name);
        if (rec === undefined) return;
        const proc = rec.proc;
        rec.gone = true;
        for (const e of this.incoming.values()) if (e.name === name && e.outcome === "pending") e.outcome = "aborted";
        if (proc !== undefined && !proc.exited) {
          this.log.error({ vm: name, state: rec.state, reason }, "releasing a VM whose process runs on this host: killing it (it must not run on two hosts)");
          rec.expectingExit = true;
          proc.kill();
        }
        this.forget(rec, reason);
        if (proc !== undefined && !proc.exited) await proc.waitExit(5_000);
        released.push(name);
        this.log.warn({ vm: name, reason }, "VM released");
      }),
    );
    return released;
  }

  /**
   * Self-fencing: kills every VM process of this host at once (running, paused, starting,
   * migrating in or out...), after cancelling the migrations, and leaves each VM stopped with
   * lastError `fenced: <reason>`. Fast (SIGKILL, no guest shutdown) and safe to call again.
   * Resolves with the names fenced.
   */
  async fenceAll(reason: string): Promise<string[]> {
    const why = `fenced: ${reason}`;
    // Migrations first: a migration into this host never completes (the source keeps its copy);
    // one out of it is cancelled (its stream dies with the process anyway).
    for (const e of this.incoming.values()) if (e.outcome === "pending") e.outcome = "aborted";
    for (const [migrationId, o] of this.outgoing) {
      if (!o.proc.exited && !this.fencedProcs.has(o.proc)) o.proc.request({ op: "migrateCancel", migrationId, reason: why }, 1_000).catch(() => undefined);
    }
    const victims: { rec: VmRecord; proc: VmProcessHandle }[] = [];
    for (const rec of this.vms.values()) {
      const proc = rec.proc;
      if (proc === undefined || proc.exited || this.fencedProcs.has(proc)) continue;
      this.fencedProcs.add(proc);
      rec.expectingExit = true;
      rec.lastError = why;
      // The exit handler reports the stop with this reason.
      proc.stopReason = why;
      proc.kill();
      victims.push({ rec, proc });
    }
    if (victims.length > 0) this.log.error({ vms: victims.map((v) => v.rec.config.name), reason }, "fencing: killed every VM process of this host");
    await Promise.all(
      victims.map(async ({ rec, proc }) => {
        if (!(await proc.waitExit(5_000))) this.log.error({ vm: rec.config.name, pid: proc.pid }, "fencing: the VM process did not exit after SIGKILL");
        else if (this.vms.get(rec.config.name) === rec && rec.gone !== true) {
          if (rec.proc === proc) rec.proc = undefined;
          this.setState(rec, "stopped", why);
          rec.lastError = why;
        }
        this.emit({ type: "vm.fenced", vm: rec.config.name, at: new Date().toISOString(), reason });
      }),
    );
    return victims.map((v) => v.rec.config.name);
  }

  // --- networks ---

  listNetworks(): Promise<NetworksResponse> {
    return this.net.list();
  }

  async createNetwork(body: unknown): Promise<NetworkInfo> {
    return this.net.create(body);
  }

  getNetwork(name: string): Promise<NetworkDetail> {
    return this.net.detail(name);
  }


  // --- suspend ---

  private suspendPath(name: string): string {
    return join("vms", name, "suspended.hopstate");
  }

  /** Saves the VM's whole state to the datastore and stops it; the next start resumes it from there. */
  async suspend(name: string): Promise<VmInfo> {
    const rec = this.record(name);
    const proc = this.requireProc(rec);
    const wasRunning = rec.state === "running";
    this.transition(rec, "suspend");
    try {
      if (wasRunning) await proc.request({ op: "pause" });
      await proc.request({ op: "saveState", path: this.datastore.resolvePath(this.suspendPath(name)), header: await this.stateHeader(rec, "suspend"), ramPages: true }, 120_000);
    } catch (err) {
      // Nothing was lost: the VM carries on as it was.
      if (wasRunning) await proc.request({ op: "resume" }).catch(() => undefined);
      this.setState(rec, wasRunning ? "running" : "paused", `suspend failed: ${(err as Error).message}`);
      throw new HopError("VM_SUSPEND_FAILED", `suspending VM '${name}' failed: ${(err as Error).message}`, { status: 500, cause: err });
    }
    rec.expectingExit = true;
    rec.gone = true;
    await this.hardStop(proc);
    rec.gone = false;
    rec.proc = undefined;
    this.transition(rec, "suspended");
    return this.info(rec);
  }

  private async stateHeader(rec: VmRecord, kind: "suspend" | "quick-migration"): Promise<{ kind: "suspend" | "quick-migration"; memoryMiB: number; vgaMemoryKiB: number; nic: string; disk: boolean; imageHash: string; vm: string }> {
    const image = await this.getImage();
    return { kind, memoryMiB: rec.config.memoryMiB, vgaMemoryKiB: DEFAULT_VGA_KIB, nic: "virtio", disk: rec.config.disk !== undefined, imageHash: image.hash, vm: rec.config.name };
  }

  // --- migration: target side ---

  /** Where this host accepts migration connections (undefined when it accepts none). */
  get migrationAddress(): { host: string; port: number } | undefined {
    return this.migrationAddr;
  }

  private routeMigrationSocket(migrationId: string, socket: import("node:net").Socket, head: Buffer): boolean {
    const entry = this.incoming.get(migrationId);
    const proc = entry?.proc;
    if (entry === undefined || entry.outcome !== "pending" || proc === undefined || proc.exited) return false;
    proc.child.send({ t: "socket", migrationId, head }, socket);
    return true;
  }

  private async baseInit(config: VmConfig): Promise<Omit<import("../vm/ipc.js").VmInit, "start">> {
    const image = await this.getImage();
    const disk = config.disk !== undefined ? this.datastore.resolvePath(config.disk.path) : undefined;
    return {
      t: "init",
      name: config.name,
      memoryMiB: config.memoryMiB,
      vgaMemoryKiB: DEFAULT_VGA_KIB,
      nic: "virtio",
      image: imagePaths(image),
      ...(disk !== undefined ? { disk } : {}),
      // The guest's MTU is in its state already: only the NIC's link to the switch is needed.
      ...(config.network !== undefined ? { net: {} } : {}),
    };
  }

  /** This host's VXLAN endpoint for a migration ticket (where the source forwards the VM's frames). */
  private vtepTicket(): { vtep?: string } {
    const vtep = this.net.vtepEndpoint;
    return vtep !== undefined ? { vtep } : {};
  }

  /** The definition of the VM's network, sent with a prepare so the target can carry it. */
  private networkOf(config: VmConfig): { network?: import("./network.js").NetworkSpec } {
    const spec = config.network !== undefined ? this.net.spec(config.network) : undefined;
    return spec !== undefined ? { network: spec } : {};
  }

  /** A source host asks this host to take a VM: validate, reserve the name, get ready to receive. */
  async prepareIncoming(body: IncomingRequest): Promise<IncomingTicket> {
    const r = parseInput(incomingRequestSchema, body, "body");
    if (this.token === undefined) throw new HopError("MIGRATION_DISABLED", `host ${this.hostName} accepts no migrations (it has no cluster token)`, { status: 409 });
    if (this.closing) throw new HopError("HOST_CLOSING", `host ${this.hostName} is shutting down`, { status: 503 });
    this.startGuard?.();
    const needsShared = r.mode !== "live" || r.config.disk !== undefined;
    if (needsShared && r.datastoreId !== this.datastore.id) {
      throw new HopError("DATASTORE_NOT_SHARED", `VM '${r.config.name}' keeps ${r.mode === "quick" ? "its saved state" : "its files"} on datastore ${r.datastoreId}, which host ${this.hostName} does not share (its datastore is ${this.datastore.id})`, { status: 409 });
    }
    if (this.vms.has(r.config.name)) throw new HopError("VM_EXISTS", `a VM named '${r.config.name}' already exists on host ${this.hostName}`, { status: 409 });
    if (this.incoming.has(r.migrationId)) throw new HopError("MIGRATION_EXISTS", `migration ${r.migrationId} is already known here`, { status: 409 });
    const config = adoptedConfig(r.config as VmConfig, this.hostName);
    // The VM keeps its network and address: this host must carry the network (created from the source's definition if need be).
    if (config.network !== undefined) await this.net.ensure(config.network, r.network);
    const entry: IncomingEntry = { name: config.name, outcome: "pending" };
    this.incoming.set(r.migrationId, entry);
    if (r.mode === "cold") {
      const rec: VmRecord = { config, state: "stopped", proc: undefined, console: new ConsoleBuffer(), expectingExit: false };
      this.vms.set(config.name, rec);
      await this.datastore.saveVmConfig(config.name, config);
      entry.outcome = "resumed";
      this.emit({ type: "vm.created", vm: config.name, at: new Date().toISOString() });
      return { host: this.hostName };
    }
    const rec: VmRecord = { config, state: "incoming", proc: undefined, console: new ConsoleBuffer(), expectingExit: false };
    this.vms.set(config.name, rec);
    this.emit({ type: "vm.state", vm: config.name, state: "incoming", at: new Date().toISOString() });
    const dropRecord = (): void => {
      if (this.vms.get(config.name) === rec && rec.state === "incoming") this.vms.delete(config.name);
    };
    try {
      const base = await this.baseInit(config);
      if (r.mode === "quick") {
        // Phase one: a VM process with its engine ready, waiting for the saved state (commitIncoming).
        const warmup = await this.incomingWarmup(entry);
        const proc = new VmProcessHandle({ ...base, ...(warmup !== undefined ? { warmup } : {}), start: { mode: "awaitState" } }, this.takeSpare({ forkNext: false }));
        entry.proc = proc;
        proc.once("ready", () => this.spareAfterIncoming(entry, true));
        proc.once("exit", () => this.spareAfterIncoming(entry, false));
        this.attach(rec, proc);
        this.net.attachVm(config, proc, "standby");
        proc.on("exit", () => {
          if (entry.outcome === "pending") entry.outcome = "aborted";
          dropRecord();
        });
        await new Promise<void>((resolve, reject) => {
          proc.once("prepared", () => resolve());
          proc.once("exit", () => reject(new HopError(proc.fatalError?.code ?? "MIGRATION_PREPARE_FAILED", `preparing VM '${config.name}' failed: ${proc.fatalError?.message ?? "its process exited"}`, { status: 500 })));
        });
        return { host: this.hostName, ...this.vtepTicket() };
      }
      if (this.migrationAddr === undefined) throw new HopError("MIGRATION_DISABLED", `host ${this.hostName} has no migration listener`, { status: 409 });
      const warmup = await this.incomingWarmup(entry);
      const proc = new VmProcessHandle(
        {
          ...base,
          ...(warmup !== undefined ? { warmup } : {}),
          start: {
            mode: "incoming",
            migrationId: r.migrationId,
            token: this.token,
            verifyRam: r.verifyRam === true,
            yieldCpu: !this.otherMovesIn(entry),
            expect: { migrationId: r.migrationId, vmUuid: config.uuid, name: config.name, memoryMiB: config.memoryMiB, vgaMemoryKiB: DEFAULT_VGA_KIB, nic: "virtio", disk: config.disk !== undefined },
          },
        },
        this.takeSpare({ forkNext: false }),
      );
      entry.proc = proc;
      proc.once("migratedIn", () => this.spareAfterIncoming(entry, true));
      proc.once("exit", () => this.spareAfterIncoming(entry, false));
      this.attach(rec, proc);
      this.net.attachVm(config, proc, "standby");
      proc.on("migratedIn", () => {
        // Tell the network where the VM is now, then hand it what arrived during the switchover.
        this.net.activateVm(config.name);
        entry.outcome = "resumed";
        this.transition(rec, "started");
        this.datastore.saveVmConfig(config.name, config).catch((err: unknown) => this.log.error({ vm: config.name, err }, "saving the migrated VM's config failed"));
        this.emit({ type: "vm.created", vm: config.name, at: new Date().toISOString() });
        this.log.info({ vm: config.name, migrationId: r.migrationId }, "VM migrated in and running");
      });
      proc.on("exit", () => {
        if (entry.outcome === "pending") entry.outcome = "aborted";
        dropRecord();
      });
      return { host: this.hostName, address: this.migrationAddr, ...this.vtepTicket() };
    } catch (err) {
      entry.outcome = "aborted";
      if (rec.proc !== undefined && !rec.proc.exited) {
        rec.expectingExit = true;
        await this.hardStop(rec.proc);
      }
      dropRecord();
      throw err;
    }
  }

  /** Phase two of a quick migration: restore the saved state (on the shared datastore) and run the VM here. */
  async commitIncoming(migrationId: string, body: { statePath?: unknown }): Promise<IncomingTicket> {
    const statePath = parseInput(z.string().min(1).max(1024), body.statePath, "statePath");
    const entry = this.incoming.get(migrationId);
    if (entry === undefined) throw new HopError("MIGRATION_NOT_FOUND", `no migration ${migrationId} was prepared on host ${this.hostName}`, { status: 404 });
    const proc = entry.proc;
    const rec = this.vms.get(entry.name);
    if (entry.outcome !== "pending" || proc === undefined || proc.exited || rec === undefined || rec.state !== "incoming") {
      throw new HopError("MIGRATION_FENCED", `migration ${migrationId} is ${entry.outcome} here and cannot be resumed`, { status: 409 });
    }
    try {
      const r = await proc.request<{ phases: Record<string, number> }>({ op: "resumeFrom", statePath: this.datastore.resolvePath(statePath) }, 120_000);
      // Fenced while it restored? Then it must not run.
      if (entry.outcome !== "pending") throw new HopError("MIGRATION_FENCED", `migration ${migrationId} was fenced while the VM was restored`, { status: 409 });
      this.net.activateVm(rec.config.name);
      entry.outcome = "resumed";
      await this.datastore.saveVmConfig(rec.config.name, rec.config);
      rec.startPhases = r.phases;
      this.transition(rec, "started");
      this.emit({ type: "vm.created", vm: rec.config.name, at: new Date().toISOString() });
      return { host: this.hostName, restoreMs: r.phases["restore"] ?? 0 };
    } catch (err) {
      if (entry.outcome !== "resumed") {
        entry.outcome = "aborted";
        rec.expectingExit = true;
        proc.kill();
        await proc.waitExit(5_000);
      }
      throw err;
    }
  }

  /** Drops a prepared incoming migration whose VM does not run yet (idempotent). */
  async abortIncoming(migrationId: string): Promise<void> {
    const entry = this.incoming.get(migrationId);
    if (entry === undefined || entry.outcome !== "pending") return;
    entry.outcome = "aborted";
    const proc = entry.proc;
    if (proc !== undefined && !proc.exited) {
      proc.kill();
      await proc.waitExit(5_000);
    }
  }

  /** The source lost the outcome: "resumed" if the VM runs here; otherwise it is fenced for good ("aborted"). */
  async fenceIncoming(migrationId: string): Promise<IncomingOutcome> {
    const entry = this.incoming.get(migrationId);
    if (entry === undefined) return "aborted";
    if (entry.outcome !== "pending") return entry.outcome;
    const proc = entry.proc;
    if (proc !== undefined && !proc.exited) {
      try {
        const r = await proc.request<{ outcome: IncomingOutcome }>({ op: "fence", migrationId }, 5_000);
        if (r.outcome === "resumed" || r.outcome === "resuming") return r.outcome;
      } catch (err) {
        this.log.warn({ migrationId, err: (err as Error).message }, "fence request failed; killing the incoming VM");
      }
      entry.outcome = "aborted";
      proc.kill();
      await proc.waitExit(5_000);
      return "aborted";
    }
    entry.outcome = "aborted";
    return "aborted";
  }

  // --- migration: source side ---

  /** Moves a VM to another host (live, quick or cold). Resolves with the report once the VM runs (or is defined) there. */
  async migrate(name: string, body: MigrateRequest): Promise<MigrationReport> {
    const r = parseInput(migrateRequestSchema, body, "body");
    const rec = this.record(name);
    if (this.peers === undefined) throw new HopError("MIGRATION_DISABLED", `host ${this.hostName} knows no other hosts`, { status: 409 });
    const peer = this.peers(r.to);
    const migrationId = randomUUID();
    const t0 = performance.now();
    const base = { migrationId, vm: name, from: this.hostName, ok: true as const };
    const emitFailed = (err: unknown): void => {
      const e = err as HopError;
      this.emit({ type: "migration.failed", vm: name, at: new Date().toISOString(), migrationId, code: e.code ?? "MIGRATION_FAILED", message: e.message });
    };

    if (r.mode === "cold") {
      if (rec.state !== "stopped" && rec.state !== "defined" && rec.state !== "crashed") {
        throw new HopError("VM_NOT_STOPPED", `cold migration needs VM '${name}' powered off; it is ${rec.state} (use --mode live or quick)`, { status: 409 });
      }
      try {
        const ticket = await peer.prepareIncoming({ migrationId, mode: "cold", source: this.hostName, config: rec.config, datastoreId: this.datastore.id, ...this.networkOf(rec.config) });
        const report: MigrationReport = { ...base, mode: "cold", to: ticket.host, totalMs: ms(t0), downtimeMs: 0, downtime: zeroDowntime(), bytes: 0, pages: 0, rounds: [], throttleMax: 0, stunnedMs: 0 };
        this.leave(rec, ticket.host, migrationId);
        this.emit({ type: "migration.done", vm: name, at: new Date().toISOString(), report });
        return report;
      } catch (err) {
        emitFailed(err);
        throw err;
      }
    }

    const proc = this.requireProc(rec);
    if (r.mode === "live" && rec.state !== "running") throw new HopError("VM_NOT_RUNNING", `live migration needs VM '${name}' running; it is ${rec.state}`, { status: 409 });
    const wasRunning = rec.state === "running";
    this.transition(rec, "migrate");
    this.outgoing.set(migrationId, { name, proc });
    const onProgress = (m: { progress: import("../migration/index.js").MigrationProgress }): void => {
      this.emit({ type: "migration.progress", vm: name, at: new Date().toISOString(), progress: m.progress });
    };
    proc.on("migration", onProgress);
    try {
      const report = r.mode === "live" ? await this.migrateLive(rec, proc, peer, migrationId, r) : await this.migrateQuick(rec, proc, peer, migrationId, wasRunning);
      this.emit({ type: "migration.done", vm: name, at: new Date().toISOString(), report });
      this.log.info({ vm: name, to: report.to, mode: report.mode, totalMs: report.totalMs, downtimeMs: report.downtimeMs }, "VM migrated");
      return report;
    } catch (err) {
      emitFailed(err);
      throw err;
    } finally {
      proc.off("migration", onProgress);
      this.outgoing.delete(migrationId);
    }
  }

  private async migrateLive(rec: VmRecord, proc: VmProcessHandle, peer: import("./migration.js").MigrationPeer, migrationId: string, r: z.output<typeof migrateRequestSchema>): Promise<MigrationReport> {
    const name = rec.config.name;
    let ticket: IncomingTicket;
    try {
      ticket = await peer.prepareIncoming({ migrationId, mode: "live", source: this.hostName, config: rec.config, datastoreId: this.datastore.id, ...(r.verifyRam === true ? { verifyRam: true } : {}), ...this.networkOf(rec.config) });
      if (ticket.address === undefined) throw new HopError("MIGRATION_PREPARE_FAILED", `host ${ticket.host} gave no migration address`, { status: 502 });
    } catch (err) {
      this.transition(rec, "migrateFailed");
      throw new HopError((err as HopError).code ?? "MIGRATION_PREPARE_FAILED", `preparing the target for VM '${name}' failed: ${(err as Error).message}`, { status: (err as HopError).status ?? 502, cause: err });
    }
    // Network hand-off, driven by the VM process's progress: hold the VM's frames from the moment
    // it stops, and forward them (and later ones) to the target's host once COMPLETE is sent.
    const to = ticket.vtep;
    const onPhase = (m: { progress: import("../migration/index.js").MigrationProgress }): void => {
      if (m.progress.phase === "stop-and-copy") this.net.holdVm(name, true);
      else if (m.progress.phase === "switchover") this.net.forwardVm(name, to);
    };
    if (rec.config.network !== undefined) proc.on("migration", onPhase);
    let res: MigrateOutResult;
    try {
      res = await this.migrateOutRequest(proc, rec, migrationId, ticket.host, ticket.address ?? { host: "", port: 0 }, r);
    } catch (err) {
      if (!proc.exited) throw err;
      // The source VM process died during the migration. If COMPLETE had gone out, the target
      // may run the VM now: ask it (it fences the migration otherwise) before calling it lost.
      if ((await this.resolveOutcome(peer, migrationId)) === "resumed") {
        this.leave(rec, ticket.host, migrationId);
        throw new HopError("MIGRATION_REPORT_LOST", `the source VM process of '${name}' died after the switchover; the VM runs on ${ticket.host}`, { status: 502, cause: err });
      }
      throw err;
    } finally {
      proc.off("migration", onPhase);
    }
    if (res.ok) {
      await this.release(rec, proc, ticket.host, migrationId);
      return res.report;
    }
    if (res.sourceMayResume) {
      this.net.resumeVmHere(name);
      this.transition(rec, "migrateFailed");
      peer.abortIncoming(migrationId).catch(() => undefined);
      throw new HopError(res.error.code, `live migration of VM '${name}' failed; it runs on here as before: ${res.error.message}`, { status: 409 });
    }
    const outcome = await this.resolveOutcome(peer, migrationId);
    if (outcome === "resumed") {
      this.net.forwardVm(name, to);
      await this.release(rec, proc, ticket.host, migrationId);
      throw new HopError("MIGRATION_REPORT_LOST", `VM '${name}' runs on ${ticket.host} now, but the switchover report was lost: ${res.error.message}`, { status: 502 });
    }
    if (outcome === "aborted") {
      await proc.request({ op: "resume" });
      this.net.resumeVmHere(name);
      this.transition(rec, "migrateFailed");
      throw new HopError(res.error.code, `live migration of VM '${name}' failed at the switchover; the target never ran it and it runs on here: ${res.error.message}`, { status: 409 });
    }
    rec.lastError = `migration ${migrationId}: outcome unknown (target unreachable); the VM stays paused until the target answers`;
    this.retryOutcome(rec, proc, peer, migrationId, ticket.host);
    throw new HopError("MIGRATION_OUTCOME_UNKNOWN", rec.lastError, { status: 504 });
  }

  private migrateOutRequest(proc: VmProcessHandle, rec: VmRecord, migrationId: string, to: string, address: { host: string; port: number }, r: z.output<typeof migrateRequestSchema>): Promise<MigrateOutResult> {
    const name = rec.config.name;
    return proc.request<MigrateOutResult>(
      {
        op: "migrateOut",
        migrationId,
        from: this.hostName,
        to,
        address,
        token: this.token ?? "",
        config: { name, uuid: rec.config.uuid, memoryMiB: rec.config.memoryMiB, vgaMemoryKiB: DEFAULT_VGA_KIB, nic: "virtio", disk: rec.config.disk !== undefined, generation: (rec.config.generation ?? 0) + 1, pageSize: PAGE_SIZE },
        options: {
          ...(r.downtimeTargetMs !== undefined ? { downtimeTargetMs: r.downtimeTargetMs } : {}),
          ...(r.bandwidth !== undefined ? { bandwidthBytesPerSec: r.bandwidth } : {}),
          ...(r.lz4 !== undefined ? { lz4: r.lz4 } : {}),
          ...(r.verifyRam !== undefined ? { verifyRam: r.verifyRam } : {}),
          ...(r.maxRounds !== undefined ? { maxRounds: r.maxRounds } : {}),
        },
      },
      24 * 3600_000,
    );
  }

  private async migrateQuick(rec: VmRecord, proc: VmProcessHandle, peer: import("./migration.js").MigrationPeer, migrationId: string, wasRunning: boolean): Promise<MigrationReport> {
    const name = rec.config.name;
    const t0 = performance.now();
    const rel = join("states", `${name}-${migrationId}.hopstate`);
    const abs = this.datastore.resolvePath(rel);
    const resumeHere = async (err: unknown): Promise<never> => {
      if (wasRunning) await proc.request({ op: "resume" }).catch(() => undefined);
      this.net.resumeVmHere(name);
      this.transition(rec, "migrateFailed");
      if (!wasRunning) this.setState(rec, "paused");
      await rm(abs, { force: true });
      throw new HopError((err as HopError).code ?? "MIGRATION_FAILED", `quick migration of VM '${name}' failed; it carries on here: ${(err as Error).message}`, { status: (err as HopError).status ?? 500, cause: err });
    };
    // Prepare the target first (its VM process and engine ready), while the VM still runs here.
    let ticket: IncomingTicket;
    try {
      ticket = await peer.prepareIncoming({ migrationId, mode: "quick", source: this.hostName, config: rec.config, datastoreId: this.datastore.id, ...this.networkOf(rec.config) });
    } catch (err) {
      this.transition(rec, "migrateFailed");
      if (!wasRunning) this.setState(rec, "paused");
      peer.abortIncoming(migrationId).catch(() => undefined);
      throw new HopError((err as HopError).code ?? "MIGRATION_PREPARE_FAILED", `preparing the target for VM '${name}' failed: ${(err as Error).message}`, { status: (err as HopError).status ?? 502, cause: err });
    }
    const pausedAt = performance.now();
    // Frames for the VM are held from here (the pause request follows them on the IPC channel).
    this.net.holdVm(name);
    try {
      if (wasRunning) await proc.request({ op: "pause" });
    } catch (err) {
      peer.abortIncoming(migrationId).catch(() => undefined);
      return resumeHere(err);
    }
    const stopped = performance.now();
    let stateBytes: number;
    try {
      const saved = await proc.request<{ bytes: number }>({ op: "saveState", path: abs, header: await this.stateHeader(rec, "quick-migration"), ramPages: true, durable: false }, 120_000);
      stateBytes = saved.bytes;
    } catch (err) {
      peer.abortIncoming(migrationId).catch(() => undefined);
      return resumeHere(err);
    }
    const savedAt = performance.now();
    // The saved state is final: what was held, and what comes, goes to the target's host, where
    // the VM's (standby) port holds it until the VM runs there. If the commit fails, the VM
    // resumes here and forwarding stops.
    const to = ticket.vtep;
    this.net.forwardVm(name, to);
    try {
      ticket = await peer.commitIncoming(migrationId, rel);
    } catch (err) {
      if (err instanceof ApiError) {
        // The target answered: its VM does not run (it discarded it).
        return resumeHere(err);
      }
      const outcome = await this.resolveOutcome(peer, migrationId);
      if (outcome === "aborted") return resumeHere(err);
      if (outcome !== "resumed") {
        rec.lastError = `quick migration ${migrationId}: outcome unknown; the VM stays paused until the target answers`;
        this.retryOutcome(rec, proc, peer, migrationId, ticket.host);
        throw new HopError("MIGRATION_OUTCOME_UNKNOWN", rec.lastError, { status: 504, cause: err });
      }
    }
    const running = performance.now();
    await this.release(rec, proc, ticket.host, migrationId);
    await rm(abs, { force: true });
    const restoreMs = ticket.restoreMs ?? 0;
    return {
      migrationId,
      vm: name,
      mode: "quick",
      from: this.hostName,
      to: ticket.host,
      ok: true,
      totalMs: ms(t0),
      downtimeMs: roundMs(running - pausedAt),
      downtime: { stopMs: roundMs(stopped - pausedAt), finalCopyMs: 0, stateSaveMs: roundMs(savedAt - stopped), transferMs: roundMs(Math.max(0, running - savedAt - restoreMs)), restoreMs: roundMs(restoreMs), resumeMs: 0 },
      bytes: stateBytes,
      pages: 0,
      rounds: [],
      throttleMax: 0,
      stunnedMs: 0,
    };
  }

  /** Asks the target a few times what became of a migration whose end we did not see. */
  private async resolveOutcome(peer: import("./migration.js").MigrationPeer, migrationId: string, attempts = 5): Promise<IncomingOutcome | "unknown"> {
    for (let i = 0; i < attempts; i++) {
      try {
        const o = await peer.fenceIncoming(migrationId);
        if (o === "resumed" || o === "aborted") return o;
      } catch (err) {
        this.log.warn({ migrationId, err: (err as Error).message }, "asking the target for the migration's outcome failed");
      }
      await new Promise((res) => setTimeout(res, 500 * (i + 1)));
    }
    return "unknown";
  }

  /** Keeps asking in the background; the VM stays paused (never resumed blindly) until the target answers. */
  private retryOutcome(rec: VmRecord, proc: VmProcessHandle, peer: import("./migration.js").MigrationPeer, migrationId: string, to: string): void {
    const tick = async (): Promise<void> => {
      if (this.closing || proc.exited || rec.gone === true) return;
      const o = await this.resolveOutcome(peer, migrationId, 1);
      if (o === "resumed") await this.release(rec, proc, to, migrationId);
      else if (o === "aborted") {
        await proc.request({ op: "resume" });
        this.net.resumeVmHere(rec.config.name);
        this.transition(rec, "migrateFailed");
        delete rec.lastError;
      } else setTimeout(() => void tick().catch((err: unknown) => this.log.error({ err }, "outcome retry failed")), 5_000).unref();
    };
    setTimeout(() => void tick().catch((err: unknown) => this.log.error({ err }, "outcome retry failed")), 5_000).unref();
  }

  /** The VM runs on `to` now: stop this copy for good and forget it here (its files stay on the shared datastore). */
  private async release(rec: VmRecord, proc: VmProcessHandle, to: string, migrationId: string): Promise<void> {
    rec.gone = true;
    rec.expectingExit = true;
    this.lastMoveOutAt = performance.now();
    if (!(await this.recycleAsSpare(proc))) await this.hardStop(proc);
    this.leave(rec, to, migrationId);
  }

  private leave(rec: VmRecord, to: string, migrationId: string): void {
    rec.gone = true;
    if (this.vms.get(rec.config.name) === rec) this.vms.delete(rec.config.name);
    this.emit({ type: "vm.migrated", vm: rec.config.name, at: new Date().toISOString(), to, migrationId });
  }

  /** Cancels a live migration out of this host (before its switchover). */
  async cancelMigration(migrationId: string): Promise<{ cancelled: boolean }> {
    const out = this.outgoing.get(migrationId);
    if (out === undefined) throw new HopError("MIGRATION_NOT_FOUND", `no migration ${migrationId} is running out of host ${this.hostName}`, { status: 404 });
    return out.proc.request<{ cancelled: boolean }>({ op: "migrateCancel", migrationId, reason: "cancelled by the user" });
  }

  /** Migrations out of this host now (id and VM). */
  migrationsInProgress(): { migrationId: string; vm: string }[] {
    return [...this.outgoing].map(([migrationId, o]) => ({ migrationId, vm: o.name }));
  }

  private async waitReady(proc: VmProcessHandle, name: string): Promise<{ startMs: number; phases: Record<string, number> }> {
    return new Promise((resolve, reject) => {
      proc.once("ready", (m: { startMs: number; phases: Record<string, number> }) => resolve(m));
      proc.once("exit", () =>
        reject(new HopError(proc.fatalError?.code ?? "VM_START_FAILED", `VM '${name}' failed to start: ${proc.fatalError?.message ?? proc.stopReason ?? "its process exited"}`, { status: 500 })),
      );
    });
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
    proc.on("warmed", (w: { ms: number; error?: string }) => this.log.debug({ vm: rec.config.name, ms: w.ms, ...(w.error !== undefined ? { error: w.error } : {}) }, "VM process warmed"));
    proc.on("exit", (code: number | null, signal: NodeJS.Signals | null) => {
      if (rec.proc !== proc || rec.gone === true) return;
      rec.proc = undefined;
      const clean = proc.stopReason !== undefined && proc.fatalError === undefined && code === 0;
      if (rec.state === "starting" || rec.state === "incoming") return; // start() / the migration reports the failure
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
