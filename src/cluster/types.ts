/**
 * The cluster manager's inventory model: what it keeps about hosts, VMs, tasks and events.
 * These are the rows of the InventoryStore (store/store.ts) and the bodies of the manager's API.
 */
import type { VmConfig } from "../vm/config.js";
import type { VmState } from "../vm/lifecycle.js";

/** Whether the manager hears from a host. */
export type HostConnection =
  /** Heartbeats arrive. */
  | "connected"
  /** Heartbeats are late (more than two intervals), not yet past the HA grace period. */
  | "disconnected"
  /** Past the grace period: its lease has expired, its VMs are fenced and HA restarts them elsewhere. */
  | "down";

/** Maintenance mode of a host (vCenter's "enter maintenance mode"). */
export type HostMaintenance = "none" | "entering" | "in";

export interface HostCapacity {
  cpus: number;
  /** Memory the host offers to VMs (admission control never places beyond it). */
  memoryMiB: number;
}

export interface HostLoad {
  /** CPU used by the host's VM processes, percent of one core (200 = two cores busy). */
  cpuPct: number;
  /** Memory of the VMs placed on the host (configured size of running VMs). */
  memUsedMiB: number;
  /** Resident memory of the VM processes. */
  rssMiB: number;
  vmCount: number;
}

export interface HostRow {
  name: string;
  /** The host agent's API URL. */
  url: string;
  /** Where the host accepts migration connections. */
  migrationAddress?: { host: string; port: number };
  /** The host's VXLAN endpoint "address:port". */
  vtep?: string;
  datastoreId: string;
  version: string;
  capacity: HostCapacity;
  load?: HostLoad;
  connection: HostConnection;
  maintenance: HostMaintenance;
  joinedAt: string;
  lastHeartbeatAt?: string;
}

export type PowerIntent = "running" | "stopped" | "suspended";

export interface VmRow {
  name: string;
  uuid: string;
  /** The host that owns the VM. */
  host: string;
  /** Bumped on every change of owner (migration, HA restart): a stale owner is recognised by it. */
  generation: number;
  /** What the operator asked for: HA restarts VMs whose intent is "running". */
  desiredPower: PowerIntent;
  /** Last state the owner reported ("unknown" while the owner is not heard from). */
  state: VmState | "unknown";
  config: VmConfig;
  /** CPU of the VM process, percent of one core (from the last heartbeat). */
  cpuPct?: number;
  rssMiB?: number;
  updatedAt: string;
}

export type TaskKind =
  | "vm.create"
  | "vm.start"
  | "vm.stop"
  | "vm.poweroff"
  | "vm.suspend"
  | "vm.migrate"
  | "vm.destroy"
  | "host.maintenance.enter"
  | "host.maintenance.exit"
  | "ha.restart"
  | "drs.apply";

export type TaskState = "queued" | "running" | "succeeded" | "failed" | "cancelled";

export interface TaskError {
  code: string;
  message: string;
  /** The HTTP status the failure maps to (absent: 500). */
  status?: number;
}

export interface TaskRow {
  id: string;
  kind: TaskKind;
  /** What the task acts on. */
  vm?: string;
  host?: string;
  state: TaskState;
  /** 0..1 */
  progress: number;
  /** Human-readable current step ("round 3: 12.5 MiB dirty"). */
  message?: string;
  /** The request that made the task (enough to run or resume it). */
  params: Record<string, unknown>;
  result?: unknown;
  error?: TaskError;
  /** The task that spawned this one (an evacuation's migrations). */
  parentId?: string;
  cancelRequested: boolean;
  createdAt: string;
  startedAt?: string;
  endedAt?: string;
}

export type EventSeverity = "info" | "warning" | "error";

export interface ClusterEvent {
  /** Increasing sequence number, assigned by the store. */
  id: number;
  /** "host.joined", "host.down", "vm.state", "vm.migrated", "migration.progress", "task.updated", "ha.restarted", ... */
  type: string;
  at: string;
  severity: EventSeverity;
  message: string;
  host?: string;
  vm?: string;
  taskId?: string;
  data?: unknown;
}

export interface NetworkRow {
  name: string;
  vni: number;
  subnet: string;
  gateway?: string;
}

export interface DatastoreRow {
  id: string;
  /** Hosts that have joined with this datastore. */
  hosts: string[];
}
