/**
 * The manager API's HTTP routes as typed methods, with no transport: the Node client
 * (client.ts, node:http) and the web client (web/src/api.ts, fetch) both extend it, so a route
 * is described once. Browser-safe: type imports only.
 */
import type { DestroyOptions, ExecRequest, ShutdownRequest } from "../host/api.js";
import type {
  ClusterEvent,
  ClusterMigrateRequest,
  ClusterMigrateResult,
  ClusterVm,
  ClusterVmCreateRequest,
  DatastoreRow,
  DrsRecommendations,
  ExecResult,
  HostInfo,
  MaintenanceRequest,
  ManagerHealth,
  NetworkRow,
  TaskRow,
} from "./api-types.js";
import type { EventFilter, TaskFilter } from "./store/store.js";
import type { TaskState } from "./types.js";

/** Query of GET /v1/tasks: the store's filter, where the states may be a read-only list. */
export type TaskListFilter = Omit<TaskFilter, "state"> & { state?: TaskState | readonly TaskState[] };

/** Query of GET /v1/events: the store's filter. */
export type EventListFilter = EventFilter;

/** "?a=1&b=x" from the defined values of `q` ("" when none). */
export function queryString(q: Readonly<Record<string, string | number | boolean | undefined>>): string {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(q)) if (v !== undefined) params.set(k, String(v));
  const s = params.toString();
  return s === "" ? "" : `?${s}`;
}

function enc(name: string): string {
  return encodeURIComponent(name);
}

export abstract class ManagerApiBase {
  /** Sends one request; resolves with the parsed JSON answer (undefined for 204) or throws the API's error. */
  protected abstract call<T>(method: string, path: string, body?: unknown, timeoutMs?: number): Promise<T>;

  // --- the manager ---

  health(): Promise<ManagerHealth> {
    return this.call<ManagerHealth>("GET", "/v1/health");
  }

  /** The OpenAPI 3.1 document of this API. */
  openapi(): Promise<Record<string, unknown>> {
    return this.call<Record<string, unknown>>("GET", "/v1/openapi.json");
  }

  // --- hosts ---

  async hosts(): Promise<HostInfo[]> {
    return (await this.call<{ hosts: HostInfo[] }>("GET", "/v1/hosts")).hosts;
  }

  host(name: string): Promise<HostInfo> {
    return this.call<HostInfo>("GET", `/v1/hosts/${enc(name)}`);
  }

  /** Enters or exits maintenance mode; the task (ended when `wait`, else as queued/running). */
  maintenance(name: string, req: MaintenanceRequest): Promise<TaskRow> {
    return this.call<TaskRow>("POST", `/v1/hosts/${enc(name)}/maintenance`, req);
  }

  /** Forgets a host that is down and owns no VMs. */
  async removeHost(name: string): Promise<void> {
    await this.call<undefined>("DELETE", `/v1/hosts/${enc(name)}`);
  }

  // --- VMs ---

  async list(): Promise<ClusterVm[]> {
    return (await this.call<{ vms: ClusterVm[] }>("GET", "/v1/vms")).vms;
  }

  get(name: string): Promise<ClusterVm> {
    return this.call<ClusterVm>("GET", `/v1/vms/${enc(name)}`);
  }

  /** Defines a VM on `req.host`, or where the manager places it; `start: true` starts it too. */
  create(req: ClusterVmCreateRequest): Promise<ClusterVm> {
    return this.call<ClusterVm>("POST", "/v1/vms", req);
  }

  /** Starts a VM; `host`: on that host (the VM moves there first if it is defined elsewhere). */
  start(name: string, opts: { host?: string } = {}): Promise<ClusterVm> {
    return this.call<ClusterVm>("POST", `/v1/vms/${enc(name)}/start`, opts);
  }

  /** Graceful shutdown through the guest agent, hard power-off after `timeoutMs`. */
  shutdown(name: string, opts: ShutdownRequest = {}): Promise<ClusterVm> {
    return this.call<ClusterVm>("POST", `/v1/vms/${enc(name)}/shutdown`, opts);
  }

  poweroff(name: string): Promise<ClusterVm> {
    return this.call<ClusterVm>("POST", `/v1/vms/${enc(name)}/poweroff`);
  }

  pause(name: string): Promise<ClusterVm> {
    return this.call<ClusterVm>("POST", `/v1/vms/${enc(name)}/pause`);
  }

  resume(name: string): Promise<ClusterVm> {
    return this.call<ClusterVm>("POST", `/v1/vms/${enc(name)}/resume`);
  }

  suspend(name: string): Promise<ClusterVm> {
    return this.call<ClusterVm>("POST", `/v1/vms/${enc(name)}/suspend`);
  }

  async destroy(name: string, opts: DestroyOptions = {}): Promise<void> {
    const qs = queryString({ force: opts.force === true ? true : undefined, deleteDisk: opts.deleteDisk === true ? true : undefined });
    await this.call<undefined>("DELETE", `/v1/vms/${enc(name)}${qs}`);
  }

  exec(name: string, command: string, opts: { timeoutMs?: number } = {}): Promise<ExecResult> {
    const body: ExecRequest = { command, ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}) };
    return this.call<ExecResult>("POST", `/v1/vms/${enc(name)}/exec`, body);
  }

  /**
   * Migrates a VM (`to` absent: the manager picks the target). Resolves with the task id and the
   * report when done; with `wait: false`, at once with the queued task.
   */
  migrate(name: string, req: ClusterMigrateRequest & { wait: false }): Promise<TaskRow>;
  migrate(name: string, req?: ClusterMigrateRequest & { wait?: true }): Promise<ClusterMigrateResult>;
  migrate(name: string, req?: ClusterMigrateRequest): Promise<ClusterMigrateResult | TaskRow>;
  migrate(name: string, req: ClusterMigrateRequest = {}): Promise<ClusterMigrateResult | TaskRow> {
    return this.call<ClusterMigrateResult | TaskRow>("POST", `/v1/vms/${enc(name)}/migrate`, req);
  }

  // --- tasks ---

  async tasks(filter: TaskListFilter = {}): Promise<TaskRow[]> {
    const state = typeof filter.state === "string" ? filter.state : filter.state !== undefined && filter.state.length > 0 ? filter.state.join(",") : undefined;
    const qs = queryString({ state, kind: filter.kind, vm: filter.vm, host: filter.host, parentId: filter.parentId, limit: filter.limit });
    return (await this.call<{ tasks: TaskRow[] }>("GET", `/v1/tasks${qs}`)).tasks;
  }

  task(id: string): Promise<TaskRow> {
    return this.call<TaskRow>("GET", `/v1/tasks/${enc(id)}`);
  }

  cancelTask(id: string): Promise<TaskRow> {
    return this.call<TaskRow>("POST", `/v1/tasks/${enc(id)}/cancel`);
  }

  // --- events ---

  /** Stored events: the newest first, or with `afterId` the ones after it, oldest first. */
  async listEvents(filter: EventListFilter = {}): Promise<ClusterEvent[]> {
    const qs = queryString({
      afterId: filter.afterId,
      type: filter.type,
      typePrefix: filter.typePrefix,
      vm: filter.vm,
      host: filter.host,
      taskId: filter.taskId,
      severity: filter.severity,
      limit: filter.limit,
    });
    return (await this.call<{ events: ClusterEvent[] }>("GET", `/v1/events${qs}`)).events;
  }

  // --- inventory ---

  async networks(): Promise<NetworkRow[]> {
    return (await this.call<{ networks: NetworkRow[] }>("GET", "/v1/networks")).networks;
  }

  async datastores(): Promise<DatastoreRow[]> {
    return (await this.call<{ datastores: DatastoreRow[] }>("GET", "/v1/datastores")).datastores;
  }

  // --- DRS ---

  /** What DRS would move now (nothing moves); `threshold`: the load-score spread to tolerate instead of the manager's. */
  drsRecommendations(opts: { threshold?: number } = {}): Promise<DrsRecommendations> {
    return this.call<DrsRecommendations>("GET", `/v1/drs/recommendations${queryString({ threshold: opts.threshold })}`);
  }

  /** Starts a task that migrates the recommended VMs. */
  drsApply(opts: { threshold?: number } = {}): Promise<TaskRow> {
    return this.call<TaskRow>("POST", `/v1/drs/apply${queryString({ threshold: opts.threshold })}`);
  }
}

/** A finished task (succeeded, failed or cancelled). */
export function taskEnded(t: Pick<TaskRow, "state">): boolean {
  return t.state === "succeeded" || t.state === "failed" || t.state === "cancelled";
}
