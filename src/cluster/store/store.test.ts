/**
 * Runs the conformance suite against every InventoryStore, then the tests only SQLite needs:
 * persistence, migrations, refusing foreign or newer files, and CAS across two connections.
 */
import assert from "node:assert/strict";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import Database from "better-sqlite3";
import { HopError } from "../../common/errors.js";
import type { HostRow, TaskRow, VmRow } from "../types.js";
import { MemoryStore, SqliteStore } from "./index.js";
import { MIGRATIONS, type Migration } from "./migrations.js";
import { storeSuite } from "./suite.js";

const dir = await mkdtemp(join(tmpdir(), "hop-store-"));
after(async () => {
  await rm(dir, { recursive: true, force: true });
});
let files = 0;
/** A new database path in the temp dir. */
const newPath = (): string => join(dir, `inventory-${++files}.db`);

storeSuite("MemoryStore", async () => new MemoryStore());
storeSuite("SqliteStore (:memory:)", async () => new SqliteStore({ path: ":memory:" }));
storeSuite("SqliteStore (file)", async () => new SqliteStore({ path: newPath() }));

/** Reads a database file with a plain connection, bypassing the store. */
function inspect<T>(path: string, fn: (db: Database.Database) => T): T {
  const db = new Database(path);
  try {
    return fn(db);
  } finally {
    db.close();
  }
}

const userVersion = (db: Database.Database): number => db.pragma("user_version", { simple: true }) as number;

/** An assert.rejects validator: a HopError with this code. */
function hopError(code: string): (err: unknown) => boolean {
  return (err) => {
    assert.ok(err instanceof HopError, `expected a HopError, got ${String(err)}`);
    assert.equal(err.code, code);
    return true;
  };
}

const host: HostRow = { name: "h1", url: "http://h1:7070", vtep: "10.0.0.1:4789", datastoreId: "ds1", version: "0.1.0", capacity: { cpus: 2, memoryMiB: 2048 }, connection: "connected", maintenance: "none", joinedAt: "2026-01-01T00:00:00.000Z" };
const vm: VmRow = {
  name: "vm1",
  uuid: "u1",
  host: "h1",
  generation: 1,
  desiredPower: "running",
  state: "running",
  config: { name: "vm1", uuid: "u1", memoryMiB: 128, mac: "02:68:6f:00:00:01", boot: "cold", createdAt: "2026-01-01T00:00:00.000Z" },
  updatedAt: "2026-01-01T00:00:00.000Z",
};
const task: TaskRow = { id: "t1", kind: "vm.create", vm: "vm1", state: "succeeded", progress: 1, params: { name: "vm1" }, result: { ok: true }, cancelRequested: false, createdAt: "2026-01-01T00:00:00.000Z" };

void describe("SqliteStore only", () => {
  void it("keeps everything across close and reopen of a file, in WAL mode", async () => {
    const path = newPath();
    const first = new SqliteStore({ path });
    await first.init();
    await first.putHost(host);
    await first.putVm(vm);
    await first.createTask(task);
    const events = [await first.appendEvent({ type: "host.joined", at: host.joinedAt, severity: "info", message: "joined", host: "h1" })];
    await first.putNetwork({ name: "net1", vni: 10, subnet: "10.1.0.0/24" });
    await first.putDatastore({ id: "ds1", hosts: ["h1"] });
    await first.setMeta("managerId", "m-1");
    await first.close();

    const second = new SqliteStore({ path });
    await second.init();
    try {
      assert.deepStrictEqual(await second.listHosts(), [host]);
      assert.deepStrictEqual(await second.listVms(), [vm]);
      assert.deepStrictEqual(await second.listTasks(), [task]);
      assert.deepStrictEqual(await second.listEvents(), events);
      assert.deepStrictEqual(await second.listNetworks(), [{ name: "net1", vni: 10, subnet: "10.1.0.0/24" }]);
      assert.deepStrictEqual(await second.listDatastores(), [{ id: "ds1", hosts: ["h1"] }]);
      assert.equal(await second.getMeta("managerId"), "m-1");
      const next = await second.appendEvent({ type: "x", at: host.joinedAt, severity: "info", message: "x" });
      assert.ok(next.id > (events[0]?.id ?? Infinity), "event ids continue after a reopen");
    } finally {
      await second.close();
    }
    assert.equal(
      inspect(path, (db) => db.pragma("journal_mode", { simple: true })),
      "wal",
    );
  });

  void it("applies migrations once: user_version is their count, a reopen runs none, a newer list upgrades", async () => {
    const path = newPath();
    const store = new SqliteStore({ path });
    await store.init();
    assert.equal(await store.schemaVersion(), MIGRATIONS.length);
    await store.setMeta("kept", "yes");
    await store.close();
    assert.equal(inspect(path, userVersion), MIGRATIONS.length);

    let runs = 0;
    const extra: Migration = {
      version: MIGRATIONS.length + 1,
      name: "test: add a column",
      up: (db) => {
        runs++;
        db.exec("ALTER TABLE meta ADD COLUMN note TEXT");
      },
    };
    const newer = [...MIGRATIONS, extra];
    for (let open = 0; open < 2; open++) {
      const upgraded = new SqliteStore({ path, migrations: newer });
      await upgraded.init();
      assert.equal(await upgraded.schemaVersion(), newer.length);
      assert.equal(await upgraded.getMeta("kept"), "yes");
      await upgraded.close();
    }
    assert.equal(runs, 1, "the new migration ran once, across two opens");
    assert.equal(inspect(path, userVersion), newer.length);

    // The older code now finds a database newer than it knows.
    await assert.rejects(new SqliteStore({ path }).init(), hopError("STORE_SCHEMA_TOO_NEW"));
  });

  void it("refuses a database with a higher user_version and leaves it untouched", async () => {
    const path = newPath();
    inspect(path, (db) => db.pragma(`user_version = ${MIGRATIONS.length + 5}`));
    const store = new SqliteStore({ path });
    await assert.rejects(store.init(), (err: unknown) => {
      assert.ok(err instanceof HopError);
      assert.equal(err.code, "STORE_SCHEMA_TOO_NEW");
      assert.match(err.message, new RegExp(`version ${MIGRATIONS.length + 5}`));
      return true;
    });
    await assert.rejects(store.listHosts(), hopError("STORE_NOT_OPEN"));
    inspect(path, (db) => {
      assert.equal(userVersion(db), MIGRATIONS.length + 5);
      assert.deepStrictEqual(db.prepare("SELECT name FROM sqlite_master").all(), []);
    });
  });

  void it("a failing migration rolls back the whole batch", async () => {
    const path = newPath();
    const broken: Migration = { version: MIGRATIONS.length + 1, name: "test: broken", up: "CREATE TABLE extra (x); SELECT nonsense FROM nowhere;" };
    await assert.rejects(new SqliteStore({ path, migrations: [...MIGRATIONS, broken] }).init(), (err: unknown) => {
      assert.ok(err instanceof HopError);
      assert.equal(err.code, "STORE_MIGRATION_FAILED");
      assert.ok(err.cause instanceof Error, "the SQLite error is kept as the cause");
      return true;
    });
    inspect(path, (db) => {
      assert.equal(userVersion(db), 0);
      assert.deepStrictEqual(db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all(), []);
    });
    const store = new SqliteStore({ path });
    await store.init();
    assert.equal(await store.schemaVersion(), MIGRATIONS.length);
    await store.close();
  });

  void it("refuses a file that is not a database, and a path it cannot create, with STORE_OPEN_FAILED", async () => {
    const notDb = join(dir, "not-a-database.db");
    const text = "this is a text file, not a SQLite database; ".repeat(20);
    await writeFile(notDb, text);
    const unopenable = [notDb, join(dir, "missing", "dir", "inventory.db")];
    const aDirectory = join(dir, "a-directory.db");
    await mkdir(aDirectory);
    unopenable.push(aDirectory);
    for (const path of unopenable) {
      await assert.rejects(new SqliteStore({ path }).init(), (err: unknown) => {
        assert.ok(err instanceof HopError, `${path}: ${String(err)}`);
        assert.equal(err.code, "STORE_OPEN_FAILED", path);
        assert.ok(err.cause instanceof Error, "the cause is kept");
        assert.ok(err.message.includes(path));
        return true;
      });
    }
    assert.equal(await readFile(notDb, "utf8"), text, "the foreign file is left as it was");
  });

  void it("concurrent swapVmOwner on two connections with the same expected generation: exactly one wins", async () => {
    const path = newPath();
    const a = new SqliteStore({ path });
    const b = new SqliteStore({ path });
    await Promise.all([a.init(), b.init()]);
    try {
      await a.putVm(vm);
      const results = await Promise.all(Array.from({ length: 10 }, (_, i) => (i % 2 === 0 ? a : b).swapVmOwner("vm1", 1, { host: `h${i}`, generation: 2 })));
      const winners = results.filter((r) => r !== undefined);
      assert.equal(winners.length, 1);
      assert.deepStrictEqual(await b.getVm("vm1"), winners[0]);
      assert.equal(winners[0]?.generation, 2);
    } finally {
      await a.close();
      await b.close();
    }
  });
});
