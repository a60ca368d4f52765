import type { VmConfig, VmCreateRequest } from "../vm/config.js";
import type { VmState } from "../vm/lifecycle.js";
import type { MigrationProgress, MigrationReport } from "../migration/index.js";
import type { IncomingOutcome, IncomingRequest, IncomingTicket, MigrateRequest } from "./migration.js";
import type { AdoptRequest } from "../cluster/protocol.js";

/** What the host agent reports about one VM. */
export interface VmInfo {
  name: string;
  uuid: string;
  state: VmState;
  config: VmConfig;
  /** pid of the VM process while it runs. */
  pid?: number;
  /** Last error (crash reason, failed start) if any. */
  lastError?: string;
  /** Milliseconds from start request to guest ready, for the last start. */
  startMs?: number;
  /** How the last start happened. */
  startedFrom?: "template" | "cold" | "suspended";
}

export interface ExecResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** Events a host agent emits (streamed to WebSocket clients). */
export type HostEvent =
  | { type: "vm.state"; vm: string; state: VmState; at: string; reason?: string }
  | { type: "vm.created"; vm: string; at: string }
  | { type: "vm.destroyed"; vm: string; at: string }
  | { type: "vm.crashed"; vm: string; at: string; reason: string }
  /** The VM left this host (live, quick or cold migration done): it runs, or is defined, on `to` now. */
  | { type: "vm.migrated"; vm: string; at: string; to: string; migrationId: string }
  | { type: "migration.progress"; vm: string; at: string; progress: MigrationProgress }
  | { type: "migration.done"; vm: string; at: string; report: MigrationReport }
  | { type: "migration.failed"; vm: string; at: string; migrationId: string; code: string; message: string }
  /** HA restart: this host took the VM over from `from` on the shared datastore; `generation` is the VM's new generation. */
  | { type: "vm.adopted"; vm: string; at: string; from: string; generation: number }
  /** This host forgot the VM (its files are untouched): another host or a newer generation owns it. */
  | { type: "vm.released"; vm: string; at: string; reason: string }
  /** The VM's process was killed because this host lost its lease (self-fencing); the VM is stopped. */
  | { type: "vm.fenced"; vm: string; at: string; reason: string }
  /** The host's lease from the cluster manager was lost, or renewed after a loss (about no VM: `vm` is absent, so `ev.vm` stays readable on every event). */
  | { type: "host.lease"; vm?: undefined; at: string; state: "renewed-after-loss" | "lost" };

/** Console output of one VM: live bytes plus a bounded scrollback. */
export interface ConsoleStream {
  /** Everything kept in the scrollback (bounded, newest at the end). */
  scrollback(): Buffer;
  /** Subscribe to new output; returns an unsubscribe function. */
  subscribe(fn: (chunk: Buffer) => void): () => void;
}

/** The host agent's VM supervisor, as the HTTP API sees it. Every method throws HopError subclasses with a `status`. */
export interface Supervisor {
  readonly hostName: string;
  list(): VmInfo[];
  /** Throws VM_NOT_FOUND (404). */
  get(name: string): VmInfo;
  /** Define a VM (and create its data disk). Throws VM_EXISTS (409), validation errors (400). */
  create(req: VmCreateRequest): Promise<VmInfo>;
  start(name: string): Promise<VmInfo>;
  pause(name: string): Promise<VmInfo>;
  resume(name: string): Promise<VmInfo>;
  /** Graceful shutdown through the guest agent, hard power-off after `timeoutMs`. */
  shutdown(name: string, opts?: { timeoutMs?: number }): Promise<VmInfo>;
  /** Hard power-off. */
  poweroff(name: string): Promise<VmInfo>;
  /** Remove the VM definition (must be off unless force). Data disk is kept unless deleteDisk. */
  destroy(name: string, opts?: { force?: boolean; deleteDisk?: boolean }): Promise<void>;
  exec(name: string, command: string, opts?: { timeoutMs?: number }): Promise<ExecResult>;
  /** Send bytes to the serial console. */
  consoleWrite(name: string, data: Buffer): void;
  console(name: string): ConsoleStream;
  onEvent(fn: (ev: HostEvent) => void): () => void;
  /** Stop every VM (gracefully, then hard) and release resources. */
  close(): Promise<void>;
}

/** Migration and suspend operations of a host agent (implemented by LocalSupervisor). */
export interface MigrationService {
  suspend(name: string): Promise<VmInfo>;
  migrate(name: string, body: MigrateRequest): Promise<MigrationReport>;
  cancelMigration(migrationId: string): Promise<{ cancelled: boolean }>;
  migrationsInProgress(): { migrationId: string; vm: string }[];
  prepareIncoming(body: IncomingRequest): Promise<IncomingTicket>;
  commitIncoming(migrationId: string, body: { statePath?: unknown }): Promise<IncomingTicket>;
  abortIncoming(migrationId: string): Promise<void>;
  fenceIncoming(migrationId: string): Promise<IncomingOutcome>;
  /** HA restart: take over a VM of a failed host from the shared datastore (body: AdoptRequest, validated by the service). */
  adopt?(name: string, body: AdoptRequest): Promise<VmInfo>;
}
