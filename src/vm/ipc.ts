/**
 * Messages between the host agent and a VM process (Node IPC, serialization "advanced" so
 * Buffers cross intact). Requests carry an id and get exactly one response.
 */
import type { NicModel } from "../engine/index.js";
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
  | { mode: "restore"; statePath: string; identity: GuestIdentity };

export interface VmInit {
  t: "init";
  name: string;
  memoryMiB: number;
  vgaMemoryKiB: number;
  nic: NicModel;
  image: ImagePaths;
  disk?: string;
  start: VmStart;
}

export type VmOp =
  | { op: "pause" }
  | { op: "resume" }
  | { op: "exec"; command: string; timeoutMs: number }
  | { op: "shutdown"; timeoutMs: number }
  | { op: "poweroff" }
  | { op: "saveState"; path: string; header: Omit<StateHeader, "savedAtMs" | "createdAt" | "engine"> }
  | { op: "consoleWrite"; data: Buffer }
  | { op: "stats" };

export type ParentMessage = VmInit | ({ t: "req"; id: number } & VmOp);

export interface VmStats {
  instructions: number;
  rssBytes: number;
  heapUsedBytes: number;
  cpuUserUs: number;
  cpuSystemUs: number;
}

export type ChildMessage =
  | { t: "res"; id: number; ok: true; result?: unknown }
  | { t: "res"; id: number; ok: false; error: { code: string; message: string } }
  | { t: "ready"; startMs: number; phases: Record<string, number> }
  | { t: "console"; data: Buffer }
  | { t: "state"; state: "running" | "paused" }
  | { t: "stopped"; reason: string }
  | { t: "fatal"; error: { code: string; message: string } };
