import { fork, type ChildProcess } from "node:child_process";
import { EventEmitter } from "node:events";
import { fileURLToPath } from "node:url";
import { HopError } from "../common/errors.js";
import { VM_PROCESS_EXEC_ARGV } from "../vm/flags.js";
import type { ChildMessage, RecycleOp, VmInit, VmOp } from "../vm/ipc.js";

const vmMain = fileURLToPath(new URL("../vm/main.js", import.meta.url));

export class VmProcessError extends HopError {}

/** Forks an idle VM process; it loads the engine and waits for its VmInit. */
export function forkVmProcess(): ChildProcess {
  return fork(vmMain, [], { execArgv: [...VM_PROCESS_EXEC_ARGV], serialization: "advanced", stdio: ["ignore", "inherit", "inherit", "ipc"] });
}

/** Frames sent to a VM process and not yet written to its IPC channel; beyond it frames are dropped. */
export const MAX_FRAMES_IN_FLIGHT = 512;

interface PendingReq {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

/**
 * The host agent's handle on one VM process: fork, request/response over IPC, and the
 * process's events ("ready", "console", "state", "stopped", "exit").
 */
export class VmProcessHandle extends EventEmitter {
  readonly child: ChildProcess;
  private nextId = 1;
  private readonly pending = new Map<number, PendingReq>();
  exited = false;
  stopReason: string | undefined;
  fatalError: { code: string; message: string } | undefined;
  /** Frames from the VM's NIC (`bounced`: a frame for the VM that it handed back at a live migration's switchover). */
  onFrame: ((frame: Buffer, bounced: boolean) => void) | undefined;
  /** Frames for the VM dropped because its IPC channel was backed up. */
  framesDropped = 0;
  private framesInFlight = 0;
  private readonly onFrameSent = (): void => {
    this.framesInFlight--;
  };
  private readonly exitPromise: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  /**
   * Starts a VM in `child` (a process from forkVmProcess(), possibly forked ahead of time so
   * that Node's start-up and module loading are off the VM's start path) or in a new one.
   */
  constructor(init: VmInit, child?: ChildProcess) {
    super();
    this.child = child !== undefined && child.exitCode === null && child.signalCode === null && child.connected ? child : forkVmProcess();
    this.exitPromise = new Promise((resolve) => {
      this.onExit = (code, signal) => {
        this.exited = true;
        for (const [, p] of this.pending) {
          clearTimeout(p.timer);
          p.reject(new VmProcessError("VM_PROCESS_EXITED", `VM process exited (${signal ?? `code ${String(code)}`})`, { status: 409 }));
        }
        this.pending.clear();
        resolve({ code, signal });
        this.emit("exit", code, signal);
      };
      this.child.once("exit", this.onExit);
    });
    this.child.on("error", this.onError);
    this.child.on("message", this.onRaw);
    this.child.send(init);
  }

  private onExit: (code: number | null, signal: NodeJS.Signals | null) => void = () => undefined;
  private readonly onError = (err: Error): void => {
    this.emit("procError", err);
  };
  private readonly onRaw = (raw: unknown): void => {
    this.onMessage(raw as ChildMessage);
  };

  /**
   * Lets go of the process (after a recycle: it is a spare again, see RecycleOp) and returns it.
   * For everything that holds this handle (the VM's switch port, its record) the VM's process
   * ended cleanly: "exit" is emitted with code 0.
   */
  detach(): ChildProcess {
    this.child.off("error", this.onError);
    this.child.off("message", this.onRaw);
    this.child.off("exit", this.onExit);
    if (!this.exited) this.onExit(0, null);
    return this.child;
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  request<T = unknown>(op: VmOp | RecycleOp, timeoutMs = 30_000): Promise<T> {
    if (this.exited) return Promise.reject(new VmProcessError("VM_PROCESS_EXITED", "VM process is not running", { status: 409 }));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new VmProcessError("VM_PROCESS_TIMEOUT", `VM process did not answer ${op.op} within ${timeoutMs} ms`, { status: 504 }));
      }, timeoutMs);
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, timer });
      this.child.send({ t: "req", id, ...op });
    });
  }

  /**
   * Sends an Ethernet frame to the VM's NIC. Returns false (and counts it) when the frame is
   * dropped: the process is gone, or its IPC channel is backed up.
   */
  sendFrame(frame: Uint8Array): boolean {
    if (this.exited || !this.child.connected || this.framesInFlight >= MAX_FRAMES_IN_FLIGHT) {
      this.framesDropped++;
      return false;
    }
    this.framesInFlight++;
    try {
      this.child.send({ t: "frame", data: frame }, undefined, undefined, this.onFrameSent);
    } catch {
      this.framesInFlight--;
      this.framesDropped++;
      return false;
    }
    return true;
  }

  /** Resolves when the process has exited. */
  waitExit(timeoutMs?: number): Promise<boolean> {
    if (timeoutMs === undefined) return this.exitPromise.then(() => true);
    return Promise.race([this.exitPromise.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), timeoutMs).unref())]);
  }

  kill(): void {
    if (!this.exited) this.child.kill("SIGKILL");
  }

  private onMessage(msg: ChildMessage): void {
    switch (msg.t) {
      case "res": {
        const p = this.pending.get(msg.id);
        if (p === undefined) return;
        this.pending.delete(msg.id);
        clearTimeout(p.timer);
        if (msg.ok) p.resolve(msg.result);
        else p.reject(new VmProcessError(msg.error.code, msg.error.message, { status: statusFor(msg.error.code) }));
        return;
      }
      case "stopped":
        this.stopReason = msg.reason;
        this.emit("stopped", msg.reason);
        return;
      case "fatal":
        this.fatalError = msg.error;
        this.emit("fatal", msg.error);
        return;
      case "console":
        this.emit("console", Buffer.from(msg.data));
        return;
      case "ready":
        this.emit("ready", msg);
        return;
      case "state":
        this.emit("guestState", msg.state);
        return;
      case "migration":
        this.emit("migration", msg);
        return;
      case "prepared":
        this.emit("prepared");
        return;
      case "migratedIn":
        this.emit("migratedIn", msg);
        return;
      case "migrationAborted":
        this.emit("migrationAborted", msg);
        return;
      case "warmed":
        this.emit("warmed", msg);
        return;
      case "frame":
        this.onFrame?.(Buffer.isBuffer(msg.data) ? msg.data : Buffer.from(msg.data.buffer, msg.data.byteOffset, msg.data.byteLength), msg.bounced === true);
        return;
    }
  }
}

function statusFor(code: string): number {
  if (code === "AGENT_TIMEOUT" || code === "VM_PROCESS_TIMEOUT") return 504;
  if (code === "VM_PAUSED" || code === "VM_NOT_READY") return 409;
  if (code.startsWith("AGENT_")) return 502;
  return 500;
}
