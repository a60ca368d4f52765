/**
 * The manager's inventory logic without guests: joins and heartbeats merged into the inventory,
 * the release list that fences stale copies, placement with admission control, and checks of
 * the lease timings. (The whole cluster with real guests is in cluster.test.ts.)
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { HopError } from "../common/errors.js";
import { createLogger } from "../common/log.js";
import { HaMonitor } from "./ha.js";
import { checkTimings } from "./index.js";
import { Manager } from "./manager.js";
import type { JoinRequest, VmReport } from "./protocol.js";
import { MemoryStore } from "./store/index.js";
import { expectCode } from "../common/testing.js";

let m: Manager;

function report(name: string, generation: number, state = "running", memoryMiB = 128): VmReport {
  return { name, uuid: `uuid-${name}`, state, generation, memoryMiB, config: { name, uuid: `uuid-${name}`, memoryMiB, mac: "02:68:6f:00:00:01", boot: "template", createdAt: "2026-01-01T00:00:00Z", generation } };
}

function join(name: string, vms: VmReport[], memoryMiB = 512): JoinRequest {
  // Port 9 (discard) on loopback: nothing listens, so the manager's event stream to it just fails.
  return { name, url: "http://127.0.0.1:9", version: "0.1.0", datastoreId: "ds1", capacity: { cpus: 2, memoryMiB }, vms };
}

const load = { cpuPct: 0, memUsedMiB: 0, rssMiB: 0, vmCount: 0 };

void describe("Manager inventory", () => {
  before(async () => {
    m = new Manager({ store: new MemoryStore(), token: "t".repeat(32), version: "0.1.0", heartbeatMs: 1000, leaseMs: 5000, graceMs: 8000, maxMigrationsPerHost: 4, maxMigrationsPerCluster: 8, log: createLogger("test") });
    await m.init();
  });
  after(() => m.close());

  void test("a join records the host, its datastore and its VMs, and grants a lease", async () => {
    const r = await m.join(join("a", [report("v1", 1), report("v2", 1, "stopped")]));
    assert.equal(r.leaseMs, 5000);
    assert.equal(r.heartbeatMs, 1000);
    assert.deepEqual(r.release, []);
    assert.equal(r.managerId, m.managerId);
    const host = await m.getHost("a");
    assert.equal(host.connection, "connected");
    assert.deepEqual(host.vms, ["v1", "v2"]);
    assert.equal(host.reservedMiB, 128, "only the running VM reserves memory");
    const v1 = await m.getVm("v1");
    assert.equal(v1.desiredPower, "running");
    assert.equal((await m.getVm("v2")).desiredPower, "stopped");
    assert.deepEqual((await m.store.listDatastores()).map((d) => d.hosts), [["a"]]);
  });

  void test("a newer generation reported by another host moves the VM; the stale copy is released", async () => {
    await m.join(join("b", []));
    const hb = await m.heartbeat("b", { seq: 1, load, vms: [report("v1", 2)] });
    assert.deepEqual(hb.release, []);
    const v1 = await m.getVm("v1");
    assert.equal(v1.host, "b");
    assert.equal(v1.generation, 2);
    // Host a still reports its old copy: it must forget it.
    const ha = await m.heartbeat("a", { seq: 1, load, vms: [report("v1", 1, "stopped"), report("v2", 1, "stopped")] });
    assert.deepEqual(ha.release, ["v1"]);
    // A VM migrating out is left alone until the migration ends; one arriving is not the host's yet.
    const hb2 = await m.heartbeat("a", { seq: 2, load, vms: [report("v1", 1, "migrating"), report("v2", 1, "stopped")] });
    assert.deepEqual(hb2.release, []);
    await m.heartbeat("a", { seq: 3, load, vms: [report("v2", 1, "stopped"), report("v9", 5, "incoming")] });
    await expectCode(m.getVm("v9"), "VM_NOT_FOUND");
  });

  void test("a VM with the same name but another uuid is released, never merged", async () => {
    const other = { ...report("v2", 3), uuid: "someone-else" };
    const r = await m.heartbeat("b", { seq: 2, load, vms: [report("v1", 2), other] });
    assert.deepEqual(r.release, ["v2"]);
    assert.equal((await m.getVm("v2")).host, "a");
  });

  void test("placement: admission control, maintenance and bad hosts", async () => {
    // a: 512 MiB, nothing running; b: 512 MiB, v1 (128) running.
    assert.equal(await m.place(256, { admission: true }), "a");
    await expectCode(m.place(1024, { admission: true }), "INSUFFICIENT_CAPACITY");
    await expectCode(m.place(128, { host: "zz", admission: true }), "HOST_NOT_FOUND");
    await m.setHost("a", { maintenance: "in" });
    assert.equal(await m.place(128, { admission: true }), "b");
    await expectCode(m.place(128, { host: "a", admission: true }), "HOST_UNAVAILABLE");
    await m.setHost("a", { maintenance: "none" });
    const release = m.reserve("a", 448);
    await expectCode(m.place(128, { host: "a", admission: true }), "INSUFFICIENT_CAPACITY");
    release();
    assert.equal(await m.place(128, { host: "a", admission: true }), "a");
  });

  void test("bad protocol input: malformed join, heartbeat of an unknown host, removing a live host", async () => {
    await expectCode(m.join({ name: "x" }), "BAD_REQUEST");
    await expectCode(m.join({ ...join("c", []), url: "not a url" }), "BAD_REQUEST");
    await expectCode(m.heartbeat("stranger", { seq: 1, load, vms: [] }), "HOST_NOT_JOINED");
    await expectCode(m.heartbeat("a", { seq: -1, load, vms: [] }), "BAD_REQUEST");
    await expectCode(m.removeHost("a"), "HOST_NOT_DOWN");
  });

  void test("lease timings: a host must always fence itself before HA acts", () => {
    assert.doesNotThrow(() => checkTimings(1000, 5000, 8000));
    assert.throws(() => checkTimings(1000, 5000, 5500), (e: HopError) => e.code === "BAD_TIMINGS");
    assert.throws(() => checkTimings(1000, 1500, 8000), (e: HopError) => e.code === "BAD_TIMINGS");
    assert.throws(() => checkTimings(10, 5000, 8000), (e: HopError) => e.code === "BAD_TIMINGS");
  });
});

void describe("HA admission control", () => {
  void test("a host that goes silent is declared down after the grace period; its VMs are restarted only where they fit", async () => {
    const ha = new Manager({ store: new MemoryStore(), token: "t".repeat(32), version: "0.1.0", heartbeatMs: 100, leaseMs: 250, graceMs: 400, maxMigrationsPerHost: 4, maxMigrationsPerCluster: 8, log: createLogger("test") });
    await ha.init();
    const monitor = new HaMonitor(ha);
    try {
      // h-a runs two 128 MiB VMs; the only survivor, h-b, has room for one.
      await ha.join(join("h-a", [report("big1", 1), report("big2", 1)], 512));
      await ha.join(join("h-b", [], 128));
      monitor.start();
      const deadline = Date.now() + 5_000;
      const keepB = setInterval(() => void ha.heartbeat("h-b", { seq: 1, load, vms: [] }).catch(() => undefined), 100);
      try {
        while ((await ha.getHost("h-a")).connection !== "down") {
          assert.ok(Date.now() < deadline, "h-a declared down");
          await new Promise((r) => setTimeout(r, 50));
        }
        while ((await ha.listEvents({ type: "ha.no-capacity" })).length === 0) {
          assert.ok(Date.now() < deadline, "an ha.no-capacity event");
          await new Promise((r) => setTimeout(r, 50));
        }
        // The planned restart fails (nothing listens at h-b's URL): it is retried later, not in a loop.
        await new Promise((r) => setTimeout(r, 1_000));
      } finally {
        clearInterval(keepB);
      }
      assert.equal((await ha.getHost("h-b")).connection, "connected");
      const restarts = await ha.listTasks({ kind: "ha.restart" });
      assert.equal(restarts.length, 1, "one VM planned onto the survivor, the other refused by admission control");
      assert.equal(restarts[0]?.params["to"], "h-b");
      assert.equal(restarts[0]?.state, "failed");
      const refused = (await ha.listEvents({ type: "ha.no-capacity" }))[0];
      assert.notEqual(refused?.vm, restarts[0]?.vm);
      assert.match(refused?.message ?? "", /128 MiB/);
    } finally {
      monitor.stop();
      ha.close();
    }
  });
});
