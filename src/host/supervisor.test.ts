/**
 * The host agent's supervisor with real guests (v86, the built Debian image): template
 * start, exec, pause/resume continuity, crash isolation, data disk persistence, and errors.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { LocalSupervisor, spareRefillDelayMs } from "./supervisor.js";
import { serveHost } from "./server.js";
import { expectCode, waitFor } from "../common/testing.js";

let dir: string;
let sup: LocalSupervisor;

/** Collects `HB <n>` lines from a VM's console with the host's arrival time. */
function watchHeartbeats(name: string): { beats: { seq: number; at: number }[]; stop: () => void } {
  const beats: { seq: number; at: number }[] = [];
  let partial = "";
  const stop = sup.console(name).subscribe((chunk) => {
    const now = performance.now();
    partial += chunk.toString("latin1");
    const lines = partial.split("\n");
    partial = lines.pop() ?? "";
    for (const line of lines) {
      const m = /HB (\d+)/.exec(line);
      if (m?.[1] !== undefined) beats.push({ seq: Number(m[1]), at: now });
    }
  });
  return { beats, stop };
}

void describe("LocalSupervisor with real guests", { timeout: 10 * 60_000 }, () => {
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "hop-sup-"));
    sup = new LocalSupervisor({ hostName: "test-a", datastore: join(dir, "ds") });
    await sup.init();
    // Boot once per hardware profile; every VM below restores these template states.
    await sup.prepareTemplate(128);
    await sup.prepareTemplate(128, 32);
  });

  after(async () => {
    await sup.close();
    await rm(dir, { recursive: true, force: true });
  });

  void test("a VM starts from the template and is ready with its own identity", async () => {
    const created = await sup.create({ name: "web1", memoryMiB: 128, ip: "10.20.0.11/24" });
    assert.equal(created.state, "defined");
    const info = await sup.start("web1");
    assert.equal(info.state, "running");
    assert.equal(info.startedFrom, "template");
    assert.ok(typeof info.startMs === "number" && info.startMs > 0);
    const host = await sup.exec("web1", "hostname");
    assert.equal(host.stdout.trim(), "web1");
    const mac = await sup.exec("web1", "cat /sys/class/net/eth0/address");
    assert.equal(mac.stdout.trim(), info.config.mac);
    const ip = await sup.exec("web1", "ip -4 addr show eth0");
    assert.match(ip.stdout, /10\.20\.0\.11\/24/);
    // The guest clock was set from the host on restore, not left at the template's save time.
    const date = await sup.exec("web1", "date +%s");
    assert.ok(Math.abs(Number(date.stdout.trim()) - Date.now() / 1000) < 5, `guest clock ${date.stdout.trim()}`);
  });

  void test("exec returns stdout, stderr and the exit status", async () => {
    const r = await sup.exec("web1", "echo out; echo err >&2; exit 7");
    assert.deepEqual(r, { exitCode: 7, stdout: "out\n", stderr: "err\n" });
    const kv = await sup.exec("web1", "kvc 127.0.0.1 7000 INCR hits; kvc 127.0.0.1 7000 INCR hits");
    assert.equal(kv.stdout, "VALUE 1\nVALUE 2\n");
  });

  void test("pause/resume keeps the hb sequence continuous with no gap beyond the pause", async () => {
    const hb = watchHeartbeats("web1");
    try {
      const r = await sup.exec("web1", "hb -i 10 > /dev/ttyS0 2>&1 &");
      assert.equal(r.exitCode, 0);
      await waitFor(() => hb.beats.length >= 30, 10_000, "30 heartbeats");
      const pauseMs = 600;
      await sup.pause("web1");
      assert.equal(sup.get("web1").state, "paused");
      const pausedAt = performance.now();
      const countAtPause = hb.beats.length;
      await new Promise((r) => setTimeout(r, pauseMs));
      // Nothing is printed while paused (allow one line already in flight).
      assert.ok(hb.beats.length <= countAtPause + 1, "heartbeats arrived while paused");
      await sup.resume("web1");
      const resumedAt = performance.now();
      await waitFor(() => hb.beats.length >= countAtPause + 30, 10_000, "30 heartbeats after resume");
      const seqs = hb.beats.map((b) => b.seq);
      for (let i = 1; i < seqs.length; i++) assert.equal(seqs[i], (seqs[i - 1] ?? 0) + 1, `sequence jumped at ${i}: ${seqs.slice(Math.max(0, i - 3), i + 3).join(",")}`);
      let maxGap = 0;
      for (let i = 1; i < hb.beats.length; i++) maxGap = Math.max(maxGap, (hb.beats[i]?.at ?? 0) - (hb.beats[i - 1]?.at ?? 0));
      const paused = resumedAt - pausedAt;
      assert.ok(maxGap >= paused - 50, `largest gap ${maxGap.toFixed(0)} ms should cover the pause ${paused.toFixed(0)} ms`);
      assert.ok(maxGap <= paused + 1000, `largest gap ${maxGap.toFixed(0)} ms is far beyond the pause ${paused.toFixed(0)} ms`);
    } finally {
      hb.stop();
      await sup.exec("web1", "killall hb").catch(() => undefined);
    }
  });

  void test("invalid transitions, unknown VMs and bad definitions get clear errors", async () => {
    await expectCode(sup.resume("web1"), "VM_INVALID_TRANSITION", 409);
    await expectCode(sup.start("web1"), "VM_INVALID_TRANSITION", 409);
    await expectCode(sup.start("nope"), "VM_NOT_FOUND", 404);
    await expectCode(() => sup.get("nope"), "VM_NOT_FOUND", 404);
    const tooSmall = await expectCode(sup.create({ name: "small", memoryMiB: 32 }), "BAD_REQUEST", 400);
    assert.match(tooSmall.message, /memoryMiB/);
    await expectCode(sup.create({ name: "Bad_Name" }), "BAD_REQUEST", 400);
    await expectCode(sup.create({ name: "web1" }), "VM_EXISTS", 409);
    await expectCode(sup.destroy("web1"), "VM_INVALID_TRANSITION", 409);
    await expectCode(sup.exec("nope", "true"), "VM_NOT_FOUND", 404);
  });

  void test("the real host agent API refuses bad requests with clear errors", async () => {
    const server = await serveHost({ supervisor: sup, token: "t0ken-for-tests", listen: "127.0.0.1:0" });
    try {
      const call = async (method: string, path: string, token: string, body?: unknown): Promise<{ status: number; json: { error?: { code: string; message: string } } & Record<string, unknown> }> => {
        const res = await fetch(`${server.url}${path}`, {
          method,
          headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { "content-type": "application/json" } : {}) },
          ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
        });
        return { status: res.status, json: (await res.json()) as { error?: { code: string; message: string } } };
      };
      const wrong = await call("GET", "/v1/vms", "wrong");
      assert.equal(wrong.status, 401);
      assert.equal(wrong.json.error?.code, "AUTH_INVALID");
      const unknown = await call("POST", "/v1/vms/nope/start", "t0ken-for-tests");
      assert.equal(unknown.status, 404);
      assert.equal(unknown.json.error?.code, "VM_NOT_FOUND");
      const mem = await call("POST", "/v1/vms", "t0ken-for-tests", { name: "x1", memoryMiB: 4000 });
      assert.equal(mem.status, 400);
      assert.match(mem.json.error?.message ?? "", /memoryMiB/);
      const resume = await call("POST", "/v1/vms/web1/resume", "t0ken-for-tests");
      assert.equal(resume.status, 409);
      assert.equal(resume.json.error?.code, "VM_INVALID_TRANSITION");
      const exec = await call("POST", "/v1/vms/web1/exec", "t0ken-for-tests", { command: "echo via-http" });
      assert.equal(exec.status, 200);
      assert.equal(exec.json["stdout"], "via-http\n");
    } finally {
      await server.close();
    }
  });

  void test("a crashed VM process is reported and the host agent carries on", async () => {
    await sup.create({ name: "crashy", memoryMiB: 128 });
    await sup.start("crashy");
    const pid = sup.pidOf("crashy");
    assert.ok(pid !== undefined);
    const crashed = new Promise<string>((resolve) => {
      const off = sup.onEvent((ev) => {
        if (ev.type === "vm.crashed" && ev.vm === "crashy") {
          off();
          resolve(ev.reason);
        }
      });
    });
    process.kill(pid, "SIGKILL");
    const reason = await crashed;
    assert.match(reason, /SIGKILL/);
    assert.equal(sup.get("crashy").state, "crashed");
    // The other VM is untouched and the supervisor still serves requests.
    assert.equal((await sup.exec("web1", "echo alive")).stdout, "alive\n");
    // A crashed VM can be started again.
    await sup.start("crashy");
    assert.equal((await sup.exec("crashy", "echo back")).stdout, "back\n");
    await sup.poweroff("crashy");
    assert.equal(sup.get("crashy").state, "stopped");
    await sup.destroy("crashy");
    await expectCode(() => sup.get("crashy"), "VM_NOT_FOUND");
  });

  void test("data written to the data disk survives a VM restart", async () => {
    await sup.create({ name: "db1", memoryMiB: 128, diskMiB: 32 });
    await sup.start("db1");
    const df = await sup.exec("db1", "mount | grep /data; df -k /data | tail -1");
    assert.match(df.stdout, /\/dev\/sda on \/data/);
    const w = await sup.exec("db1", "echo persisted-$((6*7)) > /data/marker && sync && cat /data/marker");
    assert.equal(w.stdout, "persisted-42\n");
    const stopped = await sup.shutdown("db1", { timeoutMs: 20_000 });
    assert.equal(stopped.state, "stopped");
    await sup.start("db1");
    const r = await sup.exec("db1", "cat /data/marker");
    assert.equal(r.stdout, "persisted-42\n");
    await sup.shutdown("db1", { timeoutMs: 20_000 });
  });
});

void test("the next spare after a move in: late while VMs also leave (their processes become spares), soon while they only arrive", () => {
  // The first move in, and a move in after a VM left: late.
  assert.equal(spareRefillDelayMs(-Infinity, -Infinity, 10_000), 10_000);
  assert.equal(spareRefillDelayMs(1_000, 2_000, 10_000), 10_000);
  // A second move in with no move out since the first (an evacuation): soon.
  assert.equal(spareRefillDelayMs(2_000, 1_000, 10_000), 500);
  assert.equal(spareRefillDelayMs(2_000, -Infinity, 10_000), 500);
});
