/**
 * Migration between two host agents with real guests (v86, the built Debian image), over the
 * real HTTP API and the real migration connection: live, quick and cold migration, suspend and
 * resume, convergence under a guest that rewrites 64 MiB flat out, and the fault cases (the
 * connection dropped or a frame corrupted at each phase, either VM process killed, cancel,
 * unauthenticated and wrong-version peers). After every fault exactly one copy of the VM runs.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm, readFile } from "node:fs/promises";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { HopError } from "../common/errors.js";
import { FaultProxy, type Fault } from "../migration/faultproxy.js";
import { Command, decodeMessage, encodeFrame, encodeMessage, FrameDecoder, newNonce, PROTOCOL_VERSION } from "../migration/index.js";
import { HttpMigrationPeer } from "./client.js";
import type { MigrationPeer } from "./migration.js";
import { serveHost, type HostServerHandle } from "./server.js";
import { LocalSupervisor } from "./supervisor.js";
import { expectCode, waitFor } from "../common/testing.js";

const TOKEN = "migration-test-cluster-token-0123456789";
let dir: string;
const hosts: Record<"a" | "b", { sup: LocalSupervisor; server: HostServerHandle }> = {} as never;
/** The next migration's connection goes through this fault (then it is cleared). */
let nextFault: Fault | undefined;
const proxies: FaultProxy[] = [];

/** Resolves host names to their HTTP API; routes the migration stream through a FaultProxy when a fault is armed. */
function resolver(to: string): MigrationPeer {
  const h = hosts[to as "a" | "b"];
  if (h === undefined) throw new HopError("HOST_UNKNOWN", `unknown host ${to}`, { status: 400 });
  const peer = new HttpMigrationPeer(h.server.url, TOKEN);
  const fault = nextFault;
  nextFault = undefined;
  if (fault === undefined) return peer;
  return {
    url: peer.url,
    abortIncoming: (id) => peer.abortIncoming(id),
    commitIncoming: (id, path) => peer.commitIncoming(id, path),
    fenceIncoming: (id) => peer.fenceIncoming(id),
    prepareIncoming: async (req) => {
      const ticket = await peer.prepareIncoming(req);
      if (ticket.address === undefined) return ticket;
      const proxy = new FaultProxy(ticket.address, fault);
      proxies.push(proxy);
      return { ...ticket, address: await proxy.listen() };
    },
  };
}

/** `HB <n>` lines of a VM from the console of whichever host runs it, with arrival times. */
class Heartbeats {
  beats: { seq: number; at: number }[] = [];
  private partial = new Map<string, string>();
  private offs: (() => void)[] = [];
  constructor(private readonly vm: string) {
    for (const [name, h] of Object.entries(hosts)) {
      this.offs.push(
        h.sup.onEvent((ev) => {
          if (ev.type === "vm.state" && ev.state === "incoming" && ev.vm === vm) this.watch(name, h.sup);
        }),
      );
      if (h.sup.list().some((v) => v.name === vm)) this.watch(name, h.sup);
    }
  }
  private watch(host: string, sup: LocalSupervisor): void {
    this.offs.push(
      sup.console(this.vm).subscribe((chunk) => {
        const now = performance.now();
        const text = (this.partial.get(host) ?? "") + chunk.toString("latin1");
        const lines = text.split("\n");
        this.partial.set(host, lines.pop() ?? "");
        for (const line of lines) {
          const m = /HB (\d+)/.exec(line);
          if (m?.[1] !== undefined) this.beats.push({ seq: Number(m[1]), at: now });
        }
      }),
    );
  }
  /** Asserts the sequence has no hole and no repeat (a repeat would mean two copies ran). */
  assertContinuous(): void {
    assert.ok(this.beats.length > 10, `only ${this.beats.length} heartbeats`);
    for (let i = 1; i < this.beats.length; i++) {
      const a = this.beats[i - 1]!.seq;
      const b = this.beats[i]!.seq;
      assert.equal(b, a + 1, `heartbeat ${b} followed ${a}`);
    }
  }
  async waitMore(n: number, ms = 10_000): Promise<void> {
    const want = this.beats.length + n;
    await waitFor(() => this.beats.length >= want, ms, `${n} more heartbeats`);
  }
  stop(): void {
    for (const off of this.offs) off();
  }
}

/** Where VM `name` runs: exactly one host may have it, running. */
function whereRuns(name: string): string[] {
  return Object.entries(hosts)
    .filter(([, h]) => h.sup.list().some((v) => v.name === name && (v.state === "running" || v.state === "migrating")))
    .map(([n]) => n);
}

async function counter(host: "a" | "b", vm: string): Promise<number> {
  const r = await hosts[host].sup.exec(vm, "kvc 127.0.0.1 7000 INCR n");
  const m = /VALUE (\d+)/.exec(r.stdout);
  assert.ok(m?.[1] !== undefined, `kvc answered ${JSON.stringify(r)}`);
  return Number(m[1]);
}

async function guestClockSkewS(host: "a" | "b", vm: string): Promise<number> {
  const r = await hosts[host].sup.exec(vm, "date +%s");
  return Math.abs(Number(r.stdout.trim()) - Date.now() / 1000);
}

/** A running VM on host a with heartbeats every 10 ms and a counter in kvd at 1. */
async function runningVm(name: string, extra: { diskMiB?: number } = {}): Promise<Heartbeats> {
  const a = hosts.a.sup;
  await a.create({ name, memoryMiB: 128, ...extra });
  await a.start(name);
  const r = await a.exec(name, "hb -i 10 > /dev/ttyS0 2>&1 &");
  assert.equal(r.exitCode, 0);
  assert.equal(await counter("a", name), 1);
  const hb = new Heartbeats(name);
  await hb.waitMore(20);
  return hb;
}

async function removeEverywhere(name: string): Promise<void> {
  for (const h of Object.values(hosts)) {
    if (h.sup.list().some((v) => v.name === name)) await h.sup.destroy(name, { force: true, deleteDisk: true }).catch(() => undefined);
  }
}

void describe("migration between host agents with real guests", { timeout: 15 * 60_000 }, () => {
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "hop-mig-"));
    const ds = join(dir, "shared-ds");
    for (const name of ["a", "b"] as const) {
      // No spare is forked after a move in (the first test sees the one left by a move out).
      const sup = new LocalSupervisor({ hostName: name, datastore: ds, token: TOKEN, migrationListen: { host: "127.0.0.1", port: 0 }, peers: resolver, spareRefillAfterArrivalMs: 60 * 60_000 });
      await sup.init();
      const server = await serveHost({ supervisor: sup, migrations: sup, token: TOKEN, listen: "127.0.0.1:0" });
      hosts[name] = { sup, server };
    }
    await hosts.a.sup.prepareTemplate(128);
    await hosts.a.sup.prepareTemplate(128, 16);
  });

  after(async () => {
    for (const p of proxies) await p.close();
    for (const h of Object.values(hosts)) {
      await h.server.close();
      await h.sup.close();
    }
    await rm(dir, { recursive: true, force: true });
  });

  void test("live migration there and back: RAM identical at the pause, heartbeats, kvd state and clock continue", async () => {
    const hb = await runningVm("live1");
    try {
      const r1 = await hosts.a.sup.migrate("live1", { to: "b", mode: "live", verifyRam: true });
      assert.equal(r1.mode, "live");
      assert.equal(r1.to, "b");
      assert.ok(r1.ramSha256 !== undefined, "test mode reports RAM hashes");
      assert.equal(r1.ramSha256.target, r1.ramSha256.source, "target RAM differs from the source's at the pause");
      assert.ok(r1.rounds.length >= 2, "a full round and the final copy");
      assert.equal(r1.firstPass, "wasm", "round 0 ran in wasm (the RAM compared above went through it)");
      assert.equal(r1.dirtyTracking, "log");
      assert.ok(r1.downtimeMs > 0 && r1.downtimeMs < r1.totalMs);
      assert.deepEqual(whereRuns("live1"), ["b"]);
      await hb.waitMore(20);
      assert.equal(await counter("b", "live1"), 2, "kvd's in-memory counter moved with the VM");
      assert.ok((await guestClockSkewS("b", "live1")) < 2, "guest clock is right after the move");
      // The shared datastore now says host b owns it.
      const cfg = JSON.parse(await readFile(join(dir, "shared-ds", "vms", "live1", "config.json"), "utf8")) as { host: string; generation: number };
      assert.equal(cfg.host, "b");
      assert.equal(cfg.generation, 2);

      const pidOnB = hosts.b.sup.list().find((v) => v.name === "live1")?.pid;
      assert.ok(pidOnB !== undefined);
      const r2 = await hosts.b.sup.migrate("live1", { to: "a", mode: "live", verifyRam: true });
      assert.equal(r2.ramSha256?.target, r2.ramSha256?.source);
      assert.deepEqual(whereRuns("live1"), ["a"]);
      await hb.waitMore(20);
      assert.equal(await counter("a", "live1"), 3);
      // Host b took the VM in on its spare VM process and forked none after: the process the VM
      // left behind on b dropped it and is b's spare now, and the next move in runs there.
      assert.equal(hosts.b.sup.sparePid, pidOnB, "the VM process the VM left on b is b's spare");
      const r3 = await hosts.a.sup.migrate("live1", { to: "b", mode: "live", verifyRam: true });
      assert.equal(r3.ramSha256?.target, r3.ramSha256?.source, "target RAM differs from the source's at the pause (recycled process)");
      assert.equal(hosts.b.sup.list().find((v) => v.name === "live1")?.pid, pidOnB, "the VM runs in the recycled process");
      await hb.waitMore(20);
      assert.equal(await counter("b", "live1"), 4, "kvd's counter moved with the VM into the recycled process");
      assert.ok((await guestClockSkewS("b", "live1")) < 2, "guest clock is right in the recycled process");
      hb.assertContinuous();
    } finally {
      hb.stop();
      await removeEverywhere("live1");
    }
  });

  void test("live migration converges while dirty rewrites a 64 MiB set flat out", async () => {
    const hb = await runningVm("dirty1");
    try {
      const d = await hosts.a.sup.exec("dirty1", "dirty -w 64 > /dev/null 2>&1 &");
      assert.equal(d.exitCode, 0);
      await new Promise((r) => setTimeout(r, 1500));
      const rep = await hosts.a.sup.migrate("dirty1", { to: "b", mode: "live", verifyRam: true });
      assert.equal(rep.ramSha256?.target, rep.ramSha256?.source);
      assert.ok(rep.stopReason !== undefined);
      assert.deepEqual(whereRuns("dirty1"), ["b"]);
      await hb.waitMore(20);
      hb.assertContinuous();
      const ps = await hosts.b.sup.exec("dirty1", "pidof dirty");
      assert.equal(ps.exitCode, 0, "dirty still runs after the move");
    } finally {
      hb.stop();
      await removeEverywhere("dirty1");
    }
  });

  void test("quick migration: saved to the shared datastore, restored on the other host, heartbeats and kvd continue", async () => {
    const hb = await runningVm("quick1");
    try {
      const rep = await hosts.a.sup.migrate("quick1", { to: "b", mode: "quick" });
      assert.equal(rep.mode, "quick");
      assert.ok(rep.bytes > 1024 * 1024, "the whole state was saved");
      assert.ok(rep.downtime.stateSaveMs > 0);
      assert.deepEqual(whereRuns("quick1"), ["b"]);
      await hb.waitMore(20);
      hb.assertContinuous();
      assert.equal(await counter("b", "quick1"), 2);
      assert.ok((await guestClockSkewS("b", "quick1")) < 2, "guest clock is right after a quick migration");
    } finally {
      hb.stop();
      await removeEverywhere("quick1");
    }
  });

  void test("cold migration moves a stopped VM; its data disk comes along on the shared datastore", async () => {
    const a = hosts.a.sup;
    await a.create({ name: "cold1", memoryMiB: 128, diskMiB: 16 });
    await a.start("cold1");
    const w = await a.exec("cold1", "echo kept-across-hosts > /data/note && sync && cat /data/note");
    assert.equal(w.stdout.trim(), "kept-across-hosts");
    await expectCode(a.migrate("cold1", { to: "b", mode: "cold" }), "VM_NOT_STOPPED");
    await a.shutdown("cold1");
    try {
      const rep = await a.migrate("cold1", { to: "b", mode: "cold" });
      assert.equal(rep.mode, "cold");
      assert.equal(a.list().find((v) => v.name === "cold1"), undefined);
      assert.equal(hosts.b.sup.get("cold1").state, "stopped");
      await hosts.b.sup.start("cold1");
      const r = await hosts.b.sup.exec("cold1", "cat /data/note");
      assert.equal(r.stdout.trim(), "kept-across-hosts");
    } finally {
      await removeEverywhere("cold1");
    }
  });

  void test("suspend saves the VM to the datastore; start resumes it where it was", async () => {
    const hb = await runningVm("susp1");
    const a = hosts.a.sup;
    try {
      const s = await a.suspend("susp1");
      assert.equal(s.state, "suspended");
      assert.equal(a.pidOf("susp1"), undefined);
      await new Promise((r) => setTimeout(r, 1500));
      const started = await a.start("susp1");
      assert.equal(started.startedFrom, "suspended");
      await hb.waitMore(20);
      hb.assertContinuous();
      assert.equal(await counter("a", "susp1"), 2, "kvd's counter survived suspend/resume");
      assert.ok((await guestClockSkewS("a", "susp1")) < 2, "the clock does not lag by the suspended time");
      // The saved state is used up: a later start boots from the template again.
      await a.poweroff("susp1");
      assert.equal((await a.start("susp1")).startedFrom, "template");
    } finally {
      hb.stop();
      await removeEverywhere("susp1");
    }
  });

  const faults: { name: string; fault: Fault }[] = [
    { name: "connection dropped during the handshake", fault: { action: "drop-before", command: Command.Config } },
    { name: "connection dropped during the first round", fault: { action: "drop-before", command: Command.Pages, nth: 10 } },
    { name: "frame corrupted during the first round", fault: { action: "corrupt", command: Command.Pages, nth: 5 } },
    { name: "zero-page bitmap corrupted", fault: { action: "corrupt", command: Command.ZeroPages, nth: 3 } },
    { name: "connection dropped before the state", fault: { action: "drop-before", command: Command.State } },
    { name: "state frame corrupted", fault: { action: "corrupt", command: Command.State } },
    { name: "connection dropped after the target restored the state, during the final round", fault: { action: "drop-after", command: Command.State } },
    { name: "COMPLETE corrupted", fault: { action: "corrupt", command: Command.Complete } },
  ];
  for (const { name, fault } of faults) {
    void test(`fault before the switchover (${name}): the source runs on, the target keeps nothing`, async () => {
      const vm = `f${faults.findIndex((f) => f.name === name)}`;
      const hb = await runningVm(vm);
      try {
        nextFault = fault;
        await expectCode(hosts.a.sup.migrate(vm, { to: "b", mode: "live" }), /^MIGRATION_/);
        assert.equal(hosts.a.sup.get(vm).state, "running");
        await waitFor(() => !hosts.b.sup.list().some((v) => v.name === vm), 10_000, "the target to drop its copy");
        await hb.waitMore(20);
        hb.assertContinuous();
        assert.deepEqual(whereRuns(vm), ["a"]);
        assert.equal(await counter("a", vm), 2);
        // The VM can still migrate afterwards.
        await hosts.a.sup.migrate(vm, { to: "b", mode: "live" });
        assert.deepEqual(whereRuns(vm), ["b"]);
      } finally {
        hb.stop();
        await removeEverywhere(vm);
      }
    });
  }

  void test("answer lost after COMPLETE: the source stays paused, asks the target, and releases its copy", async () => {
    const hb = await runningVm("lost1");
    try {
      nextFault = { action: "drop-after", command: Command.Complete };
      // The target ran it: the report is lost but the VM moved, exactly once.
      await expectCode(hosts.a.sup.migrate("lost1", { to: "b", mode: "live" }), "MIGRATION_REPORT_LOST");
      assert.deepEqual(whereRuns("lost1"), ["b"]);
      await hb.waitMore(20);
      hb.assertContinuous();
      assert.equal(await counter("b", "lost1"), 2);
    } finally {
      hb.stop();
      await removeEverywhere("lost1");
    }
  });

  void test("target VM process killed during pre-copy: the source runs on", async () => {
    const hb = await runningVm("kt1");
    try {
      const off = hosts.b.sup.onEvent((ev) => {
        if (ev.type === "vm.state" && ev.state === "incoming" && ev.vm === "kt1") {
          const t = setInterval(() => {
            const pid = hosts.b.sup.pidOf("kt1");
            if (pid !== undefined) {
              clearInterval(t);
              setTimeout(() => process.kill(pid, "SIGKILL"), 150);
            }
          }, 5);
        }
      });
      await expectCode(hosts.a.sup.migrate("kt1", { to: "b", mode: "live" }), /^MIGRATION_/);
      off();
      assert.equal(hosts.a.sup.get("kt1").state, "running");
      await waitFor(() => !hosts.b.sup.list().some((v) => v.name === "kt1"), 10_000, "the target to forget the VM");
      await hb.waitMore(20);
      hb.assertContinuous();
      assert.equal(await counter("a", "kt1"), 2);
    } finally {
      hb.stop();
      await removeEverywhere("kt1");
    }
  });

  void test("source VM process killed during pre-copy: the target discards its half copy", async () => {
    await runningVm("ks1");
    try {
      const off = hosts.a.sup.onEvent((ev) => {
        if (ev.type === "migration.progress" && ev.vm === "ks1" && ev.progress.phase === "precopy") {
          const pid = hosts.a.sup.pidOf("ks1");
          if (pid !== undefined) process.kill(pid, "SIGKILL");
        }
      });
      await expectCode(hosts.a.sup.migrate("ks1", { to: "b", mode: "live" }), /^VM_PROCESS_EXITED|^MIGRATION_/);
      off();
      await waitFor(() => !hosts.b.sup.list().some((v) => v.name === "ks1"), 35_000, "the target to drop its half copy");
      assert.deepEqual(whereRuns("ks1"), []);
      assert.equal(hosts.a.sup.get("ks1").state, "crashed");
    } finally {
      await removeEverywhere("ks1");
    }
  });

  void test("target VM process killed while the source is paused for the final copy: the source resumes", async () => {
    const hb = await runningVm("kt2");
    try {
      // A guest that keeps 16 MiB dirty: its final copy lasts long enough for the kill to land in it.
      assert.equal((await hosts.a.sup.exec("kt2", "dirty -w 16 > /dev/null 2>&1 &")).exitCode, 0);
      const off = hosts.a.sup.onEvent((ev) => {
        if (ev.type === "migration.progress" && ev.vm === "kt2" && ev.progress.phase === "stop-and-copy") {
          const pid = hosts.b.sup.pidOf("kt2");
          if (pid !== undefined) process.kill(pid, "SIGKILL");
        }
      });
      await expectCode(hosts.a.sup.migrate("kt2", { to: "b", mode: "live" }), /^MIGRATION_/);
      off();
      assert.equal(hosts.a.sup.get("kt2").state, "running");
      await waitFor(() => !hosts.b.sup.list().some((v) => v.name === "kt2"), 10_000, "the target to forget the VM");
      await hb.waitMore(20);
      hb.assertContinuous();
      assert.equal(await counter("a", "kt2"), 2);
    } finally {
      hb.stop();
      await removeEverywhere("kt2");
    }
  });

  void test("source VM process killed right after COMPLETE: the target runs the VM, the source host lets it go", async () => {
    const hb = await runningVm("ks2");
    try {
      const off = hosts.a.sup.onEvent((ev) => {
        if (ev.type === "migration.progress" && ev.vm === "ks2" && ev.progress.phase === "switchover") {
          const pid = hosts.a.sup.pidOf("ks2");
          if (pid !== undefined) process.kill(pid, "SIGKILL");
        }
      });
      // The kill races the switchover: the report may reach the host first (the target restores
      // during the final copy, so it resumes right after COMPLETE), or the report is lost.
      const outcome = await hosts.a.sup.migrate("ks2", { to: "b", mode: "live" }).then(
        () => "reported" as const,
        (e: unknown) => e,
      );
      off();
      const code = outcome === "reported" ? undefined : (outcome as { code?: string }).code;
      if (outcome !== "reported") assert.match(code ?? "", /^MIGRATION_|^VM_PROCESS_EXITED$/, `migrate failed with ${String(outcome)}`);
      if (outcome === "reported" || code === "MIGRATION_REPORT_LOST") {
        // COMPLETE reached the target first: it runs there, once.
        assert.deepEqual(whereRuns("ks2"), ["b"]);
        assert.equal(hosts.a.sup.list().find((v) => v.name === "ks2"), undefined);
        await hb.waitMore(20);
        hb.assertContinuous();
        assert.equal(await counter("b", "ks2"), 2);
      } else {
        // The process died before COMPLETE left it: the target discarded its copy.
        await waitFor(() => !hosts.b.sup.list().some((v) => v.name === "ks2"), 35_000, "the target to drop its copy");
        assert.deepEqual(whereRuns("ks2"), []);
      }
    } finally {
      hb.stop();
      await removeEverywhere("ks2");
    }
  });

  void test("cancel during pre-copy: the source runs on", async () => {
    const hb = await runningVm("cancel1");
    try {
      const off = hosts.a.sup.onEvent((ev) => {
        if (ev.type === "migration.progress" && ev.vm === "cancel1" && ev.progress.phase === "precopy") {
          void hosts.a.sup.cancelMigration(ev.progress.migrationId).catch(() => undefined);
        }
      });
      await expectCode(hosts.a.sup.migrate("cancel1", { to: "b", mode: "live" }), "MIGRATION_ABORTED");
      off();
      assert.equal(hosts.a.sup.get("cancel1").state, "running");
      await waitFor(() => !hosts.b.sup.list().some((v) => v.name === "cancel1"), 10_000, "the target to drop its copy");
      await hb.waitMore(20);
      hb.assertContinuous();
    } finally {
      hb.stop();
      await removeEverywhere("cancel1");
    }
  });

  void test("an unauthenticated or wrong-version peer is refused", async () => {
    const addr = hosts.b.sup.migrationAddress;
    assert.ok(addr !== undefined);
    const exchange = (frames: Buffer[]): Promise<{ cmd: Command; code?: string }[]> =>
      new Promise((resolve, reject) => {
        const s = connect(addr);
        const dec = new FrameDecoder();
        const got: { cmd: Command; code?: string }[] = [];
        s.on("data", (c: Buffer) => {
          for (const f of dec.push(c)) {
            const m = decodeMessage(f);
            got.push({ cmd: m.cmd, ...(m.cmd === Command.Error ? { code: m.code } : {}) });
          }
        });
        s.on("error", reject);
        s.on("close", () => resolve(got));
        s.write(Buffer.concat(frames));
        setTimeout(() => s.destroy(), 3_000);
      });
    const hello = (migrationId: string, version = PROTOCOL_VERSION): Buffer => {
      const f = encodeMessage({ cmd: Command.Hello, protocolVersion: PROTOCOL_VERSION, engineVersion: "v86 0.5.462", migrationId, vmUuid: "x", clientNonce: newNonce() });
      if (version === PROTOCOL_VERSION) return f;
      // Re-encode the JSON with another version (the frame checksum is recomputed).
      const payload = JSON.parse(f.subarray(12).toString("utf8")) as Record<string, unknown>;
      payload["protocolVersion"] = version;
      return encodeFrame(Command.Hello, Buffer.from(JSON.stringify(payload)));
    };
    // No prepared migration by that id: refused before anything else.
    const r1 = await exchange([hello("nobody-prepared-this")]);
    assert.deepEqual(r1, [{ cmd: Command.Error, code: "MIGRATION_AUTH_FAILED" }]);
    const r2 = await exchange([hello("x", 99)]);
    assert.deepEqual(r2, [{ cmd: Command.Error, code: "MIGRATION_VERSION_MISMATCH" }]);
    // A prepared migration, but the peer does not hold the token: its proof fails, nothing is created.
    await hosts.a.sup.create({ name: "auth1", memoryMiB: 128 });
    const cfg = hosts.a.sup.get("auth1").config;
    const ticket = await new HttpMigrationPeer(hosts.b.server.url, TOKEN).prepareIncoming({ migrationId: "auth-test-1", mode: "live", source: "a", config: cfg, datastoreId: "whatever" });
    assert.ok(ticket.address !== undefined);
    const helloFrame = encodeMessage({ cmd: Command.Hello, protocolVersion: PROTOCOL_VERSION, engineVersion: "v86 0.5.462", migrationId: "auth-test-1", vmUuid: cfg.uuid, clientNonce: newNonce() });
    const forged = encodeMessage({
      cmd: Command.Config,
      proof: "00".repeat(32),
      config: { name: "auth1", uuid: cfg.uuid, memoryMiB: 128, vgaMemoryKiB: 256, nic: "virtio", disk: false, generation: 2, pageSize: 4096 },
    });
    const s = connect(ticket.address);
    const got: { cmd: Command; code?: string }[] = [];
    const dec = new FrameDecoder();
    await new Promise<void>((resolve) => {
      s.on("data", (c: Buffer) => {
        for (const f of dec.push(c)) {
          const m = decodeMessage(f);
          got.push({ cmd: m.cmd, ...(m.cmd === Command.Error ? { code: m.code } : {}) });
          if (m.cmd === Command.HelloAck) s.write(forged);
        }
      });
      s.on("close", () => resolve());
      s.on("error", () => resolve());
      s.write(helloFrame);
    });
    assert.deepEqual(got, [{ cmd: Command.HelloAck }, { cmd: Command.Error, code: "MIGRATION_AUTH_FAILED" }]);
    await waitFor(() => !hosts.b.sup.list().some((v) => v.name === "auth1"), 10_000, "the target to drop the refused VM");
    assert.equal(await hosts.b.sup.fenceIncoming("auth-test-1"), "aborted");
    await removeEverywhere("auth1");
  });
});
