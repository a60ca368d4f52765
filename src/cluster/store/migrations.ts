/**
 * The SQLite schema of the inventory, as an ordered list of migrations.
 *
 * Migration N brings a database from `PRAGMA user_version` N-1 to N. SqliteStore.init() applies
 * the missing ones in one transaction and refuses a database newer than the last one here.
 * Never edit a migration that has shipped: append a new one.
 *
 * Conventions: STRICT tables; optional scalar fields are nullable columns (NULL = absent);
 * nested or free-form fields are JSON text (NULL = absent, so a stored JSON `null` stays
 * distinguishable); only the columns the filters use are indexed. There are no foreign keys
 * between inventory tables on purpose: a VM may name a host that has left, an event outlives the
 * task it mentions, and MemoryStore must behave the same.
 */
import type Database from "better-sqlite3";

export interface Migration {
  /** 1-based, consecutive: the user_version the database has after this migration. */
  version: number;
  /** What it does, for error messages. */
  name: string;
  /** SQL (may hold several statements) or a function for data migrations. */
  up: string | ((db: Database.Database) => void);
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: "initial inventory schema",
    up: `
      CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
      ) STRICT;

      CREATE TABLE hosts (
        name              TEXT PRIMARY KEY,
        url               TEXT NOT NULL,
        migration_address TEXT,          -- JSON {host, port}
        vtep              TEXT,
        datastore_id      TEXT NOT NULL,
        version           TEXT NOT NULL,
        capacity          TEXT NOT NULL, -- JSON HostCapacity
        load              TEXT,          -- JSON HostLoad
        connection        TEXT NOT NULL,
        maintenance       TEXT NOT NULL,
        joined_at         TEXT NOT NULL,
        last_heartbeat_at TEXT
      ) STRICT;

      CREATE TABLE vms (
        name          TEXT PRIMARY KEY,
        uuid          TEXT NOT NULL,
        host          TEXT NOT NULL,
        generation    INTEGER NOT NULL,
        desired_power TEXT NOT NULL,
        state         TEXT NOT NULL,
        config        TEXT NOT NULL,     -- JSON VmConfig
        cpu_pct       REAL,
        rss_mib       REAL,
        updated_at    TEXT NOT NULL
      ) STRICT;
      CREATE INDEX vms_host ON vms (host);

      -- seq: insertion order, the tie-break of "newest first" (an explicit INTEGER PRIMARY KEY,
      -- unlike an implicit rowid, survives VACUUM).
      CREATE TABLE tasks (
        seq              INTEGER PRIMARY KEY,
        id               TEXT NOT NULL UNIQUE,
        kind             TEXT NOT NULL,
        vm               TEXT,
        host             TEXT,
        state            TEXT NOT NULL,
        progress         REAL NOT NULL,
        message          TEXT,
        params           TEXT NOT NULL,  -- JSON object
        result           TEXT,           -- JSON
        error            TEXT,           -- JSON TaskError
        parent_id        TEXT,
        cancel_requested INTEGER NOT NULL,
        created_at       TEXT NOT NULL,
        started_at       TEXT,
        ended_at         TEXT
      ) STRICT;
      CREATE INDEX tasks_state ON tasks (state);
      CREATE INDEX tasks_kind ON tasks (kind);
      CREATE INDEX tasks_vm ON tasks (vm);
      CREATE INDEX tasks_host ON tasks (host);
      CREATE INDEX tasks_parent ON tasks (parent_id);
      CREATE INDEX tasks_created ON tasks (created_at, seq);

      -- AUTOINCREMENT: ids are never reused, even after pruning, so afterId paging stays valid.
      CREATE TABLE events (
        id       INTEGER PRIMARY KEY AUTOINCREMENT,
        type     TEXT NOT NULL,
        at       TEXT NOT NULL,
        severity TEXT NOT NULL,
        message  TEXT NOT NULL,
        host     TEXT,
        vm       TEXT,
        task_id  TEXT,
        data     TEXT                    -- JSON
      ) STRICT;
      CREATE INDEX events_type ON events (type);
      CREATE INDEX events_vm ON events (vm);
      CREATE INDEX events_host ON events (host);
      CREATE INDEX events_task ON events (task_id);

      CREATE TABLE networks (
        name    TEXT PRIMARY KEY,
        vni     INTEGER NOT NULL,
        subnet  TEXT NOT NULL,
        gateway TEXT
      ) STRICT;

      CREATE TABLE datastores (
        id    TEXT PRIMARY KEY,
        hosts TEXT NOT NULL              -- JSON string[]
      ) STRICT;
    `,
  },
];

/** The schema version this code writes: the last migration's. */
export const SCHEMA_VERSION = MIGRATIONS.length;
