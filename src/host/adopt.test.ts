/**
 * HA on a shared datastore with real guests: a host crashes (its VM process is killed, its
 * supervisor abandoned), another host adopts the VM (generation + 1, its data disk intact), a
 * stale adopt and a returning host are refused; self-fencing and release.
 */
import assert from "node:assert/strict";
import { access, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { HostClient } from "./client.js";
import { serveHost, type HostServerHandle } from "./server.js";
import { LocalSupervisor } from "./supervisor.js";
import type { HostEvent } from "./types.js";
import { expectCode, pidAlive, waitFor } from "../common/testing.js";

const TOKEN = "adopt-test-cluster-token-0123456789";
let dir: string;
let ds: string;
let a: LocalSupervisor;
let b: LocalSupervisor;
let server: HostServerHandle;
let client: HostClient;
const others: LocalSupervisor[] = [];

async function exists(p: string): Promise<boolean> {
  return access(p).then(
    () => true,
    () => false,
  );
}

async function configOf(name: string): Promise<{ host: string; generation: number }> {
  return JSON.parse(await readFile(join(ds, "vms", name, "config.json"), "utf8")) as { host: string; generation: number };
}

function record(sup: LocalSupervisor): { events: HostEvent[]; stop: () => void } {
  const events: HostEvent[] = [];
  return { events, stop: sup.onEvent((ev) => events.push(ev)) };
}

void describe("HA adopt, fencing and release with real guests", { timeout: 5 * 60_000 }, () => {
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "hop-adopt-"));
    ds = join(dir, "shared-ds");
    a = new LocalSupervisor({ hostName: "a", datastore: ds, token: TOKEN });
    b = new LocalSupervisor({ hostName: "b", datastore: ds, token: TOKEN });
    await a.init();
    await b.init();
    server = await serveHost({ supervisor: b, migrations: b, token: TOKEN, listen: "127.0.0.1:0" });
    client = new HostClient(server.url, TOKEN);
    // Every VM below has this profile: one template, prepared once.
    await a.prepareTemplate(128, 16);
  });

  after(async () => {
    await server.close();
    for (const s of [a, b, ...others]) await s.close();
    await rm(dir, { recursive: true, force: true });
  });

  void test("a VM of a crashed host is adopted by another: generation + 1, data disk intact; stale owners are refused", async (t) => {
    await a.create({ name: "ha1", memoryMiB: 128, diskMiB: 16 });
    await a.start("ha1");
    const w = await a.exec("ha1", "echo survived-$((6*7)) > /data/marker && sync && cat /data/marker");
    assert.equal(w.stdout, "survived-42\n");
    const before = await configOf("ha1");
    assert.deepEqual([before.host, before.generation], ["a", 1]);

    // Host a crashes: its VM process dies with it and nobody rewrites the config.
    const pid = a.pidOf("ha1");
    assert.ok(pid !== undefined);
    process.kill(pid, "SIGKILL");
    await waitFor(() => a.get("ha1").state === "crashed", 5_000, "a's VM to be reported crashed");
    // A suspended state left behind must not be used (nor survive): the memory is lost in an HA restart.
    const leftover = join(ds, "vms", "ha1", "suspended.hopstate");
    await writeFile(leftover, "stale state");

    const rec = record(b);
    const t0 = performance.now();
    const info = await client.adopt("ha1", { fromHost: "a", generation: 1 });
    const adoptMs = performance.now() - t0;
    rec.stop();
    assert.equal(info.state, "running");
    assert.equal(info.startedFrom, "template");
    assert.equal(info.config.host, "b");
    assert.equal(info.config.generation, 2);
    const after = await configOf("ha1");
    assert.deepEqual([after.host, after.generation], ["b", 2]);
    assert.equal(await exists(leftover), false, "the leftover suspended state was deleted");
    const adopted = rec.events.find((e) => e.type === "vm.adopted");
    assert.deepEqual(adopted !== undefined && adopted.type === "vm.adopted" ? [adopted.vm, adopted.from, adopted.generation] : undefined, ["ha1", "a", 2]);
    assert.equal((await b.exec("ha1", "cat /data/marker")).stdout, "survived-42\n", "the data disk came along");
    assert.equal((await b.exec("ha1", "hostname")).stdout.trim(), "ha1");
    assert.ok(adoptMs < 15_000, `adopt took ${adoptMs.toFixed(0)} ms`);
    t.diagnostic(`adopt + start on b: ${adoptMs.toFixed(0)} ms (start ${String(info.startMs)} ms)`);

    // Adopting again: here it exists; elsewhere the generation is stale; an unknown VM is 404.
    await expectCode(client.adopt("ha1", { fromHost: "a", generation: 1 }), "VM_EXISTS", 409);
    const c = new LocalSupervisor({ hostName: "c", datastore: ds, token: TOKEN });
    others.push(c);
    await c.init();
    await expectCode(c.adopt("ha1", { fromHost: "a", generation: 1 }), "VM_OWNERSHIP_CHANGED", 409);
    await expectCode(c.adopt("ha1", { fromHost: "b", generation: 1, start: false }), "VM_OWNERSHIP_CHANGED", 409);
    await expectCode(c.adopt("nope", { fromHost: "a", generation: 1 }), "VM_NOT_FOUND", 404);
    assert.deepEqual(c.list(), []);
    assert.deepEqual(await configOf("ha1"), after, "a refused adopt changed nothing");

    // The returning host a (a new agent on the same datastore) does not load the VM ...
    const a2 = new LocalSupervisor({ hostName: "a", datastore: ds, token: TOKEN });
    others.push(a2);
    await a2.init();
    assert.equal(a2.list().find((v) => v.name === "ha1"), undefined);
    // ... and a's old agent, still holding the VM, refuses to start it and forgets it.
    const released = record(a);
    await expectCode(a.start("ha1"), "VM_OWNERSHIP_CHANGED", 409);
    released.stop();
    assert.equal(a.list().find((v) => v.name === "ha1"), undefined);
    assert.ok(released.events.some((e) => e.type === "vm.released" && e.vm === "ha1"));
    assert.deepEqual(await configOf("ha1"), after);
    assert.equal(b.get("ha1").state, "running", "the adopted VM runs on");
  });

  void test("bad adopt requests get 400", async () => {
    const bad: unknown[] = [
      {},
      { fromHost: "a" },
      { fromHost: "a", generation: -1 },
      { fromHost: "a", generation: 1.5 },
      { fromHost: "a", generation: "1" },
      { fromHost: "bad host!", generation: 1 },
      { fromHost: "a", generation: 1, start: "yes" },
      { fromHost: "a", generation: 1, extra: true },
    ];
    for (const body of bad) await expectCode(client.adopt("ha1", body as never), "BAD_REQUEST", 400);
    await expectCode(client.adopt("Bad_Name", { fromHost: "a", generation: 1 }), "BAD_REQUEST", 400);
  });

  void test("fenceAll kills every VM process at once and leaves the VMs stopped; a second call does nothing", async (t) => {
    await b.create({ name: "f1", memoryMiB: 128, diskMiB: 16 });
    await b.start("f1");
    const pids = [b.pidOf("ha1"), b.pidOf("f1")];
    assert.ok(pids.every((p) => p !== undefined && pidAlive(p)));
    const rec = record(b);
    const t0 = performance.now();
    const fenced = await b.fenceAll("test lease lost");
    const fenceMs = performance.now() - t0;
    assert.deepEqual([...fenced].sort(), ["f1", "ha1"]);
    assert.ok(fenceMs < 2_000, `fencing took ${fenceMs.toFixed(0)} ms`);
    t.diagnostic(`fenceAll of 2 VMs: ${fenceMs.toFixed(0)} ms`);
    for (const p of pids) assert.equal(pidAlive(p!), false, `VM process ${p} still runs`);
    for (const name of ["ha1", "f1"]) {
      const v = b.get(name);
      assert.equal(v.state, "stopped");
      assert.equal(v.pid, undefined);
      assert.match(v.lastError ?? "", /^fenced: test lease lost/);
    }
    assert.deepEqual(rec.events.filter((e) => e.type === "vm.fenced").map((e) => e.vm).sort(), ["f1", "ha1"]);
    assert.ok(rec.events.some((e) => e.type === "vm.state" && e.vm === "f1" && e.state === "stopped" && /fenced/.test(e.reason ?? "")));
    assert.deepEqual(await b.fenceAll("again"), []);
    assert.equal(rec.events.filter((e) => e.type === "vm.fenced").length, 2);
    rec.stop();
    // Fenced VMs start again (they are still this host's).
    await b.start("f1");
    assert.equal((await b.exec("f1", "echo back")).stdout, "back\n");
  });

  void test("releaseVms forgets VMs (powering a running one off first) without touching their files", async () => {
    assert.equal(b.get("f1").state, "running");
    const pid = b.pidOf("f1")!;
    const rec = record(b);
    const released = await b.releaseVms(["f1", "ha1", "unknown"], "owned elsewhere");
    rec.stop();
    assert.deepEqual([...released].sort(), ["f1", "ha1"]);
    assert.equal(pidAlive(pid), false, "the released VM's process was killed");
    assert.deepEqual(b.list(), []);
    assert.deepEqual(rec.events.filter((e) => e.type === "vm.released").map((e) => e.vm).sort(), ["f1", "ha1"]);
    for (const name of ["f1", "ha1"]) {
      assert.ok(await exists(join(ds, "vms", name, "config.json")), `${name}'s config is kept`);
      assert.ok(await exists(join(ds, "vms", name, "disk.img")), `${name}'s disk is kept`);
    }
    assert.equal((await configOf("f1")).host, "b", "release does not rewrite the config");
    await expectCode(client.get("f1"), "VM_NOT_FOUND", 404);
  });
});
