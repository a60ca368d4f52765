/**
 * The manager's persistent inventory, behind one interface so a distributed store can replace
 * SQLite later. Every method is async for that reason, although SQLite answers synchronously.
 * Implementations: SqliteStore (default, better-sqlite3) and MemoryStore (tests, embedded use);
 * both pass the shared suite in suite.ts.
 */
import type { ClusterEvent, DatastoreRow, EventSeverity, HostRow, NetworkRow, TaskKind, TaskRow, TaskState, VmRow } from "../types.js";

export interface TaskFilter {
  state?: TaskState | TaskState[];
  kind?: TaskKind;
  vm?: string;
  host?: string;
  parentId?: string;
  /** Newest first; default 100, at most 1000. */
  limit?: number;
}

export interface EventFilter {
  /** Only events with id > afterId (oldest first then); without it: the newest, newest first. */
  afterId?: number;
  type?: string;
  /** Matches a type prefix: "host." */
  typePrefix?: string;
  vm?: string;
  host?: string;
  taskId?: string;
  severity?: EventSeverity;
  /** Default 100, at most 1000. */
  limit?: number;
}

export type NewEvent = Omit<ClusterEvent, "id">;

export interface InventoryStore {
  /** Creates or upgrades the schema (idempotent). */
  init(): Promise<void>;
  close(): Promise<void>;
  /** Schema version after init. */
  schemaVersion(): Promise<number>;

  putHost(host: HostRow): Promise<void>;
  getHost(name: string): Promise<HostRow | undefined>;
  listHosts(): Promise<HostRow[]>;
  /** Updates the given fields; throws STORE_NOT_FOUND if absent. Returns the new row. */
  updateHost(name: string, patch: Partial<Omit<HostRow, "name">>): Promise<HostRow>;
  deleteHost(name: string): Promise<boolean>;

  putVm(vm: VmRow): Promise<void>;
  getVm(name: string): Promise<VmRow | undefined>;
  listVms(filter?: { host?: string }): Promise<VmRow[]>;
  /** Updates the given fields; throws STORE_NOT_FOUND if absent. Returns the new row. */
  updateVm(name: string, patch: Partial<Omit<VmRow, "name">>): Promise<VmRow>;
  /**
   * Compare-and-swap of ownership (fencing): moves the VM to `host` with `generation` only if its
   * current generation is `expectedGeneration`. Returns the new row, or undefined when the
   * generation no longer matches (someone else moved it) or the VM is gone.
   */
  swapVmOwner(name: string, expectedGeneration: number, next: { host: string; generation: number; config?: VmRow["config"] }): Promise<VmRow | undefined>;
  deleteVm(name: string): Promise<boolean>;

  createTask(task: TaskRow): Promise<void>;
  getTask(id: string): Promise<TaskRow | undefined>;
  listTasks(filter?: TaskFilter): Promise<TaskRow[]>;
  /** Updates the given fields; throws STORE_NOT_FOUND if absent. Returns the new row. */
  updateTask(id: string, patch: Partial<Omit<TaskRow, "id">>): Promise<TaskRow>;

  /** Appends an event; returns it with its id. */
  appendEvent(ev: NewEvent): Promise<ClusterEvent>;
  listEvents(filter?: EventFilter): Promise<ClusterEvent[]>;
  /** Deletes all but the newest `keep` events; returns how many were deleted. */
  pruneEvents(keep: number): Promise<number>;

  putNetwork(net: NetworkRow): Promise<void>;
  listNetworks(): Promise<NetworkRow[]>;
  putDatastore(ds: DatastoreRow): Promise<void>;
  listDatastores(): Promise<DatastoreRow[]>;

  /** A manager-wide setting (manager id, ...); undefined when never set. */
  getMeta(key: string): Promise<string | undefined>;
  /** Creates or replaces a manager-wide setting. */
  setMeta(key: string, value: string): Promise<void>;
}
