/**
 * Messages between the host agent and a VM process (Node IPC, serialization "advanced" so
 * Buffers cross intact). Requests carry an id and get exactly one response.
 */
import type { NicModel } from "../engine/index.js";
import type { LiveMigrationOptions, MigrationProgress, MigrationReport, ReceiverExpect, TargetSwitchoverInfo, VmMigrationConfig } from "../migration/index.js";
import type { StateHeader } from "../storage/index.js";

export interface GuestIdentity {
  hostname: string;
  mac: string;
  ip?: string;
  gw?: string;
  mountDisk: boolean;
}

export interface ImagePaths {
  hash: string;
  bzimage: string;
  initrd: string;
  bios: string;
  vgabios: string;
}

export type VmStart =
  | { mode: "boot"; cmdline: string }
  /** A template state: restore, then give the guest its own identity. */
  | { mode: "restore"; statePath: string; identity: GuestIdentity }
  /** This VM's own saved state (quick migration, resume from suspend): restore, set the clock, run. */
  | { mode: "resume"; statePath: string }
  /** A quick migration into this process: create the engine now, restore when told (op resumeFrom). */
  | { mode: "awaitState" }
  /** A live migration into this process: the engine waits, paused, for the connection (sent with a "socket" message). */
  | {
      mode: "incoming";
      migrationId: string;
      token: string;
      expect: ReceiverExpect;
      verifyRam: boolean;
      /**
       * Prepare and take in round 0 at a lower priority, so that running guests keep their CPU
       * (a lone move into the host); not while other moves come in (an evacuation: the CPU is
       * theirs then, and lowering it only slowed the evacuation down).
       */
      yieldCpu?: boolean;
    };

/** The VM's NIC is a port of the host agent's virtual switch: frames cross the IPC channel. */
export interface VmNetInit {
  /** Guest MTU to set once the guest runs (boot and template restore; a saved state keeps its own). */
  mtu?: number;
}

/** A template state to run a throw-away guest from, so that the process's engine code is compiled (see warmup.ts). */
export interface WarmupSpec {
  statePath: string;
  bios: string;
  vgabios: string;
}

/** To a spare VM process: warm the engine code while waiting for a VmInit. */
export interface WarmMessage {
  t: "warm";
  spec: WarmupSpec;
}

export interface VmInit {
  t: "init";
  name: string;
  memoryMiB: number;
  vgaMemoryKiB: number;
  nic: NicModel;
  image: ImagePaths;
  disk?: string;
  start: VmStart;
  /** Absent: the NIC is connected to nothing (no frames cross the IPC channel). */
  net?: VmNetInit;
  /** For a process that was not warmed ahead (see WarmMessage): warm it before taking an incoming VM. */
  warmup?: WarmupSpec;
}

export type VmOp =
  | { op: "pause" }
  | { op: "resume" }
  | { op: "exec"; command: string; timeoutMs: number }
  | { op: "shutdown"; timeoutMs: number }
  | { op: "poweroff" }
  /** `pages`: RAM as bitmap + non-zero pages written straight from the paused guest (faster than the engine's own). */
  | { op: "saveState"; path: string; header: Omit<StateHeader, "savedAtMs" | "createdAt" | "engine" | "ram">; ramPages?: boolean; durable?: boolean }
  | { op: "consoleWrite"; data: Buffer }
  | { op: "stats" }
  | { op: "migrateOut"; migrationId: string; from: string; to: string; address: { host: string; port: number }; token: string; config: VmMigrationConfig; options: LiveMigrationOptions }
  | { op: "migrateCancel"; migrationId: string; reason: string }
  | { op: "fence"; migrationId: string }
  /** Mode awaitState: restore this VM's saved state (file on the datastore) and run it. */
  | { op: "resumeFrom"; statePath: string }
  /**
   * Answered once every frame the agent sent before it is dealt with (delivered to the guest or
   * bounced back): the agent's switch knows then that no bounced frame is still on its way.
   */
  | { op: "nicFence" };

/**
 * Recycle: the VM process of a VM that moved to another host (live, or quick: paused, its state
 * saved and running there) drops it (engine, disk, guest agent) and waits for a VmInit again,
 * as a spare does; answered with RecycleResult. The host agent asks only once the VM runs on
 * the target.
 */
export interface RecycleOp {
  op: "recycle";
}

/** The answer to recycle: false (the process goes on as it was) when it may not be reused. */
export interface RecycleResult {
  recycled: boolean;
  /** Its resident memory once the VM is dropped (MiB), before the dropped VM is collected (RECYCLE_GC_DELAY_MS later). */
  rssMiB: number;
  /** The VMs this process has now run (this one included). */
  lifetimes: number;
}

/** The answer to migrateOut. */
export type MigrateOutResult =
  | { ok: true; report: MigrationReport }
  | { ok: false; error: { code: string; message: string }; sourceMayResume: boolean };

/** An accepted migration connection for an incoming VM (the socket travels as the message's handle). */
export interface SocketMessage {
  t: "socket";
  migrationId: string;
  /** Bytes the host agent already read from the socket (the HELLO frame). */
  head: Buffer;
}

/** An Ethernet frame for the guest's NIC (from the host agent's switch port). */
export interface FrameMessage {
  t: "frame";
  data: Uint8Array;
}

export type ParentMessage = VmInit | WarmMessage | SocketMessage | FrameMessage | ({ t: "req"; id: number } & (VmOp | RecycleOp));

export interface VmStats {
  instructions: number;
  rssBytes: number;
  heapUsedBytes: number;
  cpuUserUs: number;
  cpuSystemUs: number;
  /** Frames the guest sent that were dropped because the IPC channel to the agent was backed up. */
  nicDropped?: number;
}

export type ChildMessage =
  | { t: "res"; id: number; ok: true; result?: unknown }
  | { t: "res"; id: number; ok: false; error: { code: string; message: string } }
  | { t: "ready"; startMs: number; phases: Record<string, number> }
  | { t: "console"; data: Buffer }
  | { t: "state"; state: "running" | "paused" }
  | { t: "stopped"; reason: string }
  | { t: "migration"; progress: MigrationProgress }
  /** Mode awaitState: the engine exists and waits for resumeFrom. */
  | { t: "prepared" }
  /** An incoming live migration finished: the guest runs in this process now. */
  | { t: "migratedIn"; migrationId: string; info: TargetSwitchoverInfo }
  /** An incoming live migration ended without the guest running here (the process exits). */
  | { t: "migrationAborted"; migrationId: string; error: { code: string; message: string } }
  | { t: "fatal"; error: { code: string; message: string } }
  /** The engine code was warmed (or warming failed: the VM runs anyway, only its first milliseconds are slower). */
  | { t: "warmed"; ms: number; error?: string }
  /**
   * An Ethernet frame the guest sent; with `bounced`, a frame from the host agent that this VM
   * did not take because it stopped for a live migration's switchover (the agent re-switches it:
   * held, then forwarded to the VM's new host).
   */
  | { t: "frame"; data: Uint8Array; bounced?: true };
