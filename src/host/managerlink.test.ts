/**
 * The host agent's link to the cluster manager: the Lease (pure, injected clock), and the
 * ManagerLink with a real guest against a minimal stand-in for the manager's two host
 * endpoints (join, heartbeat), built here with node:http (the real manager is not built yet):
 * join and heartbeat bodies, one request at a time, release, re-join on 410, and self-fencing
 * of the running VM once the lease runs out.
 */
import assert from "node:assert/strict";
import { access, mkdtemp, rm } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { heartbeatRequestSchema, joinRequestSchema, type HeartbeatRequest } from "../cluster/protocol.js";
import { Lease, ManagerLink } from "./managerlink.js";
import { LocalSupervisor } from "./supervisor.js";
import type { HostEvent } from "./types.js";
import { expectCode, waitFor } from "../common/testing.js";

const TOKEN = "managerlink-test-cluster-token-0123";
const LEASE_MS = 1_500;
const HEARTBEAT_MS = 300;

/** A stand-in for the manager's host endpoints (protocol.ts): records what it receives. */
interface FakeManager {
  url: string;
  joins: unknown[];
  beats: { at: number; body: unknown }[];
  /** "fail": every request gets 503. */
  mode: "ok" | "fail";
  /** The next heartbeat gets 410 HOST_NOT_JOINED. */
  next410: boolean;
  /** Returned (once) in the next heartbeat answer. */
  release: string[];
  /** Delay before answering a heartbeat. */
  delayMs: number;
  inFlight: number;
  maxInFlight: number;
  close(): Promise<void>;
}

async function fakeManager(): Promise<FakeManager> {
  const fm = { joins: [], beats: [], mode: "ok", next410: false, release: [], delayMs: 0, inFlight: 0, maxInFlight: 0 } as unknown as FakeManager;
  const server: Server = createServer((req, res) => {
    fm.inFlight++;
    fm.maxInFlight = Math.max(fm.maxInFlight, fm.inFlight);
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const send = (status: number, body: unknown): void => {
        fm.inFlight--;
        res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(body));
      };
      if (req.headers.authorization !== `Bearer ${TOKEN}`) return send(401, { error: { code: "AUTH_INVALID", message: "wrong token" } });
      if (fm.mode === "fail") return send(503, { error: { code: "MANAGER_UNAVAILABLE", message: "down for the test" } });
      const body: unknown = JSON.parse(Buffer.concat(chunks).toString("utf8"));
      const grant = { leaseMs: LEASE_MS, heartbeatMs: HEARTBEAT_MS };
      if (req.method === "POST" && req.url === "/v1/hosts/join") {
        fm.joins.push(body);
        return send(200, { managerId: "m-test", ...grant, release: [] });
      }
      if (req.method === "POST" && /^\/v1\/hosts\/[^/]+\/heartbeat$/.test(req.url ?? "")) {
        if (fm.next410) {
          fm.next410 = false;
          return send(410, { error: { code: "HOST_NOT_JOINED", message: "join again" } });
        }
        fm.beats.push({ at: performance.now(), body });
        const release = fm.release;
        fm.release = [];
        if (fm.delayMs > 0) setTimeout(() => send(200, { ...grant, release }), fm.delayMs);
        else send(200, { ...grant, release });
        return;
      }
      send(404, { error: { code: "NOT_FOUND", message: "no route" } });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  fm.url = `http://127.0.0.1:${port}`;
  fm.close = () =>
    new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
  return fm;
}

void describe("Lease", () => {
  void test("is counted from when the request was sent, not when the answer came", () => {
    let t = 1_000;
    const lease = new Lease(() => t);
    assert.equal(lease.held, false);
    assert.equal(lease.expired(), true, "never granted: expired");
    assert.equal(lease.remainingMs(), 0);
    // Sent at 1000, answered at 1200.
    t = 1_200;
    lease.renew(1_000, 1_500);
    assert.equal(lease.held, true);
    assert.equal(lease.expired(), false);
    assert.equal(lease.remainingMs(), 1_300);
    t = 2_499;
    assert.equal(lease.expired(), false);
    assert.equal(lease.remainingMs(), 1);
    t = 2_500;
    assert.equal(lease.expired(), true);
    assert.equal(lease.remainingMs(), 0);
    // A later answer renews from its own send time; explicit times are accepted too.
    lease.renew(2_400, 1_500);
    assert.equal(lease.expired(), false);
    assert.equal(lease.remainingMs(), 1_400);
    assert.equal(lease.expired(3_899), false);
    assert.equal(lease.expired(3_900), true);
    assert.equal(lease.remainingMs(3_000), 900);
    assert.equal(lease.remainingMs(10_000), 0);
  });
});

void describe("ManagerLink with a real guest", { timeout: 5 * 60_000 }, () => {
  let dir: string;
  let sup: LocalSupervisor;
  let fm: FakeManager;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "hop-link-"));
    sup = new LocalSupervisor({ hostName: "h1", datastore: join(dir, "ds"), token: TOKEN });
    await sup.init();
    await sup.prepareTemplate(128);
    await sup.create({ name: "lk1", memoryMiB: 128 });
    await sup.create({ name: "rel1", memoryMiB: 128 });
    fm = await fakeManager();
  });

  after(async () => {
    await fm.close();
    await sup.close();
    await rm(dir, { recursive: true, force: true });
  });

  void test("bad settings are refused; a wrong token is reported and retried", async () => {
    const opts = { supervisor: sup, managerUrl: fm.url, token: TOKEN, agentUrl: "http://127.0.0.1:7999" };
    await expectCode(() => new ManagerLink({ ...opts, hostName: "bad name!" }), "BAD_REQUEST", 400);
    await expectCode(() => new ManagerLink({ ...opts, hostName: "h2" }), "HOST_NAME_MISMATCH", 400);
    await expectCode(() => new ManagerLink({ ...opts, managerUrl: "not a url" }), "BAD_MANAGER_URL", 400);
    await expectCode(() => new ManagerLink({ ...opts, agentUrl: "nope" }), "BAD_REQUEST", 400);
    const link = new ManagerLink({ ...opts, token: "the-wrong-token" });
    link.start();
    try {
      await waitFor(() => link.status().lastError !== undefined, 5_000, "the refused join");
      assert.match(link.status().lastError ?? "", /wrong token/);
      assert.equal(link.status().joined, false);
      // Without a lease the host starts nothing.
      await expectCode(sup.start("lk1"), "HOST_NO_LEASE", 503);
    } finally {
      await link.stop();
    }
    assert.equal(fm.joins.length, 0);
  });

  void test("join, heartbeats, release, re-join on 410, and fencing when the lease runs out", async (t) => {
    const events: HostEvent[] = [];
    const off = sup.onEvent((ev) => events.push(ev));
    const link = new ManagerLink({ supervisor: sup, managerUrl: fm.url, token: TOKEN, hostName: "h1", agentUrl: "http://127.0.0.1:7999", capacity: { cpus: 2 } });
    link.start();
    try {
      // Join: a valid JoinRequest that reports the VMs.
      await waitFor(() => fm.joins.length === 1 && link.status().joined, 5_000, "the join");
      const j = joinRequestSchema.parse(fm.joins[0]);
      assert.equal(j.name, "h1");
      assert.equal(j.url, "http://127.0.0.1:7999");
      assert.equal(j.datastoreId, sup.datastore.id);
      assert.equal(j.capacity.cpus, 2);
      assert.ok(j.capacity.memoryMiB >= 64);
      assert.match(j.version, /^\d+\.\d+\.\d+/);
      assert.deepEqual(j.vms.map((v) => [v.name, v.state, v.generation]).sort(), [["lk1", "defined", 1], ["rel1", "defined", 1]]);
      assert.equal(j.vms.find((v) => v.name === "lk1")?.config["host"], "h1");
      assert.ok(link.status().leaseRemainingMs > 0);

      // Holding the lease, the VM starts; heartbeats report it, one request at a time.
      await sup.start("lk1");
      const from = fm.beats.length;
      fm.delayMs = 450; // longer than the heartbeat interval: the next one must wait for the answer
      await waitFor(() => fm.beats.length >= from + 2, 5_000, "slow heartbeats");
      fm.delayMs = 0;
      await waitFor(() => fm.beats.length >= from + 6, 5_000, "heartbeats");
      assert.equal(fm.maxInFlight, 1, "requests overlapped");
      const beats = fm.beats.map((b) => heartbeatRequestSchema.parse(b.body));
      for (let i = 1; i < beats.length; i++) assert.equal(beats[i]!.seq, beats[i - 1]!.seq + 1, "seq increases by one");
      const last = beats[beats.length - 1] as HeartbeatRequest;
      assert.equal(last.load.vmCount, 1);
      assert.equal(last.load.memUsedMiB, 128);
      assert.ok(last.load.rssMiB > 0, "RSS of the VM process");
      assert.ok(last.load.cpuPct >= 0);
      const vm = last.vms.find((v) => v.name === "lk1");
      assert.equal(vm?.state, "running");
      assert.equal(vm?.generation, 1);
      assert.ok(typeof vm?.cpuPct === "number", "CPU of the VM since the previous heartbeat");
      const gaps = fm.beats.slice(-4).map((b, i, all) => (i === 0 ? HEARTBEAT_MS : b.at - all[i - 1]!.at));
      for (const g of gaps) assert.ok(g > HEARTBEAT_MS * 0.5 && g < HEARTBEAT_MS * 3, `heartbeat gap ${g.toFixed(0)} ms`);

      // release: the host forgets the VM, its files stay.
      fm.release = ["rel1"];
      await waitFor(() => !sup.list().some((v) => v.name === "rel1"), 5_000, "rel1 released");
      await access(join(dir, "ds", "vms", "rel1", "config.json"));
      assert.ok(events.some((e) => e.type === "vm.released" && e.vm === "rel1"));

      // 410: join again (the new join no longer lists rel1).
      fm.next410 = true;
      await waitFor(() => fm.joins.length === 2, 5_000, "the re-join");
      const j2 = joinRequestSchema.parse(fm.joins[1]);
      assert.deepEqual(j2.vms.map((v) => [v.name, v.state]), [["lk1", "running"]]);
      await waitFor(() => fm.beats.length >= beats.length + 2, 5_000, "heartbeats after the re-join");
      assert.equal(sup.get("lk1").state, "running");

      // The manager fails: within the lease (+ the check interval) the VM is powered off.
      const pid = sup.pidOf("lk1");
      assert.ok(pid !== undefined);
      fm.mode = "fail";
      const t0 = performance.now();
      await waitFor(() => sup.get("lk1").state === "stopped", LEASE_MS + 3_000, "the VM to be fenced");
      const fencedMs = performance.now() - t0;
      assert.ok(fencedMs <= LEASE_MS + 1_000, `fenced after ${fencedMs.toFixed(0)} ms`);
      t.diagnostic(`VM fenced ${fencedMs.toFixed(0)} ms after the manager failed (lease ${LEASE_MS} ms)`);
      assert.throws(() => process.kill(pid, 0), "the VM process is gone");
      assert.match(sup.get("lk1").lastError ?? "", /^fenced: lost the manager's lease/);
      assert.ok(events.some((e) => e.type === "host.lease" && e.state === "lost"));
      assert.ok(events.some((e) => e.type === "vm.fenced" && e.vm === "lk1"));
      const st = link.status();
      assert.equal(st.leaseRemainingMs, 0);
      assert.match(st.lastError ?? "", /down for the test/);
      await expectCode(sup.start("lk1"), "HOST_NO_LEASE", 503);

      // The manager answers again: the lease is back, and so are starts.
      fm.mode = "ok";
      await waitFor(() => events.some((e) => e.type === "host.lease" && e.state === "renewed-after-loss"), 5_000, "the lease renewed");
      assert.ok(link.status().leaseRemainingMs > 0);
      assert.equal(link.status().lastError, undefined);
      const info = await sup.start("lk1");
      assert.equal(info.state, "running");
      await sup.poweroff("lk1");
    } finally {
      off();
      await link.stop();
    }
    // Stopped: no guard any more, no requests.
    const n = fm.beats.length;
    await new Promise((r) => setTimeout(r, HEARTBEAT_MS * 2));
    assert.equal(fm.beats.length, n);
  });
});
