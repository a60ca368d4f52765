/**
 * The VM process: one v86 guest per Node process (crash isolation, as QEMU and Firecracker
 * do). It is started by the host agent's supervisor with fork(), receives a VmInit, boots or
 * restores the guest, and then serves requests over IPC until the guest powers off or the
 * host asks it to stop.
 */
import { readFile } from "node:fs/promises";
import type { Socket } from "node:net";
import { HopError } from "../common/errors.js";
import { Engine, ENGINE_VERSION, toArrayBuffer } from "../engine/index.js";
import { LiveMigrationSource, LiveMigrationTarget, migrationHostAreaBytes } from "../migration/index.js";
import { checkCompatible, decodeRamPagesPayload, encodeRamPagesPayload, FileDisk, readStateFile, readStateFileIntoRam, writeStateFile, type StateHeader } from "../storage/index.js";
import { GuestAgentClient } from "./agent.js";
import { startWarmup, type Warming } from "./warmup.js";
import { lowerPriority } from "./priority.js";
import { ConsoleLines } from "./consolelines.js";
import type { ChildMessage, MigrateOutResult, ParentMessage, RecycleResult, SocketMessage, VmInit, VmOp } from "./ipc.js";
import { monotonicMs, roundMs } from "../common/time.js";

/**
 * Nice values of a lone migration target's process (see start()): while it prepares (faults its
 * RAM in), and then until round 0 is applied. At 5 while preparing, the source's event loop lost
 * its core for 6-12 ms at a time (2 cores); at 19 it hardly does. At 19 during round 0, a busy
 * guest's own threads starved the target: round 0 of a guest rewriting 32 MiB fell to ~180 MB/s.
 */
const PREPARE_NICE = 19;
const INCOMING_NICE = 5;
/**
 * Once its VM has moved away live, a VM process runs at this nice value until it gets its next
 * VM (as a recycled spare): what it still does (the report, dropping the VM, the collection
 * after) must not take the CPU from the guest that has just resumed elsewhere, maybe on this
 * very host. Only where the priority can be put back (see lowerPriority).
 */
const MOVED_AWAY_NICE = 19;
/** Set while this process's VM has moved away: puts its threads' priority back. */
let normalAfterMoveOut: (() => void) | undefined;

const READY_MARKER = "HOPVISOR-READY";
const POWER_DOWN_MARKERS = ["reboot: Power down", "reboot: System halted", "reboot: Restarting system"];
const CONSOLE_FLUSH_BYTES = 16 * 1024;
/**
 * A finished line goes to the host agent at once unless the last flush was this recent (then
 * with the rest of the engine's slice). Flushing only when the slice ended held lines back
 * 1-4 ms (measured: a heartbeat after a live migration's resume); the floor bounds the
 * messages to ~1000/s for a guest that writes the console flat out.
 */
const CONSOLE_LINE_FLUSH_MIN_MS = 1;
/** Frames sent to the host agent and not yet written to the IPC channel; beyond it frames are dropped. */
const MAX_FRAMES_IN_FLIGHT = 512;

function send(msg: ChildMessage): void {
  if (process.send !== undefined && process.connected) process.send(msg);
}

/**
 * Restores a throw-away device state (the warm-up guest's) onto this engine, RAM kept, before
 * the migration's real state arrives. The first restore on a new engine took 4-7 ms in the
 * pause (0.5-1.5 ms after): it touches v86's TLB and JIT tables for the first time and meets
 * this instance's objects. RAM is not touched, and the real restore replaces every device and
 * the CPU. A rehearsal that fails costs nothing but the time.
 */
async function rehearseRestore(engine: Engine, state: ArrayBuffer): Promise<void> {
  try {
    await engine.restoreStateKeepingRam(state);
  } catch {
    // The real restore does not depend on it.
  }
}

/** The engine clock a saved state continues (absent in templates). */
function savedClock(header: StateHeader): { clockMs: number; atMs: number } | undefined {
  return header.engineClockMs !== undefined ? { clockMs: header.engineClockMs, atMs: header.savedAtMs } : undefined;
}

function reportWarmed(r: { ms: number; error?: string }): void {
  send({ t: "warmed", ...r });
}

/**
 * The NIC's side of the IPC channel: frames the guest sends go to the host agent's switch port,
 * frames from the port go to the guest. Never queues without bound: when the channel is backed
 * up, frames are dropped and counted (like a NIC whose ring is full).
 */
class NicLink {
  private inFlight = 0;
  dropped = 0;
  /** Set from the switchover of a live migration out: frames from the agent go back to it (see "bounced"). */
  bouncing = false;
  private readonly onSent = (): void => {
    this.inFlight--;
  };

  constructor(private readonly engine: Engine) {
    engine.onFrame((f) => this.toAgent(f, false));
  }

  private toAgent(data: Uint8Array, bounced: boolean): void {
    if (process.send === undefined || !process.connected) return;
    if (this.inFlight >= MAX_FRAMES_IN_FLIGHT) {
      this.dropped++;
      return;
    }
    this.inFlight++;
    try {
      process.send(bounced ? { t: "frame", data, bounced: true } : { t: "frame", data }, undefined, undefined, this.onSent);
    } catch {
      this.inFlight--;
      this.dropped++;
    }
  }

  /** A frame from the switch port. */
  fromAgent(data: Uint8Array): void {
    if (this.bouncing) this.toAgent(data, true);
    else this.engine.deliverFrame(data);
  }
}

class VmProcess {
  private engine: Engine | undefined;
  private disk: FileDisk | undefined;
  private agent: GuestAgentClient | undefined;
  private consoleBuf: number[] = [];
  private consoleFlushScheduled = false;
  private consoleFlushedAt = 0;
  private readonly consoleLines = new ConsoleLines((line) => this.onConsoleLine(line));
  private readyMarkerSeen: (() => void) | undefined;
  private exiting = false;
  /** An incoming live migration (mode "incoming") and a connection that arrived before it was ready. */
  private incoming: { id: string; target: LiveMigrationTarget } | undefined;
  private pendingSocket: { msg: SocketMessage; socket: Socket } | undefined;
  private outgoing: { id: string; source: LiveMigrationSource } | undefined;
  /** Mode awaitState: the state file it was told to resume from (once). */
  private restoredFrom: string | undefined;
  /** Set once a live migration out of this process completed: this copy must never run again. */
  private migratedAway = false;
  private nic: NicLink | undefined;

  /** `recycled`: this process ran a VM before (see RecycleOp): its code is warm, no warm-up is needed. */
  constructor(
    private readonly init: VmInit,
    private warming: Warming | undefined,
    private readonly recycled = false,
  ) {}

  /**
   * Waits for the warm-up of this process (cut short when not `needed`), or runs one for an
   * incoming VM. Returns the warm-up guest's device state, when it ran to its end.
   */
  private async warm(needed: boolean): Promise<ArrayBuffer | undefined> {
    let w = this.warming;
    if (w === undefined && needed && !this.recycled && this.init.warmup !== undefined) w = startWarmup(this.init.warmup, reportWarmed, { lowPriority: false });
    this.warming = undefined;
    if (w === undefined) return undefined;
    if (!needed) w.abort();
    const state = await w.done;
    // The warm-up's engine is unreachable only now (its function has returned): collect its
    // wasm memory (~150 MiB) before this VM's own engine is made. Nothing else might for a long
    // while: VM processes run without the memory reducer and their heaps hardly grow.
    (globalThis as { gc?: () => void }).gc?.();
    return state;
  }

  /** A migration connection handed over by the host agent. */
  acceptSocket(msg: SocketMessage, socket: Socket | undefined): void {
    if (socket === undefined) return;
    const inc = this.incoming;
    if (inc === undefined) {
      if (this.init.start.mode === "incoming" && this.pendingSocket === undefined) this.pendingSocket = { msg, socket };
      else socket.destroy();
      return;
    }
    if (msg.migrationId !== inc.id) {
      socket.destroy();
      return;
    }
    inc.target.attach(socket, Buffer.from(msg.head));
  }

  async start(): Promise<void> {
    const t0 = monotonicMs();
    const phases: Record<string, number> = {};
    const mark = (name: string, since: number): number => {
      const now = monotonicMs();
      phases[name] = Math.round((now - since) * 10) / 10;
      return now;
    };
    const { init } = this;
    // While it prepares and takes in round 0, the running guest being moved (the source, maybe
    // on this very host's CPUs) comes first: preparing, warming and round 0 run at a lower
    // priority, raised again once round 0 is applied (or, at the latest, before the restore).
    let restorePriority = init.start.mode === "incoming" && init.start.yieldCpu === true ? lowerPriority(PREPARE_NICE) : undefined;
    const normalPriority = (): void => {
      restorePriority?.();
      restorePriority = undefined;
    };
    // A guest that arrives by migration runs at full speed from its first millisecond.
    const warmState = await this.warm(init.start.mode === "incoming" || init.start.mode === "awaitState");
    const restore = init.start.mode !== "boot";
    const [bios, vgabios, bzimage, initrd] = await Promise.all([
      readFile(init.image.bios),
      readFile(init.image.vgabios),
      restore ? undefined : readFile(init.image.bzimage),
      restore ? undefined : readFile(init.image.initrd),
    ]);
    if (init.disk !== undefined) {
      this.disk = new FileDisk(init.disk);
      this.disk.onError = (err) => this.fatal(err);
    }
    // Reading and verifying the saved state overlaps with the engine's start-up (its wasm
    // compiles off the main thread).
    const [engine, state] = await Promise.all([
      Engine.create({
        memoryMiB: init.memoryMiB,
        vgaMemoryKiB: init.vgaMemoryKiB,
        bios,
        vgabios,
        ...(bzimage !== undefined && initrd !== undefined && init.start.mode === "boot"
          ? { boot: { bzimage, initrd, cmdline: init.start.cmdline } }
          : {}),
        ...(this.disk !== undefined ? { disk: this.disk } : {}),
        nic: init.nic,
        serialPorts: 2,
      }),
      // (A suspended VM's own state streams into RAM once the engine is there: restoreSavedFile.)
      init.start.mode === "restore" ? readStateFile(init.start.statePath) : undefined,
    ]);
    let t = mark("engine+read", t0);
    this.engine = engine;
    // The shadow of RAM, scratch and the dirty log's map, placed before the guest runs (see
    // reserveMigrationMemory).
    engine.reserveMigrationMemory(migrationHostAreaBytes(engine.memoryBytes));
    if (init.net !== undefined) this.nic = new NicLink(engine);
    const agent = GuestAgentClient.on(engine);
    this.agent = agent;
    engine.onSerialByte(0, (b) => this.onConsoleByte(b));

    const start = init.start;
    if (start.mode === "incoming") {
      if (warmState !== undefined) await rehearseRestore(engine, warmState);
      const target = new LiveMigrationTarget(
        engine,
        { token: start.token, engineVersion: ENGINE_VERSION, expect: start.expect, verifyRam: start.verifyRam },
        {
          onResumed: (info) => {
            send({ t: "migratedIn", migrationId: start.migrationId, info });
            send({ t: "ready", startMs: Math.round(monotonicMs() - t0), phases: { restore: info.restoreMs, resume: info.resumeMs } });
            send({ t: "state", state: "running" });
            // The guest's clock is right: its TSC counted the pause (LiveMigrationTarget, continueTsc).
          },
          onAborted: (err) => {
            send({ t: "migrationAborted", migrationId: start.migrationId, error: { code: err.code, message: err.message } });
            void this.exit(`incoming migration aborted: ${err.message}`);
          },
          // No explicit collection after round 0: its pages are assembled in the engine's
          // memory and leave little garbage. A gc() here (~17 ms) held back the source's answer
          // for the round, and run after that answer it fell into the switchover (pause median
          // 14 -> 28 ms; without it 12, measured in runs of 10 idle moves).
          precopyRoundApplied: (round) => {
            if (round !== 0) return;
            // The heavy part (preparing, round 0) is over: from here on the target must answer
            // at once (the switchover can come after any round).
            normalPriority();
          },
          prepared: () => {
            // Prepared: round 0 comes, and the target must keep up with it.
            if (restorePriority === undefined) return;
            restorePriority();
            restorePriority = lowerPriority(INCOMING_NICE);
          },
          beforeRestore: () => normalPriority(),
        },
      );
      this.incoming = { id: start.migrationId, target };
      const pending = this.pendingSocket;
      this.pendingSocket = undefined;
      if (pending !== undefined) this.acceptSocket(pending.msg, pending.socket);
      return;
    }
    if (start.mode === "awaitState") {
      // Fault guest RAM in now: restoring onto it later is then a plain copy.
      engine.ram().fill(0);
      send({ t: "prepared" });
      return;
    }
    if (start.mode === "resume") {
      await this.restoreSavedFile(start.statePath);
      t = mark("restore", t);
      await engine.run();
      mark("resume", t);
      // The guest's clock stood still while the state was saved (its TSC was restored as saved).
      agent.setTime(Date.now(), 5_000).catch(() => undefined);
    } else if (init.start.mode === "restore" && state !== undefined) {
      checkCompatible(
        state.header,
        { engine: ENGINE_VERSION, memoryMiB: init.memoryMiB, vgaMemoryKiB: init.vgaMemoryKiB, nic: init.nic, disk: init.disk !== undefined },
        init.start.statePath,
      );
      const p = state.payload;
      await engine.restoreState(p.buffer.slice(p.byteOffset, p.byteOffset + p.byteLength) as ArrayBuffer);
      t = mark("restore", t);
      await engine.run();
      await agent.waitReady(10_000);
      t = mark("agent", t);
      await agent.setTime(Date.now(), 5_000);
      try {
        await agent.ident(init.start.identity, 20_000);
        await this.applyMtu(agent);
      } catch (err) {
        throw new HopError("VM_IDENTITY_FAILED", `applying the VM's identity failed: ${(err as Error).message}`, { cause: err });
      }
      mark("identity", t);
    } else {
      const readySeen = new Promise<void>((resolve) => (this.readyMarkerSeen = resolve));
      await engine.run();
      await withTimeout(readySeen, 120_000, "the guest did not print its ready line within 120 s");
      t = mark("boot", t);
      await agent.waitReady(10_000);
      // The first command after boot can be lost while the guest's serial line settles:
      // a throw-away command makes sure the agent channel is in sync before we report ready.
      await agent.exec("true", 2_000).catch(() => agent.exec("true", 5_000));
      await this.applyMtu(agent);
      mark("agent", t);
    }
    send({ t: "ready", startMs: Math.round(monotonicMs() - t0), phases });
    send({ t: "state", state: "running" });
  }

  /** A frame for the guest's NIC from the host agent's switch port. */
  frameFromAgent(data: Uint8Array): void {
    this.nic?.fromAgent(data);
  }

  /** Sets the guest's MTU (room for the VXLAN overlay's 50 bytes) through the guest agent. */
  private async applyMtu(agent: GuestAgentClient): Promise<void> {
    const mtu = this.init.net?.mtu;
    if (mtu === undefined) return;
    const r = await agent.exec(`ip link set eth0 mtu ${Math.floor(mtu)}`, 10_000);
    if (r.exitCode !== 0) throw new HopError("VM_MTU_FAILED", `setting the guest's MTU to ${mtu} failed: ${r.stderr.trim() || `exit ${r.exitCode}`}`);
  }

  /** Restores this VM's own saved state (either RAM layout) into the engine, not yet running. */
  private async restoreSaved(state: { header: StateHeader; payload: Buffer }, source: string): Promise<void> {
    const engine = this.requireEngine();
    this.checkSaved(state.header, source);
    const p = state.payload;
    if (state.header.ram === "pages") await engine.restoreStateKeepingRam(toArrayBuffer(decodeRamPagesPayload(p, engine.ram(), source)), savedClock(state.header));
    else await engine.restoreState(toArrayBuffer(p), savedClock(state.header));
  }

  /**
   * Reads and restores this VM's own state file. A "pages" file streams straight into the
   * engine's RAM (which must still be zero, as in a fresh engine): no copy of the file in memory.
   */
  private async restoreSavedFile(path: string): Promise<void> {
    const engine = this.requireEngine();
    const streamed = await readStateFileIntoRam(path, engine.ram(), (header) => this.checkSaved(header, path));
    if (streamed === undefined) await this.restoreSaved(await readStateFile(path), path);
    else await engine.restoreStateKeepingRam(toArrayBuffer(streamed.state), savedClock(streamed.header));
  }

  private requireEngine(): Engine {
    const engine = this.engine;
    if (engine === undefined) throw new HopError("VM_NOT_READY", "the VM has no engine yet", { status: 409 });
    return engine;
  }

  private checkSaved(header: StateHeader, source: string): void {
    const init = this.init;
    checkCompatible(header, { engine: ENGINE_VERSION, memoryMiB: init.memoryMiB, vgaMemoryKiB: init.vgaMemoryKiB, nic: init.nic, disk: init.disk !== undefined }, source);
  }

  async handle(req: VmOp): Promise<unknown> {
    const engine = this.engine;
    const agent = this.agent;
    if (engine === undefined || agent === undefined) throw new HopError("VM_NOT_READY", "the VM is still starting", { status: 409 });
    switch (req.op) {
      case "pause":
        await engine.pause();
        send({ t: "state", state: "paused" });
        return undefined;
      case "resume":
        if (this.migratedAway) throw new HopError("VM_MIGRATED", "this copy of the VM was migrated away and must not run", { status: 409 });
        if (this.nic !== undefined) this.nic.bouncing = false;
        await engine.run();
        send({ t: "state", state: "running" });
        return undefined;
      case "exec":
        if (!engine.running) throw new HopError("VM_PAUSED", "the VM is paused: its guest agent cannot run commands", { status: 409 });
        return agent.exec(req.command, req.timeoutMs);
      case "shutdown":
        if (!engine.running) throw new HopError("VM_PAUSED", "the VM is paused: resume it or power it off", { status: 409 });
        await agent.shutdown(req.timeoutMs);
        return undefined;
      case "poweroff":
        setImmediate(() => void this.exit("powered off by the host"));
        return undefined;
      case "migrateOut": {
        if (this.outgoing !== undefined || this.migratedAway) throw new HopError("MIGRATION_BUSY", "a migration of this VM is already under way or done", { status: 409 });
        if (!engine.running) throw new HopError("VM_NOT_RUNNING", "live migration needs a running VM", { status: 409 });
        const source = new LiveMigrationSource(
          engine,
          { migrationId: req.migrationId, vmName: this.init.name, from: req.from, to: req.to, address: req.address, token: req.token, engineVersion: ENGINE_VERSION, config: req.config, options: req.options },
          {
            progress: (progress) => {
              // The guest stops now: the agent holds its port from this message on, and frames
              // already on their way here go back to it (they must reach the VM where it resumes).
              if (progress.phase === "stop-and-copy" && this.nic !== undefined) this.nic.bouncing = true;
              send({ t: "migration", progress });
            },
            beforeFinalCopy: () => this.disk?.flush(),
          },
        );
        this.outgoing = { id: req.migrationId, source };
        try {
          const out = await source.run();
          if (out.kind === "done") {
            this.migratedAway = true;
            normalAfterMoveOut ??= lowerPriority(MOVED_AWAY_NICE);
            return { ok: true, report: out.report } satisfies MigrateOutResult;
          }
          if (out.sourceMayResume && this.nic !== undefined) this.nic.bouncing = false;
          if (out.sourceMayResume) send({ t: "state", state: engine.running ? "running" : "paused" });
          return { ok: false, error: { code: out.error.code, message: out.error.message }, sourceMayResume: out.sourceMayResume } satisfies MigrateOutResult;
        } finally {
          this.outgoing = undefined;
        }
      }
      case "migrateCancel": {
        const out = this.outgoing;
        if (out === undefined || out.id !== req.migrationId) throw new HopError("MIGRATION_NOT_FOUND", `no migration ${req.migrationId} is running out of this VM`, { status: 404 });
        return { cancelled: out.source.cancel(req.reason) };
      }
      case "resumeFrom": {
        if (this.init.start.mode !== "awaitState" || this.restoredFrom !== undefined) throw new HopError("VM_NOT_WAITING", "this VM process is not waiting for a saved state", { status: 409 });
        this.restoredFrom = req.statePath;
        const t0 = monotonicMs();
        // Read and restored in one go: the file's pages stream into RAM as they are read.
        await this.restoreSavedFile(req.statePath);
        const restored = monotonicMs();
        await engine.run();
        agent.setTime(Date.now(), 5_000).catch(() => undefined);
        const phases = { restore: roundMs(restored - t0, 1) };
        send({ t: "ready", startMs: Math.round(monotonicMs() - t0), phases });
        send({ t: "state", state: "running" });
        return { phases };
      }
      case "fence": {
        const inc = this.incoming;
        if (inc === undefined || inc.id !== req.migrationId) throw new HopError("MIGRATION_NOT_FOUND", `no incoming migration ${req.migrationId} in this VM process`, { status: 404 });
        return { outcome: await inc.target.fence() };
      }
      case "nicFence":
        return undefined;
      case "consoleWrite":
        engine.serialWrite(0, req.data);
        return undefined;
      case "stats": {
        const usage = process.cpuUsage();
        const mem = process.memoryUsage();
        return { instructions: engine.instructionCount(), rssBytes: mem.rss, heapUsedBytes: mem.heapUsed, cpuUserUs: usage.user, cpuSystemUs: usage.system, ...(this.nic !== undefined ? { nicDropped: this.nic.dropped } : {}) };
      }
      case "saveState": {
        const wasRunning = engine.running;
        if (wasRunning) await engine.pause();
        try {
          this.disk?.flush();
          const header = { ...req.header, engine: ENGINE_VERSION, createdAt: new Date().toISOString(), savedAtMs: Date.now(), ...(req.header.kind !== "template" ? { engineClockMs: engine.clockMs() } : {}) };
          const options = { durable: req.durable !== false };
          if (req.ramPages === true) {
            const parts = encodeRamPagesPayload(new Uint8Array(await engine.saveStateWithoutRam()), engine.ram());
            await writeStateFile(req.path, { ...header, ram: "pages" }, parts, options);
            return { bytes: parts.reduce((n, b) => n + b.length, 0) };
          }
          const state = await engine.saveState();
          await writeStateFile(req.path, header, new Uint8Array(state), options);
          return { bytes: state.byteLength };
        } finally {
          if (wasRunning) await engine.run();
        }
      }
    }
  }

  private onConsoleByte(byte: number): void {
    this.consoleBuf.push(byte);
    if (this.consoleBuf.length >= CONSOLE_FLUSH_BYTES || (byte === 0x0a && monotonicMs() - this.consoleFlushedAt >= CONSOLE_LINE_FLUSH_MIN_MS)) this.flushConsole();
    else if (!this.consoleFlushScheduled) {
      this.consoleFlushScheduled = true;
      setImmediate(() => this.flushConsole());
    }
    this.consoleLines.push(byte);
  }

  private onConsoleLine(line: string): void {
    if (this.readyMarkerSeen !== undefined && line.includes(READY_MARKER)) {
      this.readyMarkerSeen();
      this.readyMarkerSeen = undefined;
    }
    if (POWER_DOWN_MARKERS.some((m) => line.includes(m))) {
      setTimeout(() => void this.exit(line.includes("Restarting") ? "guest rebooted (reboot is treated as power-off)" : "guest powered off"), 20);
    }
  }

  private flushConsole(): void {
    this.consoleFlushScheduled = false;
    if (this.consoleBuf.length === 0) return;
    const data = Buffer.from(this.consoleBuf);
    this.consoleBuf = [];
    this.consoleFlushedAt = monotonicMs();
    send({ t: "console", data });
  }

  fatal(err: unknown): void {
    const e = err instanceof HopError ? err : new HopError("VM_PROCESS_FAILED", (err as Error)?.message ?? String(err));
    send({ t: "fatal", error: { code: e.code, message: e.message } });
    void this.exit(`fatal: ${e.message}`, 1);
  }

  /**
   * Whether the process may drop this VM and take another: the VM was migrated away live (it
   * must never run again), or it is paused (a quick migration's source, after its state was
   * saved and the target runs it: the host agent asks only then).
   */
  get recyclable(): boolean {
    return this.outgoing === undefined && !this.exiting && (this.migratedAway || (this.engine !== undefined && !this.engine.running));
  }

  /**
   * Drops the VM (engine, disk, guest agent), leaving the process to take another VmInit, for
   * a copy that moved away (see RecycleOp, recyclable). False when it may not (it is not such a
   * copy, or its disk did not close cleanly: the process then exits as before).
   */
  async recycle(): Promise<boolean> {
    if (!this.recyclable) return false;
    this.exiting = true;
    return await this.dropVm("migrated away");
  }

  /** Flushes the console and lets go of the engine and the disk; false if the disk did not close cleanly. */
  private async dropVm(reason: string): Promise<boolean> {
    this.flushConsole();
    this.agent?.failAll(`VM stopped: ${reason}`);
    try {
      await this.engine?.destroy();
    } catch {
      // the VM is going away; the disk flush below is what matters
    }
    this.engine = undefined;
    this.agent = undefined;
    this.nic = undefined;
    try {
      this.disk?.close();
    } catch (err) {
      send({ t: "fatal", error: { code: "DISK_FLUSH_FAILED", message: (err as Error).message } });
      return false;
    } finally {
      this.disk = undefined;
    }
    return true;
  }

  async exit(reason: string, code = 0): Promise<void> {
    if (this.exiting) return;
    this.exiting = true;
    if (!(await this.dropVm(reason))) code = 1;
    send({ t: "stopped", reason });
    process.exitCode = code;
    // Give the IPC channel a moment to deliver the last messages, then leave.
    setTimeout(() => process.exit(code), 50);
  }
}


async function withTimeout<T>(p: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new HopError("VM_START_TIMEOUT", message, { status: 504 })), ms);
      }),
    ]);
  } finally {
    if (timer !== undefined) clearTimeout(timer);
  }
}

function errorPayload(err: unknown): { code: string; message: string } {
  if (err instanceof HopError) return { code: err.code, message: err.message };
  return { code: "VM_PROCESS_ERROR", message: (err as Error)?.message ?? String(err) };
}

/**
 * A VM process runs at most this many VMs one after the other (see RecycleOp): each leaves a
 * little behind in V8's heap and code space, and a fresh process now and then bounds that.
 */
const MAX_LIFETIMES = 8;
/**
 * A process that gave its VM up collects that VM's memory (its engine's ~300 MiB of wasm
 * memory) this long after, or at once when a VM or a warm-up comes first. Right after a move
 * out, the VM has just resumed in another process, maybe on these very CPUs, and the agents
 * finish the switchover: a full collection then (12-30 ms of CPU, and V8's GC thread beside it)
 * took the CPU from them, and the guest's first heartbeats after the move came up to ~20 ms late.
 */
const RECYCLE_GC_DELAY_MS = 1_500;

/** Entry point when this module runs as a forked VM process. */
export function runVmProcess(): void {
  let vm: VmProcess | undefined;
  let warming: Warming | undefined;
  let lifetimes = 0;
  let collectTimer: NodeJS.Timeout | undefined;
  /** Collects a dropped VM's memory now, if that is still to be done. */
  const collectDropped = (): void => {
    if (collectTimer === undefined) return;
    clearTimeout(collectTimer);
    collectTimer = undefined;
    (globalThis as { gc?: () => void }).gc?.();
  };
  const recycle = async (current: VmProcess | undefined): Promise<RecycleResult> => {
    const recycled = current !== undefined && lifetimes < MAX_LIFETIMES && (await current.recycle());
    if (recycled) {
      vm = undefined;
      // The VM's memory goes at a collection of its own (without V8's memory reducer, nothing
      // else might collect it for a long while), a little later: see RECYCLE_GC_DELAY_MS.
      collectTimer = setTimeout(collectDropped, RECYCLE_GC_DELAY_MS);
    }
    return { recycled, rssMiB: Math.round(process.memoryUsage().rss / (1024 * 1024)), lifetimes };
  };
  process.on("message", (raw, handle) => {
    const msg = raw as ParentMessage;
    if (msg.t === "warm") {
      if (vm === undefined && warming === undefined) {
        collectDropped();
        warming = startWarmup(msg.spec, reportWarmed, { lowPriority: true });
      }
      return;
    }
    if (msg.t === "socket") {
      const socket = handle as Socket | undefined;
      if (vm !== undefined) vm.acceptSocket(msg, socket);
      else socket?.destroy();
      return;
    }
    if (msg.t === "frame") {
      vm?.frameFromAgent(msg.data);
      return;
    }
    if (msg.t === "init") {
      if (vm !== undefined) return;
      collectDropped();
      // (Before the new VM's start() may lower the priority again, remembering it as normal.)
      normalAfterMoveOut?.();
      normalAfterMoveOut = undefined;
      lifetimes++;
      const instance = new VmProcess(msg, warming, lifetimes > 1);
      warming = undefined;
      vm = instance;
      instance.start().then(
        // What starting left behind (a saved state read and copied: ~50 MB for a 128 MiB guest,
        // unreachable only now that start() has returned) is collected at once: without V8's
        // memory reducer, and with a heap that hardly grows, nothing else might for a long while.
        // Not for a VM arriving live: its start() returns once it is ready for round 0, having
        // read nothing, and a full collection (15-50 ms) then took the CPU from the guest still
        // running at the source.
        () => {
          if (msg.start.mode !== "incoming") setImmediate(() => (globalThis as { gc?: () => void }).gc?.());
        },
        (err: unknown) => instance.fatal(err),
      );
      return;
    }
    const current = vm;
    if (msg.op === "recycle") {
      recycle(current).then(
        (result) => send({ t: "res", id: msg.id, ok: true, result }),
        (err: unknown) => send({ t: "res", id: msg.id, ok: false, error: errorPayload(err) }),
      );
      return;
    }
    if (current === undefined) {
      send({ t: "res", id: msg.id, ok: false, error: { code: "VM_NOT_READY", message: "VM process has no VM yet" } });
      return;
    }
    current.handle(msg).then(
      (result) => send({ t: "res", id: msg.id, ok: true, result }),
      (err: unknown) => send({ t: "res", id: msg.id, ok: false, error: errorPayload(err) }),
    );
  });
  // The host agent is our lifeline: if it goes away, this VM must not run on unsupervised.
  process.on("disconnect", () => {
    if (vm !== undefined) void vm.exit("host agent disconnected");
    else process.exit(0);
  });
  process.on("uncaughtException", (err) => {
    if (vm !== undefined) vm.fatal(err);
    else process.exit(1);
  });
}
