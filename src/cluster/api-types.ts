/**
 * Request and response types of the manager's HTTP API (v1), shared by the server, the typed
 * ManagerClient (CLI, web client) and the OpenAPI document. All bodies are JSON; every request
 * carries `Authorization: Bearer <cluster token>`; errors are `{ error: { code, message } }`
 * with a 4xx/5xx status, as on host agents.
 *
 * Routes:
 *   GET    /v1/health                       -> ManagerHealth
 *   GET    /v1/openapi.json                 -> the OpenAPI 3.1 document
 *   GET    /v1/hosts                        -> { hosts: HostInfo[] }
 *   GET    /v1/hosts/:name                  -> HostInfo
 *   POST   /v1/hosts/:name/maintenance      MaintenanceRequest -> TaskRow (202; 200 when wait)
 *   DELETE /v1/hosts/:name                  -> 204 (only a host that is down and owns no VMs)
 *   POST   /v1/hosts/join                   (host agents) JoinRequest -> JoinResponse
 *   POST   /v1/hosts/:name/heartbeat        (host agents) HeartbeatRequest -> HeartbeatResponse
 *   GET    /v1/vms                          -> { vms: ClusterVm[] }
 *   POST   /v1/vms                          ClusterVmCreateRequest -> ClusterVm (201)
 *   GET    /v1/vms/:name                    -> ClusterVm
 *   POST   /v1/vms/:name/start              { host? } -> ClusterVm
 *   POST   /v1/vms/:name/shutdown           { timeoutMs? } -> ClusterVm   (graceful, then hard)
 *   POST   /v1/vms/:name/poweroff|pause|resume|suspend -> ClusterVm
 *   DELETE /v1/vms/:name?force=true&deleteDisk=true -> 204
 *   POST   /v1/vms/:name/exec               { command, timeoutMs? } -> ExecResult
 *   GET    /v1/vms/:name/console            WebSocket: serial console, follows the VM across migrations
 *   POST   /v1/vms/:name/migrate            ClusterMigrateRequest -> ClusterMigrateResult (wait) | TaskRow (202)
 *   GET    /v1/tasks?state=&kind=&vm=&host=&limit= -> { tasks: TaskRow[] }
 *   GET    /v1/tasks/:id                    -> TaskRow
 *   POST   /v1/tasks/:id/cancel             -> TaskRow
 *   GET    /v1/events?afterId=&type=&vm=&host=&taskId=&limit= -> { events: ClusterEvent[] }
 *   GET    /v1/events  (WebSocket upgrade)  -> one ClusterEvent per message, as they happen
 *          (plus stream-only events with id 0, not stored: `cluster.load` every 5 s at most
 *          while heartbeats update hosts' and VMs' load figures)
 *   GET    /v1/networks                     -> { networks: NetworkRow[] }
 *   GET    /v1/datastores                   -> { datastores: DatastoreRow[] }
 *   GET    /v1/drs/recommendations          -> DrsRecommendations (dry run: nothing moves)
 *   POST   /v1/drs/apply                    -> TaskRow (202; the task migrates the recommended VMs)
 *
 * Operations on VMs are tasks: each call above that changes a VM records a task (kind vm.*)
 * and, unless `wait: false` is given, answers when the task ends.
 */
import type { ExecResult } from "../host/types.js";
import type { MigrationReport } from "../migration/index.js";
import type { VmCreateRequest } from "../vm/config.js";
import type { ClusterEvent, DatastoreRow, HostRow, NetworkRow, TaskRow, VmRow } from "./types.js";

export type { ClusterEvent, DatastoreRow, ExecResult, HostRow, NetworkRow, TaskRow };

export interface ManagerHealth {
  ok: true;
  role: "manager";
  managerId: string;
  version: string;
  hosts: number;
  vms: number;
}

export interface HostInfo extends HostRow {
  /** Names of the VMs the host owns. */
  vms: string[];
  /** Memory reserved by the VMs placed on the host that are (or should be) running. */
  reservedMiB: number;
}

/** A VM as the manager knows it (VmRow without internals). */
export type ClusterVm = VmRow;

export type ClusterVmCreateRequest = VmCreateRequest & {
  /** Host to create it on; absent: the manager places it (connected, not in maintenance, most free memory). */
  host?: string;
  /** Start it at once (default false). */
  start?: boolean;
};

export interface MaintenanceRequest {
  enter: boolean;
  /** Answer when the task ends (default false: 202 with the task). */
  wait?: boolean;
}

export interface ClusterMigrateRequest {
  /** Target host; absent: the manager picks one. */
  to?: string;
  mode?: "live" | "quick" | "cold";
  downtimeTargetMs?: number;
  bandwidth?: number;
  lz4?: boolean;
  /** Answer with the report when done (default true); false: 202 with the task at once. */
  wait?: boolean;
}

export interface ClusterMigrateResult {
  taskId: string;
  report: MigrationReport;
}

export interface DrsMove {
  vm: string;
  from: string;
  to: string;
  /** Imbalance (max - min of the hosts' load scores, 0..1) before and after this move. */
  imbalanceBefore: number;
  imbalanceAfter: number;
  reason: string;
}

export interface DrsRecommendations {
  /** max - min of the hosts' load scores now. */
  imbalance: number;
  threshold: number;
  moves: DrsMove[];
}

export type { ClusterEvent as Event };
