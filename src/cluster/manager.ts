/**
 * The cluster manager (the vCenter of Hopvisor): keeps the inventory in an InventoryStore,
 * hears host agents join and heartbeat (granting leases), runs every long operation as a task,
 * and records events. HA, maintenance and balancing live in their own files and act through
 * the methods here.
 */
import { randomUUID } from "node:crypto";
import { HopError, errorMessage } from "../common/errors.js";
import type { Logger } from "../common/log.js";
import { parseInput } from "../common/validation.js";
import { monotonicMs } from "../common/time.js";
import type { HostClient } from "../host/client.js";
import type { ExecResult, HostEvent, VmInfo } from "../host/types.js";
import type { MigrationReport } from "../migration/index.js";
import { type VmConfig } from "../vm/config.js";
import { clusterVmCreateSchema, vmCreateSchema } from "./api-schemas.js";
import type { VmState } from "../vm/lifecycle.js";
import type { ClusterMigrateRequest, HostInfo, ManagerHealth } from "./api-types.js";
import { ClusterVmNotFoundError, HostNotFoundError, HostNotJoinedError, HostUnavailableError, PlacementError, VmBusyError } from "./errors.js";
import { HostRegistry } from "./hosts.js";
import { chooseHost, type PlacementHost } from "./placement.js";
import { joinRequestSchema, heartbeatRequestSchema, type HeartbeatResponse, type JoinResponse, type LeaseGrant, type VmReport } from "./protocol.js";
import type { EventFilter, InventoryStore, TaskFilter } from "./store/index.js";
import { slot, TaskNotFoundError, TaskRunner, type TaskBody, type TaskContext, type SubmitOptions } from "./tasks.js";
import type { ClusterEvent, EventSeverity, HostRow, PowerIntent, TaskKind, TaskRow, VmRow } from "./types.js";

export interface ManagerOptions {
  store: InventoryStore;
  token: string;
  version: string;
  heartbeatMs: number;
  leaseMs: number;
  graceMs: number;
  maxMigrationsPerHost: number;
  maxMigrationsPerCluster: number;
  log: Logger;
}

export interface EmitInput {
  type: string;
  message: string;
  severity?: EventSeverity;
  host?: string;
  vm?: string;
  taskId?: string;
  data?: unknown;
}

/** How often live views hear that load figures changed (a stream-only event). */
const LOAD_EVERY_MS = 5_000;
/** Keep this many events in the database. */
const EVENTS_KEPT = 50_000;
/** VM states in which a VM occupies its host's memory. */
const ACTIVE_STATES: ReadonlySet<string> = new Set(["running", "paused", "starting", "migrating", "incoming", "stopping"]);

function isoNow(): string {
  return new Date().toISOString();
}

export function vmRowFrom(info: VmInfo, host: string, desiredPower: PowerIntent): VmRow {
  return {
    name: info.name,
    uuid: info.uuid,
    host,
    generation: info.config.generation ?? 0,
    desiredPower,
    state: info.state,
    config: info.config,
    updatedAt: isoNow(),
  };
}

export class Manager {
  managerId = "";
  readonly tasks: TaskRunner;
  readonly store: InventoryStore;
  readonly registry: HostRegistry;
  readonly log: Logger;
  readonly opts: ManagerOptions;
  private readonly listeners = new Set<(ev: ClusterEvent) => void>();
  /** MiB promised to hosts by moves in flight (migrations, HA restarts), by host. */
  private readonly inflight = new Map<string, number>();
  private eventsSincePrune = 0;
  private lastLoadBroadcast = -Infinity;
  private readonly startedAt = Date.now();
  /**
   * When a VM's state was last written from a fresher source than a heartbeat (the host's event
   * stream, an operation's answer): a heartbeat assembled before that must not undo it.
   */
  private readonly stateSetAt = new Map<string, number>();
  /** Serialises inventory updates per VM (heartbeats and tasks both write VM rows). */
  private vmWrites = new Map<string, Promise<unknown>>();

  constructor(opts: ManagerOptions) {
    this.opts = opts;
    this.store = opts.store;
    this.log = opts.log;
    this.registry = new HostRegistry(opts.token, (host, ev) => this.onHostEvent(host, ev), opts.log);
    this.tasks = new TaskRunner(opts.store, (row) => this.onTaskChange(row), opts.log);
  }

  async init(): Promise<void> {
    await this.store.init();
    let id = await this.store.getMeta("managerId");
    if (id === undefined) {
      id = randomUUID();
      await this.store.setMeta("managerId", id);
    }
    this.managerId = id;
    // Hosts known from before a restart get a full grace period to heartbeat again.
    for (const h of await this.store.listHosts()) {
      if (h.connection !== "down") this.registry.remember(h.name, h.url);
    }
  }

  close(): void {
    this.tasks.close();
    this.registry.close();
  }

  // ---- events ----

  onEvent(fn: (ev: ClusterEvent) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Records an event and sends it to every listener. Never throws (events must not break operations). */
  async emit(input: EmitInput): Promise<void> {
    try {
      const ev = await this.store.appendEvent({ ...input, at: isoNow(), severity: input.severity ?? "info" });
      for (const fn of this.listeners) fn(ev);
      if (++this.eventsSincePrune >= 1000) {
        this.eventsSincePrune = 0;
        await this.store.pruneEvents(EVENTS_KEPT);
      }
    } catch (err) {
      this.log.error({ err: errorMessage(err), type: input.type }, "event not recorded");
    }
  }

  /**
   * Sends an event to stream listeners without storing it (id 0): `cluster.load`, at most every
   * LOAD_EVERY_MS, tells live views that heartbeats changed hosts' and VMs' load figures.
   */
  private broadcastLoad(): void {
    const now = monotonicMs();
    if (now - this.lastLoadBroadcast < LOAD_EVERY_MS) return;
    this.lastLoadBroadcast = now;
    const ev: ClusterEvent = { id: 0, type: "cluster.load", at: isoNow(), severity: "info", message: "load figures updated" };
    for (const fn of this.listeners) fn(ev);
  }

  listEvents(filter: EventFilter): Promise<ClusterEvent[]> {
    return this.store.listEvents(filter);
  }

  private onTaskChange(row: TaskRow): void {
    if (row.state === "running" && row.progress > 0 && row.progress < 1) return; // progress is streamed as its own events
    void this.emit({
      type: "task.updated",
      severity: row.state === "failed" ? "error" : "info",
      message: `${row.kind} ${row.vm ?? row.host ?? ""} ${row.state}${row.error !== undefined ? `: ${row.error.message}` : ""}`.replace(/\s+/g, " "),
      taskId: row.id,
      ...(row.vm !== undefined ? { vm: row.vm } : {}),
      ...(row.host !== undefined ? { host: row.host } : {}),
      data: row,
    });
  }

  // ---- health ----

  async health(): Promise<ManagerHealth> {
    return {
      ok: true,
      role: "manager",
      managerId: this.managerId,
      version: this.opts.version,
      hosts: (await this.store.listHosts()).length,
      vms: (await this.store.listVms()).length,
    };
  }

  uptimeS(): number {
    return Math.floor((Date.now() - this.startedAt) / 1000);
  }

  // ---- hosts: join, heartbeat, inventory ----

  private lease(release: string[]): LeaseGrant {
    return { leaseMs: this.opts.leaseMs, heartbeatMs: this.opts.heartbeatMs, release };
  }

  async join(body: unknown): Promise<JoinResponse> {
    const req = parseInput(joinRequestSchema, body, "body");
    const existing = await this.store.getHost(req.name);
    const row: HostRow = {
      name: req.name,
      url: req.url.replace(/\/+$/, ""),
      datastoreId: req.datastoreId,
      version: req.version,
      capacity: req.capacity,
      connection: "connected",
      maintenance: existing?.maintenance ?? "none",
      joinedAt: isoNow(),
      lastHeartbeatAt: isoNow(),
      ...(req.migrationAddress !== undefined ? { migrationAddress: req.migrationAddress } : {}),
      ...(req.vtep !== undefined ? { vtep: req.vtep } : {}),
      ...(existing?.load !== undefined ? { load: existing.load } : {}),
    };
    await this.store.putHost(row);
    this.registry.seen(req.name, row.url);
    this.registry.follow(req.name, true);
    const ds = (await this.store.listDatastores()).find((d) => d.id === req.datastoreId);
    await this.store.putDatastore({ id: req.datastoreId, hosts: [...new Set([...(ds?.hosts ?? []), req.name])].sort() });
    const release = await this.reconcile(req.name, req.vms);
    void this.emit({
      type: existing === undefined ? "host.joined" : "host.rejoined",
      host: req.name,
      message: `host ${req.name} ${existing === undefined ? "joined" : "joined again"} (${req.capacity.cpus} CPUs, ${req.capacity.memoryMiB} MiB for VMs, ${req.vms.length} VMs)`,
    });
    if (release.length > 0) this.log.warn({ host: req.name, release }, "host told to release VMs owned elsewhere");
    return { managerId: this.managerId, ...this.lease(release) };
  }

  async heartbeat(name: string, body: unknown): Promise<HeartbeatResponse> {
    const req = parseInput(heartbeatRequestSchema, body, "body");
    const host = await this.store.getHost(name);
    if (host === undefined) throw new HostNotJoinedError(name);
    this.registry.seen(name, host.url);
    const wasOff = host.connection !== "connected";
    await this.store.updateHost(name, { connection: "connected", lastHeartbeatAt: isoNow(), load: req.load });
    // Idempotent: also (re)starts following a host remembered from before a manager restart.
    this.registry.follow(name, true);
    if (wasOff) {
      void this.emit({ type: "host.reconnected", host: name, message: `host ${name} is heard from again (was ${host.connection})` });
    }
    const release = await this.reconcile(name, req.vms);
    this.broadcastLoad();
    return this.lease(release);
  }

  /** Serialises writes to one VM's row. */
  private withVm<T>(name: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.vmWrites.get(name) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    const tail = next.catch(() => undefined);
    this.vmWrites.set(name, tail);
    void tail.then(() => {
      if (this.vmWrites.get(name) === tail) this.vmWrites.delete(name);
    });
    return next;
  }

  /**
   * Merges what a host reports into the inventory and returns the VMs it must release: copies
   * the inventory knows to be owned by another host or by a newer generation (a VM restarted
   * elsewhere while this host was cut off).
   */
  private async reconcile(host: string, reports: VmReport[]): Promise<string[]> {
    const release: string[] = [];
    const seen = new Set<string>();
    for (const r of reports) {
      seen.add(r.name);
      // A VM arriving by migration is not the host's yet.
      if (r.state === "incoming") continue;
      const verdict = await this.withVm(r.name, async () => {
        const row = await this.store.getVm(r.name);
        const config = r.config as unknown as VmConfig;
        if (row === undefined) {
          await this.store.putVm({
            name: r.name,
            uuid: r.uuid,
            host,
            generation: r.generation,
            desiredPower: r.state === "running" || r.state === "paused" ? "running" : r.state === "suspended" ? "suspended" : "stopped",
            state: r.state as VmState,
            config,
            ...(r.cpuPct !== undefined ? { cpuPct: r.cpuPct } : {}),
            ...(r.rssMiB !== undefined ? { rssMiB: r.rssMiB } : {}),
            updatedAt: isoNow(),
          });
          return "discovered" as const;
        }
        if (row.uuid !== r.uuid) return "release" as const;
        if (row.host === host) {
          if (r.generation < row.generation && r.state !== "migrating") return "release" as const;
          const fresh = monotonicMs() - (this.stateSetAt.get(r.name) ?? -Infinity) < this.opts.heartbeatMs * 2;
          const patch: Partial<VmRow> = { updatedAt: isoNow(), ...(fresh ? {} : { state: r.state as VmState }) };
          if (r.cpuPct !== undefined) patch.cpuPct = r.cpuPct;
          if (r.rssMiB !== undefined) patch.rssMiB = r.rssMiB;
          if (r.generation > row.generation) {
            patch.generation = r.generation;
            patch.config = config;
          }
          await this.store.updateVm(r.name, patch);
          return !fresh && row.state !== r.state ? ("changed" as const) : ("same" as const);
        }
        // The inventory names another owner.
        if (r.generation > row.generation) {
          const moved = await this.store.swapVmOwner(r.name, row.generation, { host, generation: r.generation, config });
          if (moved !== undefined) await this.store.updateVm(r.name, { state: r.state as VmState });
          return "moved" as const;
        }
        if (r.state === "migrating") return "same" as const;
        return "release" as const;
      });
      if (verdict === "release") release.push(r.name);
      else if (verdict === "discovered") void this.emit({ type: "vm.discovered", host, vm: r.name, message: `VM ${r.name} found on host ${host} (${r.state})` });
      else if (verdict === "moved") void this.emit({ type: "vm.moved", host, vm: r.name, message: `VM ${r.name} now runs on ${host} (generation ${r.generation})` });
      else if (verdict === "changed") void this.emit({ type: "vm.state", host, vm: r.name, message: `VM ${r.name} is ${r.state}`, data: { state: r.state } });
    }
    // VMs the inventory places here that the host did not report.
    for (const row of await this.store.listVms({ host })) {
      if (seen.has(row.name) || row.state === "unknown") continue;
      if (this.tasks.active().some((t) => t.vm === row.name)) continue;
      await this.withVm(row.name, () => this.store.updateVm(row.name, { state: "unknown", updatedAt: isoNow() }));
    }
    return release;
  }

  /** Events from a host agent's stream: state changes at once (not a heartbeat later), migration progress. */
  private onHostEvent(host: string, ev: HostEvent): void {
    switch (ev.type) {
      case "vm.state":
        void this.withVm(ev.vm, async () => {
          const row = await this.store.getVm(ev.vm);
          if (row?.host !== host) return;
          this.stateSetAt.set(ev.vm, monotonicMs());
          if (row.state !== ev.state) await this.store.updateVm(ev.vm, { state: ev.state, updatedAt: isoNow() });
        }).catch(() => undefined);
        void this.emit({ type: "vm.state", host, vm: ev.vm, message: `VM ${ev.vm} is ${ev.state}${ev.reason !== undefined ? ` (${ev.reason})` : ""}`, data: { state: ev.state } });
        break;
      case "vm.crashed":
        void this.emit({ type: "vm.crashed", severity: "error", host, vm: ev.vm, message: `VM ${ev.vm} crashed on ${host}: ${ev.reason}` });
        break;
      case "migration.progress": {
        const task = this.tasks.active().find((t) => t.kind === "vm.migrate" && t.vm === ev.vm && t.state === "running");
        void this.emit({
          type: "migration.progress",
          host,
          vm: ev.vm,
          ...(task !== undefined ? { taskId: task.id } : {}),
          message: `${ev.progress.mode} migration of ${ev.vm}: ${ev.progress.phase}${ev.progress.round !== undefined ? ` round ${ev.progress.round.round}` : ""}`,
          data: ev.progress,
        });
        break;
      }
      case "migration.failed":
        void this.emit({ type: "migration.failed", severity: "warning", host, vm: ev.vm, message: `migration of ${ev.vm} failed: ${ev.message} (${ev.code})`, data: ev });
        break;
      case "vm.migrated":
      case "migration.done":
      case "vm.created":
      case "vm.destroyed":
        break;
      default: {
        // vm.fenced, vm.released, vm.adopted and anything newer: recorded as they are.
        const e = ev as { type: string; vm?: string; reason?: string };
        void this.emit({
          type: e.type,
          severity: e.type === "vm.fenced" ? "warning" : "info",
          host,
          ...(e.vm !== undefined ? { vm: e.vm } : {}),
          message: `${e.type.replace(/^vm\./, "VM ")} ${e.vm ?? ""} on ${host}${e.reason !== undefined ? `: ${e.reason}` : ""}`.replace(/\s+/g, " "),
          data: ev,
        });
      }
    }
  }

  async listHosts(): Promise<HostInfo[]> {
    const vms = await this.store.listVms();
    return (await this.store.listHosts()).map((h) => this.hostInfo(h, vms));
  }

  async getHost(name: string): Promise<HostInfo> {
    const h = await this.store.getHost(name);
    if (h === undefined) throw new HostNotFoundError(name);
    return this.hostInfo(h, await this.store.listVms({ host: name }));
  }

  private hostInfo(h: HostRow, vms: VmRow[]): HostInfo {
    const mine = vms.filter((v) => v.host === h.name);
    return { ...h, vms: mine.map((v) => v.name), reservedMiB: this.reservedOf(h.name, mine) };
  }

  /** Memory of the VMs placed on `host` that run or should, plus moves in flight to it. */
  reservedOf(host: string, vms: readonly VmRow[]): number {
    let mib = this.inflight.get(host) ?? 0;
    for (const v of vms) {
      if (v.host === host && (v.desiredPower === "running" || ACTIVE_STATES.has(v.state))) mib += v.config.memoryMiB;
    }
    return mib;
  }

  /** What placement needs to know of every host. */
  async placementHosts(): Promise<PlacementHost[]> {
    const vms = await this.store.listVms();
    return (await this.store.listHosts()).map((h) => ({
      name: h.name,
      connection: h.connection,
      maintenance: h.maintenance,
      capacity: h.capacity,
      reservedMiB: this.reservedOf(h.name, vms),
      cpuPct: h.load?.cpuPct ?? 0,
    }));
  }

  /** Holds `mib` on `host` for a move in flight; returns the release function. */
  reserve(host: string, mib: number): () => void {
    this.inflight.set(host, (this.inflight.get(host) ?? 0) + mib);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const left = (this.inflight.get(host) ?? 0) - mib;
      if (left <= 0) this.inflight.delete(host);
      else this.inflight.set(host, left);
    };
  }

  /** Picks a host for `memoryMiB`, or checks the one asked for. Throws PLACEMENT errors. */
  async place(memoryMiB: number, opts: { host?: string; exclude?: string[]; admission: boolean }): Promise<string> {
    const hosts = await this.placementHosts();
    if (opts.host !== undefined) {
      const h = hosts.find((x) => x.name === opts.host);
      if (h === undefined) throw new HostNotFoundError(opts.host);
      if (h.connection !== "connected") throw new HostUnavailableError(h.name, `it is ${h.connection}`);
      if (h.maintenance !== "none") throw new HostUnavailableError(h.name, `it is ${h.maintenance === "in" ? "in" : "entering"} maintenance mode`);
      if (opts.exclude?.includes(h.name) === true) throw new HostUnavailableError(h.name, "the VM is already there");
      if (opts.admission && h.capacity.memoryMiB - h.reservedMiB < memoryMiB) {
        throw new PlacementError("INSUFFICIENT_CAPACITY", `host ${h.name} has ${h.capacity.memoryMiB - h.reservedMiB} MiB free, the VM needs ${memoryMiB} MiB`);
      }
      return h.name;
    }
    const r = chooseHost(hosts, { memoryMiB: opts.admission ? memoryMiB : 0, ...(opts.exclude !== undefined ? { exclude: opts.exclude } : {}) });
    if (!r.ok) throw new PlacementError(r.code, r.message);
    return r.host;
  }

  /** The API client of a connected host. */
  client(host: string): HostClient {
    const c = this.registry.client(host);
    if (c === undefined) throw new HostUnavailableError(host, "the manager has no connection to it");
    return c;
  }

  async requireConnected(host: string): Promise<HostRow> {
    const h = await this.store.getHost(host);
    if (h === undefined) throw new HostNotFoundError(host);
    if (h.connection !== "connected") throw new HostUnavailableError(host, `it is ${h.connection}`);
    return h;
  }

  async setHost(name: string, patch: Partial<Omit<HostRow, "name">>): Promise<HostRow> {
    return this.store.updateHost(name, patch);
  }

  /** Removes a host that is down and owns no VMs from the inventory. */
  async removeHost(name: string): Promise<void> {
    const h = await this.store.getHost(name);
    if (h === undefined) throw new HostNotFoundError(name);
    if (h.connection !== "down") throw new HopError("HOST_NOT_DOWN", `host ${name} is ${h.connection}: stop its agent first (only a host that is down can be removed)`, { status: 409 });
    const vms = await this.store.listVms({ host: name });
    if (vms.length > 0) throw new HopError("HOST_HAS_VMS", `host ${name} still owns ${vms.length} VM(s): ${vms.map((v) => v.name).join(", ")}`, { status: 409 });
    await this.store.deleteHost(name);
    this.registry.forget(name);
    void this.emit({ type: "host.removed", host: name, message: `host ${name} removed from the inventory` });
  }

  // ---- tasks ----

  listTasks(filter: TaskFilter): Promise<TaskRow[]> {
    return this.store.listTasks(filter);
  }

  async getTask(id: string): Promise<TaskRow> {
    const t = await this.store.getTask(id);
    if (t === undefined) throw new TaskNotFoundError(id);
    return t;
  }

  /** Submits a task; with `wait`, resolves with its result or throws its error. */
  async runTask<T>(kind: TaskKind, params: Record<string, unknown>, body: TaskBody, opts: SubmitOptions & { wait: boolean }): Promise<{ task: TaskRow; result?: T }> {
    const task = await this.tasks.submit(kind, params, body, opts);
    if (!opts.wait) return { task };
    const done = await this.tasks.wait(task.id);
    if (done.state !== "succeeded") {
      const e = done.error ?? { code: "TASK_FAILED", message: `task ${done.id} ${done.state}` };
      throw new HopError(e.code, e.message, { status: e.status ?? 500 });
    }
    return { task: done, result: done.result as T };
  }

  // ---- VMs ----

  listVms(filter: { host?: string } = {}): Promise<VmRow[]> {
    return this.store.listVms(filter);
  }

  async getVm(name: string): Promise<VmRow> {
    const v = await this.store.getVm(name);
    if (v === undefined) throw new ClusterVmNotFoundError(name);
    return v;
  }

  /** Writes what the owner host said about a VM after an operation. */
  async recordVm(info: VmInfo, host: string, desiredPower?: PowerIntent): Promise<VmRow> {
    return this.withVm(info.name, async () => {
      this.stateSetAt.set(info.name, monotonicMs());
      const row = await this.store.getVm(info.name);
      if (row === undefined) {
        const fresh = vmRowFrom(info, host, desiredPower ?? "stopped");
        await this.store.putVm(fresh);
        return fresh;
      }
      return this.store.updateVm(info.name, {
        host,
        state: info.state,
        config: info.config,
        generation: Math.max(row.generation, info.config.generation ?? 0),
        updatedAt: isoNow(),
        ...(desiredPower !== undefined ? { desiredPower } : {}),
      });
    });
  }

  async createVm(body: unknown): Promise<VmRow> {
    const raw = (typeof body === "object" && body !== null ? body : {}) as Record<string, unknown>;
    const { host: rawHost, start: rawStart, ...rest } = raw;
    const { host, start } = parseInput(clusterVmCreateSchema, { host: rawHost, start: rawStart }, "body");
    const req = parseInput(vmCreateSchema, rest, "body");
    if ((await this.store.getVm(req.name)) !== undefined) throw new HopError("VM_EXISTS", `a VM named '${req.name}' already exists in the cluster`, { status: 409 });
    const target = await this.place(req.memoryMiB, { ...(host !== undefined ? { host } : {}), admission: start === true });
    const { result } = await this.runTask<VmRow>(
      "vm.create",
      { ...rest, host: target, start: start === true },
      async () => {
        if ((await this.store.getVm(req.name)) !== undefined) throw new HopError("VM_EXISTS", `a VM named '${req.name}' already exists in the cluster`, { status: 409 });
        const info = await this.client(target).create(req);
        const row = await this.recordVm(info, target, "stopped");
        void this.emit({ type: "vm.created", host: target, vm: req.name, message: `VM ${req.name} created on ${target}` });
        return row;
      },
      { vm: req.name, host: target, slots: [slot(`vm:${req.name}`)], wait: true },
    );
    if (start === true) return this.startVm(req.name, {});
    return result ?? this.getVm(req.name);
  }

  async startVm(name: string, opts: { host?: string }): Promise<VmRow> {
    const { result } = await this.runTask<VmRow>("vm.start", { ...opts }, (ctx) => this.doStart(ctx, name, opts.host), { vm: name, slots: [slot(`vm:${name}`)], wait: true });
    return result ?? this.getVm(name);
  }

  /** Starts a VM where it is, or first moves it (powered off) to a host that can run it. */
  async doStart(ctx: TaskContext, name: string, wanted?: string): Promise<VmRow> {
    let row = await this.getVm(name);
    if (row.state === "running") return row;
    const owner = await this.store.getHost(row.host);
    const ownerUsable = owner !== undefined && owner.connection === "connected" && owner.maintenance === "none";
    let target = row.host;
    if (wanted !== undefined && wanted !== row.host) target = await this.place(row.config.memoryMiB, { host: wanted, admission: true });
    else if (!ownerUsable) target = await this.place(row.config.memoryMiB, { exclude: [row.host], admission: true });
    else {
      const hosts = await this.placementHosts();
      const h = hosts.find((x) => x.name === row.host);
      if (h !== undefined && h.capacity.memoryMiB - h.reservedMiB + (row.desiredPower === "running" ? row.config.memoryMiB : 0) < row.config.memoryMiB) {
        target = await this.place(row.config.memoryMiB, { exclude: [row.host], admission: true });
      }
    }
    const release = this.reserve(target, row.config.memoryMiB);
    try {
      if (target !== row.host) {
        ctx.progress(0.2, `moving ${name} to ${target}`);
        row = await this.moveStopped(row, target);
      }
      ctx.progress(0.5, `starting ${name} on ${target}`);
      await this.withVm(name, () => this.store.updateVm(name, { desiredPower: "running" }));
      const info = await this.client(target).start(name);
      return await this.recordVm(info, target, "running");
    } finally {
      release();
    }
  }

  /**
   * Moves a powered-off VM to `target`: a cold migration when its owner is up, else the target
   * adopts it from the shared datastore (generation checked and bumped).
   */
  async moveStopped(row: VmRow, target: string): Promise<VmRow> {
    const owner = await this.store.getHost(row.host);
    if (owner?.connection === "connected") {
      const report = await this.client(row.host).migrate(row.name, { to: (await this.requireConnected(target)).url, mode: "cold" });
      const info = await this.client(target).get(row.name);
      await this.swapOwner(row, target, info);
      void this.emit({ type: "vm.migrated", host: target, vm: row.name, message: `VM ${row.name} moved (cold) from ${row.host} to ${target}`, data: report });
    } else {
      const info = await this.client(target).adopt(row.name, { fromHost: row.host, generation: row.generation, start: false });
      await this.swapOwner(row, target, info);
      void this.emit({ type: "vm.adopted", host: target, vm: row.name, message: `VM ${row.name} taken over by ${target} from ${row.host} (down)` });
    }
    return this.getVm(row.name);
  }

  /** Records a change of owner after the hosts made it (generation compare-and-swap). */
  async swapOwner(row: VmRow, target: string, info: VmInfo): Promise<void> {
    await this.withVm(row.name, async () => {
      this.stateSetAt.set(row.name, monotonicMs());
      const generation = Math.max(info.config.generation ?? row.generation + 1, row.generation + 1);
      const swapped = await this.store.swapVmOwner(row.name, row.generation, { host: target, generation, config: info.config });
      if (swapped === undefined) {
        // A heartbeat of the new owner got there first: make sure the row says what the hosts did.
        await this.store.updateVm(row.name, { host: target, generation, config: info.config });
      }
      await this.store.updateVm(row.name, { state: info.state, updatedAt: isoNow() });
    });
  }

  private async ownerCall(name: string, kind: TaskKind, desired: PowerIntent | undefined, call: (c: HostClient, row: VmRow) => Promise<VmInfo>): Promise<VmRow> {
    const { result } = await this.runTask<VmRow>(
      kind,
      {},
      async () => {
        const row = await this.getVm(name);
        await this.requireConnected(row.host);
        if (desired !== undefined) await this.withVm(name, () => this.store.updateVm(name, { desiredPower: desired }));
        const info = await call(this.client(row.host), row);
        return this.recordVm(info, row.host, desired);
      },
      { vm: name, slots: [slot(`vm:${name}`)], wait: true },
    );
    return result ?? this.getVm(name);
  }

  shutdownVm(name: string, timeoutMs?: number): Promise<VmRow> {
    return this.ownerCall(name, "vm.stop", "stopped", (c) => c.shutdown(name, timeoutMs !== undefined ? { timeoutMs } : {}));
  }

  poweroffVm(name: string): Promise<VmRow> {
    return this.ownerCall(name, "vm.poweroff", "stopped", (c) => c.poweroff(name));
  }

  suspendVm(name: string): Promise<VmRow> {
    return this.ownerCall(name, "vm.suspend", "suspended", (c) => c.suspend(name));
  }

  /** Pause and resume are quick: no task, the owner answers at once. */
  async pauseVm(name: string): Promise<VmRow> {
    const row = await this.getVm(name);
    await this.requireConnected(row.host);
    return this.recordVm(await this.client(row.host).pause(name), row.host);
  }

  async resumeVm(name: string): Promise<VmRow> {
    const row = await this.getVm(name);
    await this.requireConnected(row.host);
    return this.recordVm(await this.client(row.host).resume(name), row.host);
  }

  async destroyVm(name: string, opts: { force?: boolean; deleteDisk?: boolean }): Promise<void> {
    await this.runTask(
      "vm.destroy",
      { ...opts },
      async () => {
        const row = await this.getVm(name);
        await this.requireConnected(row.host);
        await this.client(row.host).destroy(name, opts);
        await this.withVm(name, () => this.store.deleteVm(name));
        void this.emit({ type: "vm.destroyed", host: row.host, vm: name, message: `VM ${name} destroyed${opts.deleteDisk === true ? " with its disk" : ""}` });
      },
      { vm: name, slots: [slot(`vm:${name}`)], wait: true },
    );
  }

  async execVm(name: string, command: string, timeoutMs?: number): Promise<ExecResult> {
    const row = await this.getVm(name);
    await this.requireConnected(row.host);
    return this.client(row.host).exec(name, command, timeoutMs !== undefined ? { timeoutMs } : {});
  }

  /** Slots a migration from `from` to `to` holds (vMotion-like limits per host and per cluster). */
  migrationSlots(vm: string, from: string, to: string): string[] {
    const perHost = this.opts.maxMigrationsPerHost;
    return [slot(`vm:${vm}`), slot(`migration:host:${from}`, perHost), slot(`migration:host:${to}`, perHost), slot("migration:cluster", this.opts.maxMigrationsPerCluster)];
  }

  /** Submits a migration task (the target is chosen now when not given). */
  async submitMigration(name: string, req: ClusterMigrateRequest, opts: { parentId?: string } = {}): Promise<TaskRow> {
    const row = await this.getVm(name);
    const mode = req.mode ?? "live";
    const to = await this.place(row.config.memoryMiB, { ...(req.to !== undefined ? { host: req.to } : {}), exclude: [row.host], admission: mode !== "cold" });
    if (to === row.host) throw new HostUnavailableError(to, `VM ${name} is already on it`);
    const params = { ...req, to, mode, from: row.host };
    delete (params as { wait?: boolean }).wait;
    return this.tasks.submit("vm.migrate", params, (ctx) => this.doMigrate(ctx, name, to, params), {
      vm: name,
      host: row.host,
      ...(opts.parentId !== undefined ? { parentId: opts.parentId } : {}),
      slots: this.migrationSlots(name, row.host, to),
    });
  }

  async migrateVm(name: string, req: ClusterMigrateRequest): Promise<{ task: TaskRow; report?: MigrationReport }> {
    const task = await this.submitMigration(name, req);
    if (req.wait === false) return { task };
    const done = await this.tasks.wait(task.id);
    if (done.state !== "succeeded") {
      const e = done.error ?? { code: "TASK_FAILED", message: `task ${done.id} ${done.state}` };
      throw new HopError(e.code, e.message, { status: e.status ?? 500 });
    }
    return { task: done, report: (done.result as { report: MigrationReport }).report };
  }

  /** The body of a vm.migrate task. */
  async doMigrate(ctx: TaskContext, name: string, to: string, req: ClusterMigrateRequest & { from?: string }): Promise<{ report: MigrationReport }> {
    const row = await this.getVm(name);
    if (req.from !== undefined && row.host !== req.from) {
      if (row.host === to) throw new VmBusyError(name, `is already on ${to}`);
      throw new VmBusyError(name, `moved to ${row.host} before the migration could start`);
    }
    const mode = req.mode ?? "live";
    const target = await this.requireConnected(to);
    await this.requireConnected(row.host);
    ctx.throwIfCancelled();
    const release = mode === "cold" ? () => undefined : this.reserve(to, row.config.memoryMiB);
    const source = this.client(row.host);
    const onAbort = (): void => {
      void source
        .migrations()
        .then((m) => Promise.all(m.migrations.filter((x) => x.vm === name).map((x) => source.cancelMigration(x.migrationId))))
        .catch((err: unknown) => this.log.warn({ vm: name, err: errorMessage(err) }, "migration cancel not delivered"));
    };
    ctx.signal.addEventListener("abort", onAbort, { once: true });
    try {
      ctx.progress(0.05, `${mode} migration of ${name} from ${row.host} to ${to}`);
      const report = await source.migrate(name, {
        to: target.url,
        mode,
        ...(req.downtimeTargetMs !== undefined ? { downtimeTargetMs: req.downtimeTargetMs } : {}),
        ...(req.bandwidth !== undefined ? { bandwidth: req.bandwidth } : {}),
        ...(req.lz4 !== undefined ? { lz4: req.lz4 } : {}),
      });
      const info = await this.client(to).get(name);
      await this.swapOwner(row, to, info);
      if (row.desiredPower === "running" && mode !== "cold") await this.withVm(name, () => this.store.updateVm(name, { desiredPower: "running" }));
      void this.emit({
        type: "vm.migrated",
        host: to,
        vm: name,
        taskId: ctx.id,
        message: `VM ${name} ${mode}-migrated from ${row.host} to ${to} in ${Math.round(report.totalMs)} ms (pause ${report.downtimeMs} ms)`,
        data: report,
      });
      return { report };
    } finally {
      ctx.signal.removeEventListener("abort", onAbort);
      release();
    }
  }
}
