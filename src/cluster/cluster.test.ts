/**
 * The cluster manager with real guests on 3 host agents (separate processes sharing one
 * datastore): placement, maintenance mode evacuating live with continuous heartbeats, a manager
 * restart that recovers its inventory and a running task, HA after kill -9 of a host and its
 * VMs (data synced to disk survives), a partitioned host that fences itself (no VM ever runs
 * twice), and clear errors for bad input.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import type { RawData } from "ws";
import { expectCode, pidAlive, waitFor as waitUntil } from "../common/testing.js";
import { HostClient, waitOpen } from "../host/client.js";
import { LocalSupervisor } from "../host/supervisor.js";
import { ClusterHarness } from "./testing.js";
import type { ClusterEvent } from "./types.js";

const TOKEN = `test-cluster-${randomBytes(12).toString("hex")}`;
let dir = "";
let cluster: ClusterHarness;

/** Polls the manager (a request that fails, e.g. while it restarts, counts as "not yet") every 100 ms. */
function waitFor<T>(fn: () => Promise<T | undefined | false>, ms: number, what: string): Promise<T> {
  return waitUntil(() => fn().catch(() => undefined), ms, what, 100);
}

/** Which hosts' own APIs list `vm` as running (the truth, not the manager's view). */
async function runningOn(vm: string): Promise<string[]> {
  const out: string[] = [];
  for (const h of cluster.hosts.values()) {
    if (h.proc.exitCode !== null || h.proc.signalCode !== null) continue;
    const list = await new HostClient(h.url, TOKEN).list().catch(() => []);
    if (list.some((v) => v.name === vm && (v.state === "running" || v.state === "paused" || v.state === "migrating"))) out.push(h.name);
  }
  return out;
}

/** `HB <n>` lines of a VM through the manager's console proxy, which follows the VM across hosts. */
class Heartbeats {
  readonly seqs: number[] = [];
  private partial = "";
  private readonly ws;
  constructor(vm: string) {
    this.ws = cluster.client.console(vm);
    this.ws.on("message", (data: RawData, isBinary: boolean) => {
      if (!isBinary) return;
      const text = this.partial + Buffer.from(data as Buffer).toString("latin1");
      const lines = text.split("\n");
      this.partial = lines.pop() ?? "";
      for (const line of lines) {
        const m = /HB (\d+)/.exec(line);
        if (m?.[1] !== undefined) this.seqs.push(Number(m[1]));
      }
    });
  }
  async open(): Promise<void> {
    await waitOpen(this.ws);
  }
  async waitMore(n: number, ms = 20_000): Promise<void> {
    const want = this.seqs.length + n;
    await waitFor(async () => this.seqs.length >= want, ms, `${n} more heartbeats`);
  }
  /** No hole, no repeat (a repeat would mean two copies ran). */
  assertContinuous(): void {
    assert.ok(this.seqs.length > 5, `only ${this.seqs.length} heartbeats`);
    for (let i = 1; i < this.seqs.length; i++) assert.equal(this.seqs[i], this.seqs[i - 1]! + 1, `heartbeat ${this.seqs[i]} followed ${this.seqs[i - 1]}`);
  }
  close(): void {
    this.ws.close();
  }
}

void describe("cluster manager with 3 hosts and real guests", { timeout: 20 * 60_000 }, () => {
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "hop-cluster-"));
    // Boot the templates once (cached), so host agents start VMs from them in well under a second.
    const sup = new LocalSupervisor({ hostName: "prep", datastore: join(dir, "prep-ds") });
    await sup.init();
    await sup.prepareTemplate(128);
    await sup.prepareTemplate(128, 16);
    await sup.close();
    cluster = new ClusterHarness({ dir, hosts: 3, token: TOKEN, capacityMiB: 1024 });
    await cluster.start();
  });

  after(async () => {
    await cluster.stop();
    await rm(dir, { recursive: true, force: true });
  });

  void test("hosts join and report capacity; the OpenAPI document covers every route", async () => {
    const hosts = await cluster.client.hosts();
    assert.deepEqual(hosts.map((h) => h.name).sort(), ["h1", "h2", "h3"]);
    for (const h of hosts) {
      assert.equal(h.connection, "connected");
      assert.equal(h.maintenance, "none");
      assert.equal(h.capacity.memoryMiB, 1024);
    }
    const doc = (await cluster.client.openapi()) as { paths: Record<string, Record<string, { summary: string }>> };
    const ops = Object.values(doc.paths).flatMap((p) => Object.values(p));
    assert.ok(ops.length >= 25, `${ops.length} operations`);
    for (const op of ops) assert.notEqual(op.summary, "(undocumented)");
    assert.equal((await cluster.client.datastores()).length, 1, "the hosts share one datastore");
  });

  void test("bad input gets clear errors", async () => {
    const c = cluster.client;
    await expectCode(c.create({ name: "Bad_Name" }), "BAD_REQUEST", 400);
    await expectCode(c.create({ name: "toolarge", memoryMiB: 100_000 }), "BAD_REQUEST", 400);
    await expectCode(c.create({ name: "nowhere", host: "h9" }), "HOST_NOT_FOUND", 404);
    await expectCode(c.get("ghost"), "VM_NOT_FOUND", 404);
    await expectCode(c.migrate("ghost", { to: "h2" }), "VM_NOT_FOUND", 404);
    await expectCode(c.maintenance("h9", { enter: true }), "HOST_NOT_FOUND", 404);
    await expectCode(c.task("no-such-task"), "TASK_NOT_FOUND", 404);
    await expectCode(c.tasks({ state: "bogus" as never }), "BAD_REQUEST", 400);
    await expectCode(new HostClient(cluster.managerUrl, "wrong-token-wrong-token").list(), "AUTH_INVALID", 401);
    // Host-side protocol: a heartbeat from a host that never joined, a malformed join.
    const raw = async (path: string, body: unknown): Promise<number> =>
      (await fetch(cluster.managerUrl + path, { method: "POST", headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" }, body: JSON.stringify(body) })).status;
    assert.equal(await raw("/v1/hosts/stranger/heartbeat", { seq: 1, load: { cpuPct: 0, memUsedMiB: 0, rssMiB: 0, vmCount: 0 }, vms: [] }), 410);
    assert.equal(await raw("/v1/hosts/join", { name: "x" }), 400);
  });

  void test("VMs are placed across hosts; maintenance mode evacuates them live with heartbeats continuous", async () => {
    const names = ["m1", "m2", "m3", "m4"];
    for (const name of names) {
      await cluster.client.create({ name, memoryMiB: 128, start: true });
      const r = await cluster.client.exec(name, "hb -i 20 > /dev/ttyS0 2>&1 &");
      assert.equal(r.exitCode, 0, r.stderr);
    }
    const placed = await cluster.client.list();
    const hostsUsed = new Set(placed.filter((v) => names.includes(v.name)).map((v) => v.host));
    assert.ok(hostsUsed.size >= 2, `placement spread the VMs (${[...hostsUsed].join(",")})`);
    for (const name of names) assert.deepEqual(await runningOn(name), [placed.find((v) => v.name === name)!.host]);

    // Put the two VMs of one host... make h1 hold at least two: move the others there first.
    for (const v of placed) if (names.includes(v.name) && v.host !== "h1") await cluster.client.migrate(v.name, { to: "h1" });
    const beats = names.map((n) => new Heartbeats(n));
    await Promise.all(beats.map((b) => b.open()));
    await Promise.all(beats.map((b) => b.waitMore(3)));

    const task = await cluster.client.maintenance("h1", { enter: true, wait: true });
    assert.equal(task.state, "succeeded", JSON.stringify(task.error));
    const h1 = await cluster.client.host("h1");
    assert.equal(h1.maintenance, "in");
    assert.deepEqual(h1.vms.filter((n) => names.includes(n)), []);
    const children = await cluster.client.tasks({ parentId: task.id });
    assert.equal(children.length, 4, "one live migration per VM");
    for (const ch of children) {
      assert.equal(ch.state, "succeeded");
      assert.equal(ch.params["mode"], "live");
    }
    for (const name of names) {
      const on = await runningOn(name);
      assert.equal(on.length, 1, `${name} runs exactly once (${on.join(",")})`);
      assert.notEqual(on[0], "h1");
    }
    await Promise.all(beats.map((b) => b.waitMore(5)));
    for (const b of beats) {
      b.assertContinuous();
      b.close();
    }
    // No placement on a host in maintenance; then it returns to service.
    await expectCode(cluster.client.migrate("m1", { to: "h1" }), "HOST_UNAVAILABLE", 409);
    const exit = await cluster.client.maintenance("h1", { enter: false });
    assert.equal(exit.state, "succeeded");
    assert.equal((await cluster.client.host("h1")).maintenance, "none");
    const events = await cluster.client.listEvents({ host: "h1", typePrefix: "host.maintenance" });
    assert.ok(events.some((e) => e.type === "host.maintenance.entered"));
  });

  void test("a restarted manager recovers its inventory and settles a migration that ran meanwhile", async () => {
    const before = await cluster.client.list();
    const vm = before.find((v) => v.name === "m1")!;
    const to = vm.host === "h2" ? "h3" : "h2";
    const task = (await cluster.client.migrate("m1", { to, wait: false }));
    assert.equal(task.kind, "vm.migrate");
    await waitFor(async () => (await cluster.client.task(task.id)).state === "running", 10_000, "the migration to run");
    await cluster.killManager();
    await cluster.startManager();
    const after = await cluster.client.list();
    assert.deepEqual(after.map((v) => v.name).sort(), before.map((v) => v.name).sort(), "inventory recovered");
    const done = await waitFor(async () => {
      const t = await cluster.client.task(task.id);
      return t.state !== "running" && t.state !== "queued" ? t : undefined;
    }, 60_000, "the recovered task to end");
    assert.equal(done.state, "succeeded", JSON.stringify(done.error));
    assert.equal((await cluster.client.get("m1")).host, to);
    assert.deepEqual(await runningOn("m1"), [to]);
    await cluster.waitHosts(["h1", "h2", "h3"], "connected");
  });

  void test("HA: kill -9 of a host and its VMs restarts them elsewhere; synced disk data is there", async () => {
    await cluster.client.create({ name: "ha1", memoryMiB: 128, diskMiB: 16, host: "h3", start: true });
    const w = await cluster.client.exec("ha1", "echo precious > /data/file && sync && cat /data/file");
    assert.equal(w.stdout.trim(), "precious", w.stderr);
    const victims = (await cluster.client.list()).filter((v) => v.host === "h3" && v.state === "running").map((v) => v.name);
    assert.ok(victims.includes("ha1"));
    const gen = (await cluster.client.get("ha1")).generation;
    const killedAt = Date.now();
    await cluster.killHost("h3");
    for (const name of victims) {
      await waitFor(async () => {
        const v = await cluster.client.get(name);
        return v.host !== "h3" && v.state === "running" ? v : undefined;
      }, 60_000, `${name} restarted elsewhere`);
    }
    const restartMs = Date.now() - killedAt;
    process.stdout.write(`# HA: ${victims.length} VM(s) running again ${restartMs} ms after kill -9 of their host\n`);
    const ha1 = await cluster.client.get("ha1");
    assert.equal(ha1.generation, gen + 1, "ownership generation bumped");
    const r = await cluster.client.exec("ha1", "cat /data/file");
    assert.equal(r.stdout.trim(), "precious");
    const events = await cluster.client.listEvents({ type: "ha.restarted" });
    assert.ok(events.some((e) => e.vm === "ha1"));
    assert.equal((await cluster.client.host("h3")).connection, "down");

    // The host comes back: it does not run (or even keep) the VMs restarted elsewhere.
    await cluster.startHost("h3");
    await cluster.waitHosts(["h3"], "connected");
    const h3list = await new HostClient(cluster.hosts.get("h3")!.url, TOKEN).list();
    for (const name of victims) assert.ok(!h3list.some((v) => v.name === name), `${name} is not on the returning host`);
    for (const name of victims) assert.equal((await runningOn(name)).length, 1);
  });

  void test("a partitioned host fences itself before HA restarts its VMs: never two copies", async () => {
    await cluster.client.create({ name: "p1", memoryMiB: 128, host: "h2", start: true });
    const onH2 = (await cluster.client.list()).filter((v) => v.host === "h2" && v.state === "running").map((v) => v.name);
    const h2 = new HostClient(cluster.hosts.get("h2")!.url, TOKEN);
    const pids = new Map((await h2.list()).filter((v) => onH2.includes(v.name)).map((v) => [v.name, v.pid!]));
    cluster.hosts.get("h2")!.relay.cut();
    // Sample: at no moment may a VM's old process live while it runs on another host.
    const diedAt = new Map<string, number>();
    const elsewhereAt = new Map<string, number>();
    await waitFor(async () => {
      const now = Date.now();
      for (const [name, pid] of pids) if (!diedAt.has(name) && !pidAlive(pid)) diedAt.set(name, now);
      for (const v of await cluster.client.list()) {
        if (pids.has(v.name) && v.host !== "h2" && v.state === "running" && !elsewhereAt.has(v.name)) elsewhereAt.set(v.name, now);
      }
      return elsewhereAt.size === pids.size;
    }, 60_000, "the partitioned host's VMs to run elsewhere");
    for (const [name] of pids) {
      assert.ok(diedAt.has(name), `${name}'s process on h2 was fenced`);
      assert.ok(diedAt.get(name)! < elsewhereAt.get(name)!, `${name} was fenced on h2 before it ran elsewhere`);
    }
    const fenced = (await h2.list()).filter((v) => onH2.includes(v.name));
    for (const v of fenced) assert.match(v.lastError ?? "", /fenced/);

    // The partition heals: h2 joins again and releases the VMs that now run elsewhere.
    cluster.hosts.get("h2")!.relay.heal();
    await cluster.waitHosts(["h2"], "connected");
    await waitFor(async () => (await h2.list()).every((v) => !onH2.includes(v.name)), 20_000, "h2 to release its old VMs");
    for (const name of onH2) assert.equal((await runningOn(name)).length, 1, `${name} runs exactly once`);
    const all = await cluster.client.list();
    for (const name of onH2) assert.notEqual(all.find((v) => v.name === name)?.host, "h2");
  });

  void test("tasks and events are queryable and streamed", async () => {
    const ws = cluster.client.events();
    const seen: ClusterEvent[] = [];
    ws.on("message", (d: RawData) => seen.push(JSON.parse(Buffer.from(d as Buffer).toString("utf8")) as ClusterEvent));
    await waitOpen(ws);
    const vm = (await cluster.client.list()).find((v) => v.state === "running")!;
    const to = (await cluster.client.hosts()).find((h) => h.name !== vm.host && h.connection === "connected")!.name;
    const r = (await cluster.client.migrate(vm.name, { to }));
    assert.equal(r.report.to.length > 0, true);
    await waitFor(async () => seen.some((e) => e.type === "vm.migrated" && e.vm === vm.name), 10_000, "the vm.migrated event");
    assert.ok(seen.some((e) => e.type === "migration.progress" && e.taskId === r.taskId), "progress events carry the task id");
    ws.close();
    const t = await cluster.client.task(r.taskId);
    assert.equal(t.state, "succeeded");
    assert.equal(t.progress, 1);
    const mine = await cluster.client.tasks({ vm: vm.name, kind: "vm.migrate", limit: 2 });
    assert.equal(mine[0]?.id, r.taskId, "newest first");
    const page = await cluster.client.listEvents({ afterId: 0, limit: 5 });
    assert.equal(page.length, 5);
    assert.ok(page[0]!.id < page[4]!.id, "oldest first after an id");
  });

  void test("balancing: a dry run recommends moves off a loaded host; applying them lowers the imbalance", async () => {
    const running = (await cluster.client.list()).filter((v) => v.state === "running");
    for (const v of running) if (v.host !== "h1") await cluster.client.migrate(v.name, { to: "h1" });
    const recs = await cluster.client.drsRecommendations();
    assert.ok(recs.imbalance > recs.threshold, `imbalance ${recs.imbalance}`);
    assert.ok(recs.moves.length > 0);
    for (const mv of recs.moves) {
      assert.equal(mv.from, "h1");
      assert.ok(mv.imbalanceAfter < mv.imbalanceBefore);
    }
    assert.equal((await cluster.client.list()).filter((v) => v.host !== "h1" && v.state === "running").length, 0, "a dry run moves nothing");
    const task = await cluster.client.drsApply();
    const done = await waitFor(async () => {
      const t = await cluster.client.task(task.id);
      return t.state === "succeeded" || t.state === "failed" ? t : undefined;
    }, 60_000, "the balancing task");
    assert.equal(done.state, "succeeded", JSON.stringify(done.error));
    assert.equal((await cluster.client.tasks({ parentId: task.id })).length, recs.moves.length);
    const afterRecs = await cluster.client.drsRecommendations();
    assert.ok(afterRecs.imbalance < recs.imbalance, `imbalance ${recs.imbalance} -> ${afterRecs.imbalance}`);
    for (const mv of recs.moves) assert.deepEqual(await runningOn(mv.vm), [mv.to]);
  });
});
