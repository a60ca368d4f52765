/**
 * MemoryStore: the inventory in Maps, for tests and embedded use. Nothing survives the process.
 *
 * It behaves like SqliteStore in everything the shared suite (suite.ts) checks: rows are copied
 * in and out through JSON, exactly as SqliteStore's JSON columns do, so callers never share
 * objects with the store and a key holding `undefined` comes back absent; lists have the same
 * order; limits and errors are the same.
 */
import { HopError } from "../../common/errors.js";
import type { ClusterEvent, DatastoreRow, HostRow, NetworkRow, TaskRow, VmRow } from "../types.js";
import { SCHEMA_VERSION } from "./migrations.js";
import type { EventFilter, InventoryStore, NewEvent, TaskFilter } from "./store.js";
import { limitOf, merge, notFound } from "./rules.js";


/** A deep copy with SQLite's JSON semantics (undefined-valued keys are dropped). */
function clone<T>(value: T): T {
  return JSON.parse(JSON.stringify(value)) as T;
}

/** Code-unit order, as SQLite's BINARY collation for the ASCII names the inventory uses. */
function byString(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

export class MemoryStore implements InventoryStore {
  private open = false;
  private readonly hosts = new Map<string, HostRow>();
  private readonly vms = new Map<string, VmRow>();
  /** Each task with its insertion number, the tie-break of "newest first". */
  private readonly tasks = new Map<string, { seq: number; row: TaskRow }>();
  private taskSeq = 0;
  /** Oldest first. Ids are never reused, even after pruning (like SQLite's AUTOINCREMENT). */
  private events: ClusterEvent[] = [];
  private lastEventId = 0;
  private readonly networks = new Map<string, NetworkRow>();
  private readonly datastores = new Map<string, DatastoreRow>();
  private readonly meta = new Map<string, string>();

  /** Opens the store (idempotent; reopening after close() finds the data again). */
  async init(): Promise<void> {
    this.open = true;
  }

  /** Closes the store: every other method then rejects with STORE_NOT_OPEN. Idempotent. */
  async close(): Promise<void> {
    this.open = false;
  }

  /** The schema version of the SQLite store this one mirrors. */
  async schemaVersion(): Promise<number> {
    this.check();
    return SCHEMA_VERSION;
  }

  /** Creates or replaces a host. */
  async putHost(host: HostRow): Promise<void> {
    this.check();
    this.hosts.set(host.name, clone(host));
  }

  /** The host, or undefined. */
  async getHost(name: string): Promise<HostRow | undefined> {
    this.check();
    const row = this.hosts.get(name);
    return row && clone(row);
  }

  /** All hosts by name. */
  async listHosts(): Promise<HostRow[]> {
    this.check();
    return sorted(this.hosts).map(clone);
  }

  /** Applies the fields of `patch` (undefined ones are ignored); STORE_NOT_FOUND if absent. */
  async updateHost(name: string, patch: Partial<Omit<HostRow, "name">>): Promise<HostRow> {
    this.check();
    const row = this.hosts.get(name);
    if (!row) throw notFound("host", name);
    const next = clone(merge(row, patch, "name"));
    this.hosts.set(name, next);
    return clone(next);
  }

  /** Deletes a host; false when it did not exist. */
  async deleteHost(name: string): Promise<boolean> {
    this.check();
    return this.hosts.delete(name);
  }

  /** Creates or replaces a VM. */
  async putVm(vm: VmRow): Promise<void> {
    this.check();
    this.vms.set(vm.name, clone(vm));
  }

  /** The VM, or undefined. */
  async getVm(name: string): Promise<VmRow | undefined> {
    this.check();
    const row = this.vms.get(name);
    return row && clone(row);
  }

  /** VMs by name, optionally only those owned by `filter.host`. */
  async listVms(filter: { host?: string } = {}): Promise<VmRow[]> {
    this.check();
    return sorted(this.vms)
      .filter((vm) => filter.host === undefined || vm.host === filter.host)
      .map(clone);
  }

  /** Applies the fields of `patch` (undefined ones are ignored); STORE_NOT_FOUND if absent. */
  async updateVm(name: string, patch: Partial<Omit<VmRow, "name">>): Promise<VmRow> {
    this.check();
    const row = this.vms.get(name);
    if (!row) throw notFound("VM", name);
    const next = clone(merge(row, patch, "name"));
    this.vms.set(name, next);
    return clone(next);
  }

  /**
   * Compare-and-swap of ownership: only host, generation and (when given) config change.
   * Undefined when the VM is gone or its generation is not `expectedGeneration`.
   */
  async swapVmOwner(name: string, expectedGeneration: number, next: { host: string; generation: number; config?: VmRow["config"] }): Promise<VmRow | undefined> {
    this.check();
    const row = this.vms.get(name);
    if (!row || row.generation !== expectedGeneration) return undefined;
    const swapped = clone({ ...row, host: next.host, generation: next.generation, config: next.config ?? row.config });
    this.vms.set(name, swapped);
    return clone(swapped);
  }

  /** Deletes a VM; false when it did not exist. */
  async deleteVm(name: string): Promise<boolean> {
    this.check();
    return this.vms.delete(name);
  }

  /** Creates a task; STORE_CONFLICT when its id exists. */
  async createTask(task: TaskRow): Promise<void> {
    this.check();
    if (this.tasks.has(task.id)) throw new HopError("STORE_CONFLICT", `task ${task.id} already exists`, { status: 409 });
    this.tasks.set(task.id, { seq: ++this.taskSeq, row: clone(task) });
  }

  /** The task, or undefined. */
  async getTask(id: string): Promise<TaskRow | undefined> {
    this.check();
    const entry = this.tasks.get(id);
    return entry && clone(entry.row);
  }

  /** Matching tasks, newest first (createdAt, then creation order). An empty state list matches none. */
  async listTasks(filter: TaskFilter = {}): Promise<TaskRow[]> {
    this.check();
    const states = filter.state === undefined ? undefined : Array.isArray(filter.state) ? filter.state : [filter.state];
    return [...this.tasks.values()]
      .filter(
        ({ row }) =>
          (states === undefined || states.includes(row.state)) &&
          (filter.kind === undefined || row.kind === filter.kind) &&
          (filter.vm === undefined || row.vm === filter.vm) &&
          (filter.host === undefined || row.host === filter.host) &&
          (filter.parentId === undefined || row.parentId === filter.parentId),
      )
      .sort((a, b) => byString(b.row.createdAt, a.row.createdAt) || b.seq - a.seq)
      .slice(0, limitOf(filter.limit))
      .map(({ row }) => clone(row));
  }

  /** Applies the fields of `patch` (undefined ones are ignored); STORE_NOT_FOUND if absent. */
  async updateTask(id: string, patch: Partial<Omit<TaskRow, "id">>): Promise<TaskRow> {
    this.check();
    const entry = this.tasks.get(id);
    if (!entry) throw notFound("task", id);
    entry.row = clone(merge(entry.row, patch, "id"));
    return clone(entry.row);
  }

  /** Appends an event with the next id and returns it as stored. */
  async appendEvent(ev: NewEvent): Promise<ClusterEvent> {
    this.check();
    const stored = clone({ ...ev, id: ++this.lastEventId });
    this.events.push(stored);
    return clone(stored);
  }

  /**
   * Matching events: with `afterId` those after it, oldest first (paging forward); without it
   * the newest, newest first. At most `limit` (default 100, at most 1000).
   */
  async listEvents(filter: EventFilter = {}): Promise<ClusterEvent[]> {
    this.check();
    const matches = (e: ClusterEvent): boolean =>
      (filter.type === undefined || e.type === filter.type) &&
      (filter.typePrefix === undefined || e.type.startsWith(filter.typePrefix)) &&
      (filter.vm === undefined || e.vm === filter.vm) &&
      (filter.host === undefined || e.host === filter.host) &&
      (filter.taskId === undefined || e.taskId === filter.taskId) &&
      (filter.severity === undefined || e.severity === filter.severity);
    const { afterId } = filter;
    const candidates = afterId === undefined ? [...this.events].reverse() : this.events.filter((e) => e.id > afterId);
    return candidates.filter(matches).slice(0, limitOf(filter.limit)).map(clone);
  }

  /** Deletes all but the newest `keep` events; returns how many went. */
  async pruneEvents(keep: number): Promise<number> {
    this.check();
    if (!(keep >= 0)) throw new HopError("STORE_BAD_ARGUMENT", `pruneEvents: keep must be >= 0, got ${keep}`, { status: 400 });
    const excess = this.events.length - Math.floor(keep);
    if (excess <= 0) return 0;
    this.events = this.events.slice(excess);
    return excess;
  }

  /** Creates or replaces a network. */
  async putNetwork(net: NetworkRow): Promise<void> {
    this.check();
    this.networks.set(net.name, clone(net));
  }

  /** All networks by name. */
  async listNetworks(): Promise<NetworkRow[]> {
    this.check();
    return sorted(this.networks).map(clone);
  }

  /** Creates or replaces a datastore. */
  async putDatastore(ds: DatastoreRow): Promise<void> {
    this.check();
    this.datastores.set(ds.id, clone(ds));
  }

  /** All datastores by id. */
  async listDatastores(): Promise<DatastoreRow[]> {
    this.check();
    return sorted(this.datastores).map(clone);
  }

  /** A manager-wide setting, or undefined. */
  async getMeta(key: string): Promise<string | undefined> {
    this.check();
    return this.meta.get(key);
  }

  /** Creates or replaces a manager-wide setting. */
  async setMeta(key: string, value: string): Promise<void> {
    this.check();
    this.meta.set(key, value);
  }

  private check(): void {
    if (!this.open) throw new HopError("STORE_NOT_OPEN", "the inventory store is not open (call init() first)");
  }
}

/** A map's values ordered by key (rows are not copied here). */
function sorted<T>(map: Map<string, T>): T[] {
  return [...map.entries()].sort(([a], [b]) => byString(a, b)).map(([, row]) => row);
}
