/**
 * The conformance suite every InventoryStore passes (store.test.ts runs it against each one).
 *
 * Rows are compared with assert.deepStrictEqual, which tells an absent optional field from a key
 * holding `undefined`: under exactOptionalPropertyTypes a row must come back exactly as put.
 */
import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, it } from "node:test";
import { HopError } from "../../common/errors.js";
import type { VmConfig } from "../../vm/config.js";
import type { ClusterEvent, HostRow, TaskRow, VmRow } from "../types.js";
import type { InventoryStore, NewEvent } from "./store.js";

const T0 = "2026-01-01T00:00:00.000Z";

/** T0 plus `seconds`, as an ISO timestamp. */
function at(seconds: number): string {
  return new Date(Date.parse(T0) + seconds * 1000).toISOString();
}

// ---- fixtures: "minimal" rows have no optional field, "full" rows have them all ----

function minimalHost(name: string): HostRow {
  return { name, url: `http://${name}:7070`, datastoreId: "ds1", version: "0.1.0", capacity: { cpus: 4, memoryMiB: 8192 }, connection: "connected", maintenance: "none", joinedAt: T0 };
}

function fullHost(name: string): HostRow {
  return {
    ...minimalHost(name),
    migrationAddress: { host: "10.0.0.1", port: 7071 },
    vtep: "10.0.0.1:4789",
    load: { cpuPct: 150.5, memUsedMiB: 512, rssMiB: 600.25, vmCount: 3 },
    lastHeartbeatAt: at(5),
  };
}

function minimalConfig(name: string): VmConfig {
  return { name, uuid: `uuid-${name}`, memoryMiB: 128, mac: "02:68:6f:00:00:01", boot: "template", createdAt: T0 };
}

function fullConfig(name: string): VmConfig {
  return { ...minimalConfig(name), ip: "10.1.0.5/24", gw: "10.1.0.1", network: "net1", disk: { path: `/ds/${name}.img`, sizeMiB: 64 }, host: "h1", generation: 3 };
}

function minimalVm(name: string, host = "h1"): VmRow {
  return { name, uuid: `uuid-${name}`, host, generation: 1, desiredPower: "running", state: "running", config: minimalConfig(name), updatedAt: T0 };
}

function fullVm(name: string, host = "h1"): VmRow {
  return { ...minimalVm(name, host), config: fullConfig(name), cpuPct: 12.5, rssMiB: 140 };
}

function minimalTask(id: string, createdAt = T0): TaskRow {
  return { id, kind: "vm.start", state: "queued", progress: 0, params: {}, cancelRequested: false, createdAt };
}

function fullTask(id: string): TaskRow {
  return {
    ...minimalTask(id),
    kind: "vm.migrate",
    vm: "vm1",
    host: "h1",
    state: "failed",
    progress: 0.5,
    message: "round 3: 12.5 MiB dirty",
    params: { to: "h2", options: { maxDowntimeMs: 300 }, list: [1, "a", null, true] },
    result: { bytes: 123 },
    error: { code: "MIGRATION_FAILED", message: "boom" },
    parentId: "parent",
    cancelRequested: true,
    startedAt: at(1),
    endedAt: at(2),
  };
}

function event(type: string, extra: Partial<NewEvent> = {}): NewEvent {
  return { type, at: T0, severity: "info", message: `${type} happened`, ...extra };
}

/** An assert.rejects validator: a HopError with this code (and status). */
function hopError(code: string, status?: number): (err: unknown) => boolean {
  return (err) => {
    assert.ok(err instanceof HopError, `expected a HopError, got ${String(err)}`);
    assert.equal(err.code, code);
    if (status !== undefined) assert.equal(err.status, status);
    return true;
  };
}

const ids = (rows: readonly { id: string | number }[]): (string | number)[] => rows.map((r) => r.id);
const names = (rows: readonly { name: string }[]): string[] => rows.map((r) => r.name);

/** Registers the suite for one implementation; `make` returns a new, empty, not yet initialised store. */
export function storeSuite(name: string, make: () => Promise<InventoryStore>): void {
  void describe(`InventoryStore conformance: ${name}`, () => {
    let store: InventoryStore;
    beforeEach(async () => {
      store = await make();
      await store.init();
    });
    afterEach(async () => {
      await store.close();
    });

    void describe("lifecycle", () => {
      void it("reports a schema version and init() is idempotent", async () => {
        const version = await store.schemaVersion();
        assert.ok(Number.isInteger(version) && version >= 1, `schema version ${version}`);
        await store.putHost(minimalHost("h1"));
        await store.init();
        assert.equal(await store.schemaVersion(), version);
        assert.deepStrictEqual(await store.getHost("h1"), minimalHost("h1"));
      });

      void it("rejects calls with STORE_NOT_OPEN before init and after close; close is idempotent", async () => {
        const fresh = await make();
        await assert.rejects(fresh.listHosts(), hopError("STORE_NOT_OPEN"));
        await store.close();
        await store.close();
        await assert.rejects(store.getHost("h1"), hopError("STORE_NOT_OPEN"));
        await assert.rejects(store.appendEvent(event("x")), hopError("STORE_NOT_OPEN"));
      });
    });

    void describe("hosts", () => {
      void it("round-trips minimal and full rows exactly", async () => {
        await store.putHost(minimalHost("h1"));
        await store.putHost(fullHost("h2"));
        assert.deepStrictEqual(await store.getHost("h1"), minimalHost("h1"));
        assert.deepStrictEqual(await store.getHost("h2"), fullHost("h2"));
        assert.equal(await store.getHost("nope"), undefined);
      });

      void it("put replaces the whole row, dropping optional fields the new one lacks", async () => {
        await store.putHost(fullHost("h1"));
        await store.putHost(minimalHost("h1"));
        assert.deepStrictEqual(await store.getHost("h1"), minimalHost("h1"));
      });

      void it("lists by name", async () => {
        for (const n of ["h3", "h1", "h2"]) await store.putHost(n === "h2" ? fullHost(n) : minimalHost(n));
        assert.deepStrictEqual(await store.listHosts(), [minimalHost("h1"), fullHost("h2"), minimalHost("h3")]);
      });

      void it("update merges the given fields and returns the stored row", async () => {
        await store.putHost(fullHost("h1"));
        const patch: Partial<Omit<HostRow, "name">> = { connection: "down", capacity: { cpus: 8, memoryMiB: 1024 } };
        const updated = await store.updateHost("h1", patch);
        assert.deepStrictEqual(updated, { ...fullHost("h1"), ...patch });
        assert.deepStrictEqual(await store.getHost("h1"), updated);

        await store.putHost(minimalHost("h2"));
        assert.deepStrictEqual(await store.updateHost("h2", { vtep: "10.0.0.2:4789" }), { ...minimalHost("h2"), vtep: "10.0.0.2:4789" });
      });

      void it("update ignores undefined values and the name key", async () => {
        await store.putHost(fullHost("h1"));
        const sneaky = { vtep: undefined, name: "renamed", url: "http://h1:9999" } as object as Partial<Omit<HostRow, "name">>;
        assert.deepStrictEqual(await store.updateHost("h1", sneaky), { ...fullHost("h1"), url: "http://h1:9999" });
        assert.equal(await store.getHost("renamed"), undefined);
      });

      void it("update of a missing host throws STORE_NOT_FOUND (404)", async () => {
        await assert.rejects(store.updateHost("nope", { connection: "down" }), hopError("STORE_NOT_FOUND", 404));
      });

      void it("delete reports whether the host existed", async () => {
        await store.putHost(minimalHost("h1"));
        assert.equal(await store.deleteHost("h1"), true);
        assert.equal(await store.getHost("h1"), undefined);
        assert.equal(await store.deleteHost("h1"), false);
      });

      void it("never shares objects with callers", async () => {
        const input = fullHost("h1");
        await store.putHost(input);
        input.capacity.cpus = 99;
        const got = await store.getHost("h1");
        assert.ok(got?.load);
        got.load.vmCount = 99;
        const updated = await store.updateHost("h1", { version: "0.2.0" });
        updated.capacity.memoryMiB = 1;
        const [listed] = await store.listHosts();
        assert.ok(listed?.migrationAddress);
        listed.migrationAddress.port = 1;
        assert.deepStrictEqual(await store.getHost("h1"), { ...fullHost("h1"), version: "0.2.0" });
      });
    });

    void describe("VMs", () => {
      void it("round-trips minimal and full rows exactly (config included)", async () => {
        await store.putVm(minimalVm("vm1"));
        await store.putVm(fullVm("vm2"));
        assert.deepStrictEqual(await store.getVm("vm1"), minimalVm("vm1"));
        assert.deepStrictEqual(await store.getVm("vm2"), fullVm("vm2"));
        assert.equal(await store.getVm("nope"), undefined);
        await store.putVm(minimalVm("vm2"));
        assert.deepStrictEqual(await store.getVm("vm2"), minimalVm("vm2"));
      });

      void it("lists by name, optionally by owner", async () => {
        await store.putVm(minimalVm("vm3", "h2"));
        await store.putVm(fullVm("vm1", "h1"));
        await store.putVm(minimalVm("vm2", "h2"));
        assert.deepStrictEqual(await store.listVms(), [fullVm("vm1", "h1"), minimalVm("vm2", "h2"), minimalVm("vm3", "h2")]);
        assert.deepStrictEqual(names(await store.listVms({ host: "h2" })), ["vm2", "vm3"]);
        assert.deepStrictEqual(await store.listVms({ host: "h9" }), []);
      });

      void it("update merges, and throws STORE_NOT_FOUND (404) for a missing VM", async () => {
        await store.putVm(minimalVm("vm1"));
        const updated = await store.updateVm("vm1", { state: "stopped", desiredPower: "stopped", cpuPct: 0, updatedAt: at(9) });
        assert.deepStrictEqual(updated, { ...minimalVm("vm1"), state: "stopped", desiredPower: "stopped", cpuPct: 0, updatedAt: at(9) });
        assert.deepStrictEqual(await store.getVm("vm1"), updated);
        await assert.rejects(store.updateVm("nope", { state: "stopped" }), hopError("STORE_NOT_FOUND", 404));
      });

      void it("swapVmOwner moves the VM when the generation matches", async () => {
        await store.putVm(fullVm("vm1"));
        const moved = await store.swapVmOwner("vm1", 1, { host: "h2", generation: 2 });
        assert.deepStrictEqual(moved, { ...fullVm("vm1"), host: "h2", generation: 2 });
        assert.deepStrictEqual(await store.getVm("vm1"), moved);

        const config = { ...minimalConfig("vm1"), host: "h3", generation: 3 };
        const again = await store.swapVmOwner("vm1", 2, { host: "h3", generation: 3, config });
        assert.deepStrictEqual(again, { ...fullVm("vm1"), host: "h3", generation: 3, config });
        assert.deepStrictEqual(await store.getVm("vm1"), again);
      });

      void it("swapVmOwner refuses a stale generation and a missing VM", async () => {
        await store.putVm(minimalVm("vm1"));
        assert.equal(await store.swapVmOwner("vm1", 0, { host: "h2", generation: 2 }), undefined);
        assert.ok(await store.swapVmOwner("vm1", 1, { host: "h2", generation: 2 }));
        assert.equal(await store.swapVmOwner("vm1", 1, { host: "h3", generation: 2 }), undefined, "the same expected generation twice");
        assert.deepStrictEqual(await store.getVm("vm1"), { ...minimalVm("vm1"), host: "h2", generation: 2 });
        assert.equal(await store.swapVmOwner("nope", 1, { host: "h2", generation: 2 }), undefined);
      });

      void it("concurrent swaps with the same expected generation: exactly one wins", async () => {
        await store.putVm(minimalVm("vm1"));
        const results = await Promise.all(Array.from({ length: 8 }, (_, i) => store.swapVmOwner("vm1", 1, { host: `h${i}`, generation: 2 })));
        const winners = results.filter((r) => r !== undefined);
        assert.equal(winners.length, 1);
        assert.deepStrictEqual(await store.getVm("vm1"), winners[0]);
      });

      void it("delete reports whether the VM existed, and rows are not shared", async () => {
        const input = fullVm("vm1");
        await store.putVm(input);
        input.config.memoryMiB = 1;
        const got = await store.getVm("vm1");
        assert.ok(got?.config.disk);
        got.config.disk.sizeMiB = 1;
        assert.deepStrictEqual(await store.getVm("vm1"), fullVm("vm1"));
        assert.equal(await store.deleteVm("vm1"), true);
        assert.equal(await store.getVm("vm1"), undefined);
        assert.equal(await store.deleteVm("vm1"), false);
      });
    });

    void describe("tasks", () => {
      void it("round-trips minimal and full rows exactly, a null result included", async () => {
        const withNull: TaskRow = { ...minimalTask("t3"), result: null };
        for (const t of [minimalTask("t1"), fullTask("t2"), withNull]) await store.createTask(t);
        assert.deepStrictEqual(await store.getTask("t1"), minimalTask("t1"));
        assert.deepStrictEqual(await store.getTask("t2"), fullTask("t2"));
        assert.deepStrictEqual(await store.getTask("t3"), withNull);
        assert.equal(await store.getTask("nope"), undefined);
      });

      void it("creating an existing id throws STORE_CONFLICT (409) and keeps the original", async () => {
        await store.createTask(fullTask("t1"));
        await assert.rejects(store.createTask(minimalTask("t1")), hopError("STORE_CONFLICT", 409));
        assert.deepStrictEqual(await store.getTask("t1"), fullTask("t1"));
      });

      void it("lists newest first: createdAt, then creation order", async () => {
        for (const [id, s] of [["a", 1], ["b", 3], ["c", 2], ["d", 3], ["e", 0]] as const) await store.createTask(minimalTask(id, at(s)));
        assert.deepStrictEqual(ids(await store.listTasks()), ["d", "b", "c", "a", "e"]);
      });

      void it("filters by state (one or a list), kind, vm, host and parentId, and limits", async () => {
        const rows: TaskRow[] = [
          { ...minimalTask("t1", at(1)), vm: "vm1", host: "h1" },
          { ...minimalTask("t2", at(2)), kind: "vm.migrate", state: "running", vm: "vm1", host: "h2", parentId: "p" },
          { ...minimalTask("t3", at(3)), kind: "vm.migrate", state: "succeeded", vm: "vm2", host: "h1", parentId: "p" },
          { ...minimalTask("t4", at(4)), kind: "host.maintenance.enter", state: "failed", host: "h1" },
          { ...minimalTask("t5", at(5)), kind: "vm.stop", state: "cancelled", vm: "vm2" },
        ];
        for (const t of rows) await store.createTask(t);
        assert.deepStrictEqual(await store.listTasks({ state: "running" }), [rows[1]]);
        assert.deepStrictEqual(ids(await store.listTasks({ state: ["queued", "failed"] })), ["t4", "t1"]);
        assert.deepStrictEqual(await store.listTasks({ state: [] }), []);
        assert.deepStrictEqual(ids(await store.listTasks({ kind: "vm.migrate" })), ["t3", "t2"]);
        assert.deepStrictEqual(ids(await store.listTasks({ vm: "vm1" })), ["t2", "t1"]);
        assert.deepStrictEqual(ids(await store.listTasks({ host: "h1" })), ["t4", "t3", "t1"]);
        assert.deepStrictEqual(ids(await store.listTasks({ parentId: "p" })), ["t3", "t2"]);
        assert.deepStrictEqual(ids(await store.listTasks({ kind: "vm.migrate", host: "h1", state: ["succeeded", "running"] })), ["t3"]);
        assert.deepStrictEqual(ids(await store.listTasks({ host: "h9" })), []);
        assert.deepStrictEqual(ids(await store.listTasks({ limit: 2 })), ["t5", "t4"]);
        assert.deepStrictEqual(ids(await store.listTasks({ limit: 0 })), []);
      });

      void it("returns 100 tasks by default and at most 1000", async () => {
        for (let i = 0; i < 1005; i++) await store.createTask(minimalTask(`t${i}`, at(i)));
        const page = await store.listTasks();
        assert.equal(page.length, 100);
        assert.equal(page[0]?.id, "t1004");
        const all = await store.listTasks({ limit: 5000 });
        assert.equal(all.length, 1000);
        assert.equal(all[999]?.id, "t5");
      });

      void it("update merges without moving the task, and throws STORE_NOT_FOUND (404) for a missing one", async () => {
        await store.createTask(minimalTask("old", at(1)));
        await store.createTask(minimalTask("new", at(2)));
        const patch: Partial<Omit<TaskRow, "id">> = { state: "running", progress: 0.25, message: "copying", startedAt: at(3), cancelRequested: true, result: { partial: [1] } };
        const updated = await store.updateTask("old", patch);
        assert.deepStrictEqual(updated, { ...minimalTask("old", at(1)), ...patch });
        assert.deepStrictEqual(await store.getTask("old"), updated);
        assert.deepStrictEqual(ids(await store.listTasks()), ["new", "old"]);
        await assert.rejects(store.updateTask("nope", { state: "failed" }), hopError("STORE_NOT_FOUND", 404));
      });
    });

    void describe("events", () => {
      void it("append assigns increasing ids and returns the event as listed; optional fields round-trip", async () => {
        const minimal = await store.appendEvent(event("host.joined"));
        const full = await store.appendEvent(event("vm.migrated", { severity: "warning", host: "h1", vm: "vm1", taskId: "t1", data: { from: "h1", to: "h2", rounds: [1, 2] } }));
        const withNull = await store.appendEvent(event("vm.state", { data: null }));
        assert.ok(minimal.id < full.id && full.id < withNull.id);
        assert.deepStrictEqual(minimal, { ...event("host.joined"), id: minimal.id });
        assert.deepStrictEqual(withNull, { ...event("vm.state", { data: null }), id: withNull.id });
        assert.deepStrictEqual(await store.listEvents(), [withNull, full, minimal]);
      });

      void it("lists the newest first without afterId, and pages oldest first with it", async () => {
        const appended: ClusterEvent[] = [];
        for (let i = 0; i < 25; i++) appended.push(await store.appendEvent(event(`e.${i}`)));
        assert.deepStrictEqual(await store.listEvents({ limit: 3 }), appended.slice(-3).reverse());

        const paged: ClusterEvent[] = [];
        let afterId = 0;
        for (;;) {
          const page = await store.listEvents({ afterId, limit: 10 });
          paged.push(...page);
          if (page.length < 10) break;
          afterId = page[page.length - 1]?.id ?? afterId;
        }
        assert.deepStrictEqual(paged, appended);
        assert.deepStrictEqual(await store.listEvents({ afterId: appended[9]?.id ?? 0, limit: 2 }), appended.slice(10, 12));
        assert.deepStrictEqual(await store.listEvents({ afterId: appended[24]?.id ?? 0 }), []);
      });

      void it("filters by type, typePrefix, vm, host, taskId and severity", async () => {
        const a = await store.appendEvent(event("host.joined", { host: "h1" }));
        const b = await store.appendEvent(event("host.down", { host: "h2", severity: "error" }));
        const c = await store.appendEvent(event("hostile.takeover", { severity: "warning" }));
        const d = await store.appendEvent(event("vm.migrated", { vm: "vm1", host: "h1", taskId: "t1" }));
        const e = await store.appendEvent(event("a*b", { vm: "vm2", taskId: "t1" }));
        const f = await store.appendEvent(event("ab[c]?", { vm: "vm1" }));
        assert.deepStrictEqual(await store.listEvents({ type: "host.down" }), [b]);
        assert.deepStrictEqual(await store.listEvents({ type: "host." }), []);
        assert.deepStrictEqual(await store.listEvents({ typePrefix: "host." }), [b, a]);
        assert.deepStrictEqual(await store.listEvents({ typePrefix: "host" }), [c, b, a]);
        assert.deepStrictEqual(await store.listEvents({ typePrefix: "a*" }), [e], "wildcards in a prefix are literal");
        assert.deepStrictEqual(await store.listEvents({ typePrefix: "ab[c]?" }), [f]);
        assert.deepStrictEqual(await store.listEvents({ typePrefix: "HOST." }), [], "prefixes are case-sensitive");
        assert.deepStrictEqual(await store.listEvents({ vm: "vm1" }), [f, d]);
        assert.deepStrictEqual(await store.listEvents({ host: "h1" }), [d, a]);
        assert.deepStrictEqual(await store.listEvents({ taskId: "t1" }), [e, d]);
        assert.deepStrictEqual(await store.listEvents({ severity: "error" }), [b]);
        assert.deepStrictEqual(await store.listEvents({ severity: "info", host: "h1", afterId: a.id }), [d]);
        assert.deepStrictEqual(await store.listEvents({ typePrefix: "host", afterId: 0, limit: 2 }), [a, b]);
      });

      void it("returns 100 events by default and at most 1000", async () => {
        for (let i = 0; i < 1005; i++) await store.appendEvent(event("tick"));
        const newest = await store.listEvents();
        assert.equal(newest.length, 100);
        assert.ok((newest[0]?.id ?? 0) > (newest[1]?.id ?? 0));
        assert.equal((await store.listEvents({ limit: 5000 })).length, 1000);
        const oldest = await store.listEvents({ afterId: 0, limit: 5000 });
        assert.equal(oldest.length, 1000);
        assert.ok((oldest[0]?.id ?? 0) < (oldest[1]?.id ?? 0));
      });

      void it("prune keeps the newest events, and ids are never reused", async () => {
        const appended: ClusterEvent[] = [];
        for (let i = 0; i < 10; i++) appended.push(await store.appendEvent(event(`e.${i}`)));
        assert.equal(await store.pruneEvents(4), 6);
        assert.deepStrictEqual(await store.listEvents(), appended.slice(-4).reverse());
        assert.equal(await store.pruneEvents(10), 0);
        assert.equal(await store.pruneEvents(0), 4);
        assert.deepStrictEqual(await store.listEvents(), []);
        const next = await store.appendEvent(event("after"));
        assert.ok(next.id > (appended[9]?.id ?? Infinity), `id ${next.id} reused`);
        await assert.rejects(store.pruneEvents(-1), hopError("STORE_BAD_ARGUMENT", 400));
      });
    });

    void describe("networks, datastores and meta", () => {
      void it("networks: put replaces, list by name, gateway absent or present", async () => {
        await store.putNetwork({ name: "net2", vni: 20, subnet: "10.2.0.0/24", gateway: "10.2.0.1" });
        await store.putNetwork({ name: "net1", vni: 10, subnet: "10.1.0.0/24" });
        assert.deepStrictEqual(await store.listNetworks(), [
          { name: "net1", vni: 10, subnet: "10.1.0.0/24" },
          { name: "net2", vni: 20, subnet: "10.2.0.0/24", gateway: "10.2.0.1" },
        ]);
        await store.putNetwork({ name: "net2", vni: 21, subnet: "10.3.0.0/24" });
        assert.deepStrictEqual((await store.listNetworks())[1], { name: "net2", vni: 21, subnet: "10.3.0.0/24" });
      });

      void it("datastores: put replaces, list by id, host order kept", async () => {
        await store.putDatastore({ id: "ds2", hosts: [] });
        await store.putDatastore({ id: "ds1", hosts: ["h2", "h1"] });
        assert.deepStrictEqual(await store.listDatastores(), [
          { id: "ds1", hosts: ["h2", "h1"] },
          { id: "ds2", hosts: [] },
        ]);
        await store.putDatastore({ id: "ds2", hosts: ["h3"] });
        assert.deepStrictEqual((await store.listDatastores())[1], { id: "ds2", hosts: ["h3"] });
      });

      void it("meta: undefined until set, then the last value", async () => {
        assert.equal(await store.getMeta("managerId"), undefined);
        await store.setMeta("managerId", "m-1");
        await store.setMeta("other", "");
        await store.setMeta("managerId", "m-2");
        assert.equal(await store.getMeta("managerId"), "m-2");
        assert.equal(await store.getMeta("other"), "");
      });
    });
  });
}
