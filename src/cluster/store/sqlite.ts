/**
 * SqliteStore: the inventory in one SQLite file (better-sqlite3), the manager's default store.
 *
 * WAL journal (readers never block the writer), synchronous=NORMAL (a power cut may lose the
 * last commits but never corrupts the file), foreign keys on, and a busy timeout so a second
 * process on the same file waits instead of failing. Read-modify-write methods run in
 * BEGIN IMMEDIATE transactions; swapVmOwner is a single conditional UPDATE.
 *
 * Rows map onto tables as described in migrations.ts: NULL is an absent optional field, nested
 * fields are JSON text. The semantics mirror MemoryStore and are pinned by suite.ts.
 */
import Database from "better-sqlite3";
import { errorMessage, HopError } from "../../common/errors.js";
import type {
  ClusterEvent,
  DatastoreRow,
  EventSeverity,
  HostCapacity,
  HostConnection,
  HostLoad,
  HostMaintenance,
  HostRow,
  NetworkRow,
  PowerIntent,
  TaskError,
  TaskKind,
  TaskRow,
  TaskState,
  VmRow,
} from "../types.js";
import { MIGRATIONS, type Migration } from "./migrations.js";
import type { EventFilter, InventoryStore, NewEvent, TaskFilter } from "./store.js";
import { limitOf, merge, notFound } from "./rules.js";

export interface SqliteStoreOptions {
  /** The database file (created if missing; its directory must exist), or ":memory:". */
  path: string;
  /** The schema migrations; default MIGRATIONS (tests pass longer or shorter lists). */
  migrations?: readonly Migration[];
}

/** How long a statement waits for another connection's write lock before SQLITE_BUSY. */
const BUSY_TIMEOUT_MS = 5000;

/** JSON text for a column; NULL for an absent field. */
function json(value: unknown): string | null {
  return value === undefined ? null : JSON.stringify(value);
}

function parse<T>(text: string): T {
  return JSON.parse(text) as T;
}

// ---- rows <-> records (one property per column) ----

interface HostRecord {
  name: string;
  url: string;
  migration_address: string | null;
  vtep: string | null;
  datastore_id: string;
  version: string;
  capacity: string;
  load: string | null;
  connection: HostConnection;
  maintenance: HostMaintenance;
  joined_at: string;
  last_heartbeat_at: string | null;
}

interface VmRecord {
  name: string;
  uuid: string;
  host: string;
  generation: number;
  desired_power: PowerIntent;
  state: VmRow["state"];
  config: string;
  cpu_pct: number | null;
  rss_mib: number | null;
  updated_at: string;
}

interface TaskRecord {
  id: string;
  kind: TaskKind;
  vm: string | null;
  host: string | null;
  state: TaskState;
  progress: number;
  message: string | null;
  params: string;
  result: string | null;
  error: string | null;
  parent_id: string | null;
  cancel_requested: number;
  created_at: string;
  started_at: string | null;
  ended_at: string | null;
}

interface EventRecord {
  id: number;
  type: string;
  at: string;
  severity: EventSeverity;
  message: string;
  host: string | null;
  vm: string | null;
  task_id: string | null;
  data: string | null;
}

interface NetworkRecord {
  name: string;
  vni: number;
  subnet: string;
  gateway: string | null;
}

interface DatastoreRecord {
  id: string;
  hosts: string;
}

/** How one row type maps onto its table, with the SQL the generic methods use. */
interface Table<Row, Rec> {
  /** For error messages. */
  what: string;
  /** The primary-key column, which is also the row's identity property. */
  key: keyof Row & keyof Rec & string;
  toRecord(row: Row): Rec;
  fromRecord(rec: Rec): Row;
  /** "a, b, c": every column. */
  columns: string;
  select: string;
  /** A plain INSERT of every column. */
  insert: string;
  /** The INSERT that replaces the row with the same key. */
  upsert: string;
  update: string;
}

/**
 * Builds a Table. `columns` lists every record property (the Record type makes the compiler
 * check none is missing); the SQL uses named parameters @column.
 */
function table<Row, Rec>(
  name: string,
  what: string,
  key: keyof Row & keyof Rec & string,
  columns: Record<keyof Rec & string, true>,
  toRecord: (row: Row) => Rec,
  fromRecord: (rec: Rec) => Row,
): Table<Row, Rec> {
  const cols = Object.keys(columns);
  const insert = `INSERT INTO ${name} (${cols.join(", ")}) VALUES (${cols.map((c) => `@${c}`).join(", ")})`;
  const assignments = (from: (c: string) => string): string =>
    cols
      .filter((c) => c !== key)
      .map((c) => `${c} = ${from(c)}`)
      .join(", ");
  return {
    what,
    key,
    toRecord,
    fromRecord,
    columns: cols.join(", "),
    select: `SELECT ${cols.join(", ")} FROM ${name}`,
    insert,
    upsert: `${insert} ON CONFLICT (${key}) DO UPDATE SET ${assignments((c) => `excluded.${c}`)}`,
    update: `UPDATE ${name} SET ${assignments((c) => `@${c}`)} WHERE ${key} = @${key}`,
  };
}

const hosts = table<HostRow, HostRecord>(
  "hosts",
  "host",
  "name",
  { name: true, url: true, migration_address: true, vtep: true, datastore_id: true, version: true, capacity: true, load: true, connection: true, maintenance: true, joined_at: true, last_heartbeat_at: true },
  (h) => ({
    name: h.name,
    url: h.url,
    migration_address: json(h.migrationAddress),
    vtep: h.vtep ?? null,
    datastore_id: h.datastoreId,
    version: h.version,
    capacity: JSON.stringify(h.capacity),
    load: json(h.load),
    connection: h.connection,
    maintenance: h.maintenance,
    joined_at: h.joinedAt,
    last_heartbeat_at: h.lastHeartbeatAt ?? null,
  }),
  (r) => {
    const h: HostRow = {
      name: r.name,
      url: r.url,
      datastoreId: r.datastore_id,
      version: r.version,
      capacity: parse<HostCapacity>(r.capacity),
      connection: r.connection,
      maintenance: r.maintenance,
      joinedAt: r.joined_at,
    };
    if (r.migration_address !== null) h.migrationAddress = parse<{ host: string; port: number }>(r.migration_address);
    if (r.vtep !== null) h.vtep = r.vtep;
    if (r.load !== null) h.load = parse<HostLoad>(r.load);
    if (r.last_heartbeat_at !== null) h.lastHeartbeatAt = r.last_heartbeat_at;
    return h;
  },
);

const vms = table<VmRow, VmRecord>(
  "vms",
  "VM",
  "name",
  { name: true, uuid: true, host: true, generation: true, desired_power: true, state: true, config: true, cpu_pct: true, rss_mib: true, updated_at: true },
  (v) => ({
    name: v.name,
    uuid: v.uuid,
    host: v.host,
    generation: v.generation,
    desired_power: v.desiredPower,
    state: v.state,
    config: JSON.stringify(v.config),
    cpu_pct: v.cpuPct ?? null,
    rss_mib: v.rssMiB ?? null,
    updated_at: v.updatedAt,
  }),
  (r) => {
    const v: VmRow = {
      name: r.name,
      uuid: r.uuid,
      host: r.host,
      generation: r.generation,
      desiredPower: r.desired_power,
      state: r.state,
      config: parse<VmRow["config"]>(r.config),
      updatedAt: r.updated_at,
    };
    if (r.cpu_pct !== null) v.cpuPct = r.cpu_pct;
    if (r.rss_mib !== null) v.rssMiB = r.rss_mib;
    return v;
  },
);

const tasks = table<TaskRow, TaskRecord>(
  "tasks",
  "task",
  "id",
  { id: true, kind: true, vm: true, host: true, state: true, progress: true, message: true, params: true, result: true, error: true, parent_id: true, cancel_requested: true, created_at: true, started_at: true, ended_at: true },
  (t) => ({
    id: t.id,
    kind: t.kind,
    vm: t.vm ?? null,
    host: t.host ?? null,
    state: t.state,
    progress: t.progress,
    message: t.message ?? null,
    params: JSON.stringify(t.params),
    result: json(t.result),
    error: json(t.error),
    parent_id: t.parentId ?? null,
    cancel_requested: t.cancelRequested ? 1 : 0,
    created_at: t.createdAt,
    started_at: t.startedAt ?? null,
    ended_at: t.endedAt ?? null,
  }),
  (r) => {
    const t: TaskRow = {
      id: r.id,
      kind: r.kind,
      state: r.state,
      progress: r.progress,
      params: parse<Record<string, unknown>>(r.params),
      cancelRequested: r.cancel_requested !== 0,
      createdAt: r.created_at,
    };
    if (r.vm !== null) t.vm = r.vm;
    if (r.host !== null) t.host = r.host;
    if (r.message !== null) t.message = r.message;
    if (r.result !== null) t.result = parse<unknown>(r.result);
    if (r.error !== null) t.error = parse<TaskError>(r.error);
    if (r.parent_id !== null) t.parentId = r.parent_id;
    if (r.started_at !== null) t.startedAt = r.started_at;
    if (r.ended_at !== null) t.endedAt = r.ended_at;
    return t;
  },
);

const networks = table<NetworkRow, NetworkRecord>(
  "networks",
  "network",
  "name",
  { name: true, vni: true, subnet: true, gateway: true },
  (n) => ({ name: n.name, vni: n.vni, subnet: n.subnet, gateway: n.gateway ?? null }),
  (r) => {
    const n: NetworkRow = { name: r.name, vni: r.vni, subnet: r.subnet };
    if (r.gateway !== null) n.gateway = r.gateway;
    return n;
  },
);

const datastores = table<DatastoreRow, DatastoreRecord>(
  "datastores",
  "datastore",
  "id",
  { id: true, hosts: true },
  (d) => ({ id: d.id, hosts: JSON.stringify(d.hosts) }),
  (r) => ({ id: r.id, hosts: parse<string[]>(r.hosts) }),
);

const EVENT_COLUMNS = "id, type, at, severity, message, host, vm, task_id, data";

function toEventRecord(ev: NewEvent): Omit<EventRecord, "id"> {
  return {
    type: ev.type,
    at: ev.at,
    severity: ev.severity,
    message: ev.message,
    host: ev.host ?? null,
    vm: ev.vm ?? null,
    task_id: ev.taskId ?? null,
    data: json(ev.data),
  };
}

function fromEventRecord(r: EventRecord): ClusterEvent {
  const e: ClusterEvent = { id: r.id, type: r.type, at: r.at, severity: r.severity, message: r.message };
  if (r.host !== null) e.host = r.host;
  if (r.vm !== null) e.vm = r.vm;
  if (r.task_id !== null) e.taskId = r.task_id;
  if (r.data !== null) e.data = parse<unknown>(r.data);
  return e;
}

/** A GLOB pattern matching strings that start with `prefix` (GLOB is case-sensitive and can use the index). */
function globPrefix(prefix: string): string {
  return `${prefix.replace(/[*?[]/g, "[$&]")}*`;
}

// ---- opening and migrating ----

function userVersion(db: Database.Database): number {
  return db.pragma("user_version", { simple: true }) as number;
}

/** Opens the file and sets the connection's pragmas; STORE_OPEN_FAILED with the cause. */
function openDatabase(path: string): Database.Database {
  let db: Database.Database | undefined;
  try {
    db = new Database(path, { timeout: BUSY_TIMEOUT_MS });
    // The first statement reads the header: a file that is not a database fails here.
    db.pragma("journal_mode = WAL"); // ":memory:" keeps its "memory" journal
    db.pragma("synchronous = NORMAL");
    db.pragma("foreign_keys = ON");
    return db;
  } catch (err) {
    db?.close();
    throw new HopError("STORE_OPEN_FAILED", `cannot open the inventory database ${path}: ${errorMessage(err)}`, { cause: err });
  }
}

/**
 * Applies the migrations the database lacks, all in one IMMEDIATE transaction (a failure leaves
 * the database as it was; a second process opening the same file waits, then finds nothing to do).
 */
function migrate(db: Database.Database, migrations: readonly Migration[], path: string): void {
  migrations.forEach((m, i) => {
    if (m.version !== i + 1) throw new HopError("STORE_MIGRATIONS_INVALID", `migration #${i} has version ${m.version}, expected ${i + 1}`);
  });
  const latest = migrations.length;
  const run = db.transaction(() => {
    const current = userVersion(db);
    if (current > latest) {
      throw new HopError(
        "STORE_SCHEMA_TOO_NEW",
        `the inventory database ${path} has schema version ${current}, newer than this Hopvisor knows (${latest}): run a newer Hopvisor or use another database`,
      );
    }
    for (const m of migrations.slice(current)) {
      try {
        if (typeof m.up === "string") db.exec(m.up);
        else m.up(db);
      } catch (err) {
        throw new HopError("STORE_MIGRATION_FAILED", `migration ${m.version} (${m.name}) of ${path} failed: ${errorMessage(err)}`, { cause: err });
      }
    }
    // PRAGMA takes no parameters; `latest` is a number of ours.
    if (current < latest) db.pragma(`user_version = ${latest}`);
  });
  run.immediate();
}

export class SqliteStore implements InventoryStore {
  private readonly path: string;
  private readonly migrations: readonly Migration[];
  private db: Database.Database | undefined;
  /** Prepared statements by SQL text (the filters make a bounded number of variants). */
  private readonly statements = new Map<string, Database.Statement>();

  constructor(options: SqliteStoreOptions) {
    this.path = options.path;
    this.migrations = options.migrations ?? MIGRATIONS;
  }

  /**
   * Opens the database and applies missing migrations (idempotent: a no-op when open).
   * Rejects with STORE_OPEN_FAILED (not a database, cannot be opened or written),
   * STORE_SCHEMA_TOO_NEW (written by a newer Hopvisor) or STORE_MIGRATION_FAILED.
   */
  async init(): Promise<void> {
    if (this.db) return;
    const db = openDatabase(this.path);
    try {
      migrate(db, this.migrations, this.path);
    } catch (err) {
      db.close();
      if (err instanceof HopError) throw err;
      // BEGIN IMMEDIATE or the version write failed: read-only file, lock never released, I/O error.
      throw new HopError("STORE_OPEN_FAILED", `cannot write the inventory database ${this.path}: ${errorMessage(err)}`, { cause: err });
    }
    this.db = db;
  }

  /** Closes the database (idempotent); other methods then reject with STORE_NOT_OPEN. */
  async close(): Promise<void> {
    this.statements.clear();
    this.db?.close();
    this.db = undefined;
  }

  /** The database's `PRAGMA user_version`. */
  async schemaVersion(): Promise<number> {
    return userVersion(this.handle());
  }

  /** Creates or replaces a host. */
  async putHost(host: HostRow): Promise<void> {
    this.put(hosts, host);
  }

  /** The host, or undefined. */
  async getHost(name: string): Promise<HostRow | undefined> {
    return this.get(hosts, name);
  }

  /** All hosts by name. */
  async listHosts(): Promise<HostRow[]> {
    return this.list(hosts);
  }

  /** Applies the fields of `patch` (undefined ones are ignored); STORE_NOT_FOUND if absent. */
  async updateHost(name: string, patch: Partial<Omit<HostRow, "name">>): Promise<HostRow> {
    return this.update(hosts, name, patch);
  }

  /** Deletes a host; false when it did not exist. */
  async deleteHost(name: string): Promise<boolean> {
    return this.stmt("DELETE FROM hosts WHERE name = ?").run(name).changes > 0;
  }

  /** Creates or replaces a VM. */
  async putVm(vm: VmRow): Promise<void> {
    this.put(vms, vm);
  }

  /** The VM, or undefined. */
  async getVm(name: string): Promise<VmRow | undefined> {
    return this.get(vms, name);
  }

  /** VMs by name, optionally only those owned by `filter.host`. */
  async listVms(filter: { host?: string } = {}): Promise<VmRow[]> {
    return filter.host === undefined ? this.list(vms) : this.list(vms, "WHERE host = ? ORDER BY name", filter.host);
  }

  /** Applies the fields of `patch` (undefined ones are ignored); STORE_NOT_FOUND if absent. */
  async updateVm(name: string, patch: Partial<Omit<VmRow, "name">>): Promise<VmRow> {
    return this.update(vms, name, patch);
  }

  /**
   * Compare-and-swap of ownership in one UPDATE: only host, generation and (when given) config
   * change. Undefined when the VM is gone or its generation is not `expectedGeneration`.
   */
  async swapVmOwner(name: string, expectedGeneration: number, next: { host: string; generation: number; config?: VmRow["config"] }): Promise<VmRow | undefined> {
    const rec = this.stmt<VmRecord>(
      `UPDATE vms SET host = ?, generation = ?, config = coalesce(?, config) WHERE name = ? AND generation = ? RETURNING ${vms.columns}`,
    ).get(next.host, next.generation, json(next.config), name, expectedGeneration);
    return rec && vms.fromRecord(rec);
  }

  /** Deletes a VM; false when it did not exist. */
  async deleteVm(name: string): Promise<boolean> {
    return this.stmt("DELETE FROM vms WHERE name = ?").run(name).changes > 0;
  }

  /** Creates a task; STORE_CONFLICT when its id exists. */
  async createTask(task: TaskRow): Promise<void> {
    const { changes } = this.stmt(`${tasks.insert} ON CONFLICT (id) DO NOTHING`).run(tasks.toRecord(task));
    if (changes === 0) throw new HopError("STORE_CONFLICT", `task ${task.id} already exists`, { status: 409 });
  }

  /** The task, or undefined. */
  async getTask(id: string): Promise<TaskRow | undefined> {
    return this.get(tasks, id);
  }

  /** Matching tasks, newest first (createdAt, then creation order). An empty state list matches none. */
  async listTasks(filter: TaskFilter = {}): Promise<TaskRow[]> {
    const where: string[] = [];
    const params: unknown[] = [];
    if (filter.state !== undefined) {
      // One statement for any number of states: the list travels as a JSON array.
      where.push("state IN (SELECT value FROM json_each(?))");
      params.push(JSON.stringify(Array.isArray(filter.state) ? filter.state : [filter.state]));
    }
    for (const [column, value] of [
      ["kind", filter.kind],
      ["vm", filter.vm],
      ["host", filter.host],
      ["parent_id", filter.parentId],
    ] as const) {
      if (value !== undefined) {
        where.push(`${column} = ?`);
        params.push(value);
      }
    }
    const clause = where.length > 0 ? `WHERE ${where.join(" AND ")} ` : "";
    return this.list(tasks, `${clause}ORDER BY created_at DESC, seq DESC LIMIT ?`, ...params, limitOf(filter.limit));
  }

  /** Applies the fields of `patch` (undefined ones are ignored); STORE_NOT_FOUND if absent. */
  async updateTask(id: string, patch: Partial<Omit<TaskRow, "id">>): Promise<TaskRow> {
    return this.update(tasks, id, patch);
  }

  /** Appends an event with the next id and returns it as stored. */
  async appendEvent(ev: NewEvent): Promise<ClusterEvent> {
    const rec = toEventRecord(ev);
    const { lastInsertRowid } = this.stmt(
      "INSERT INTO events (type, at, severity, message, host, vm, task_id, data) VALUES (@type, @at, @severity, @message, @host, @vm, @task_id, @data)",
    ).run(rec);
    return fromEventRecord({ ...rec, id: Number(lastInsertRowid) });
  }

  /**
   * Matching events: with `afterId` those after it, oldest first (paging forward); without it
   * the newest, newest first. At most `limit` (default 100, at most 1000).
   */
  async listEvents(filter: EventFilter = {}): Promise<ClusterEvent[]> {
    const where: string[] = [];
    const params: unknown[] = [];
    for (const [condition, value] of [
      ["id > ?", filter.afterId],
      ["type = ?", filter.type],
      ["type GLOB ?", filter.typePrefix === undefined ? undefined : globPrefix(filter.typePrefix)],
      ["vm = ?", filter.vm],
      ["host = ?", filter.host],
      ["task_id = ?", filter.taskId],
      ["severity = ?", filter.severity],
    ] as const) {
      if (value !== undefined) {
        where.push(condition);
        params.push(value);
      }
    }
    const clause = where.length > 0 ? `WHERE ${where.join(" AND ")} ` : "";
    const order = filter.afterId === undefined ? "DESC" : "ASC";
    return this.stmt<EventRecord>(`SELECT ${EVENT_COLUMNS} FROM events ${clause}ORDER BY id ${order} LIMIT ?`)
      .all(...params, limitOf(filter.limit))
      .map(fromEventRecord);
  }

  /** Deletes all but the newest `keep` events; returns how many went. */
  async pruneEvents(keep: number): Promise<number> {
    if (!(keep >= 0)) throw new HopError("STORE_BAD_ARGUMENT", `pruneEvents: keep must be >= 0, got ${keep}`, { status: 400 });
    return this.write(() => {
      const count = this.stmt<{ n: number }>("SELECT count(*) AS n FROM events").get()?.n ?? 0;
      const excess = count - Math.floor(keep);
      if (excess <= 0) return 0;
      return this.stmt("DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY id LIMIT ?)").run(excess).changes;
    });
  }

  /** Creates or replaces a network. */
  async putNetwork(net: NetworkRow): Promise<void> {
    this.put(networks, net);
  }

  /** All networks by name. */
  async listNetworks(): Promise<NetworkRow[]> {
    return this.list(networks);
  }

  /** Creates or replaces a datastore. */
  async putDatastore(ds: DatastoreRow): Promise<void> {
    this.put(datastores, ds);
  }

  /** All datastores by id. */
  async listDatastores(): Promise<DatastoreRow[]> {
    return this.list(datastores);
  }

  /** A manager-wide setting, or undefined. */
  async getMeta(key: string): Promise<string | undefined> {
    return this.stmt<{ value: string }>("SELECT value FROM meta WHERE key = ?").get(key)?.value;
  }

  /** Creates or replaces a manager-wide setting. */
  async setMeta(key: string, value: string): Promise<void> {
    this.stmt("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value").run(key, value);
  }

  // ---- helpers (synchronous, so a transaction can combine them) ----

  private handle(): Database.Database {
    if (!this.db) throw new HopError("STORE_NOT_OPEN", "the inventory store is not open (call init() first)");
    return this.db;
  }

  /** The prepared statement for `sql`, prepared once per connection. */
  private stmt<Result = unknown>(sql: string): Database.Statement<unknown[], Result> {
    let statement = this.statements.get(sql);
    if (!statement) {
      statement = this.handle().prepare(sql);
      this.statements.set(sql, statement);
    }
    return statement as Database.Statement<unknown[], Result>;
  }

  /** Runs `fn` in a BEGIN IMMEDIATE transaction (takes the write lock before reading). */
  private write<T>(fn: () => T): T {
    return this.handle().transaction(fn).immediate();
  }

  private put<Row, Rec>(t: Table<Row, Rec>, row: Row): void {
    this.stmt(t.upsert).run(t.toRecord(row));
  }

  private get<Row, Rec>(t: Table<Row, Rec>, id: string): Row | undefined {
    const rec = this.stmt<Rec>(`${t.select} WHERE ${t.key} = ?`).get(id);
    return rec && t.fromRecord(rec);
  }

  /** Rows of `t` selected by `tail` (WHERE ... ORDER BY ... LIMIT ...; default: all by key). */
  private list<Row, Rec>(t: Table<Row, Rec>, tail = `ORDER BY ${t.key}`, ...params: unknown[]): Row[] {
    return this.stmt<Rec>(`${t.select} ${tail}`)
      .all(...params)
      .map((rec) => t.fromRecord(rec));
  }

  private update<Row extends object, Rec>(t: Table<Row, Rec>, id: string, patch: object): Row {
    return this.write(() => {
      const current = this.get(t, id);
      if (!current) throw notFound(t.what, id);
      const rec = t.toRecord(merge(current, patch, t.key));
      this.stmt(t.update).run(rec);
      // Back through the record, as a read would give it: fresh objects, undefined keys gone.
      return t.fromRecord(rec);
    });
  }
}
