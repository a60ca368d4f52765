import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { HopError } from "../common/errors.js";
import { createLogger } from "../common/log.js";
import { MemoryStore } from "./store/index.js";
import { slot, TaskRunner, type TaskContext } from "./tasks.js";
import type { TaskRow } from "./types.js";

async function runner(): Promise<{ tasks: TaskRunner; store: MemoryStore; changes: TaskRow[] }> {
  const store = new MemoryStore();
  await store.init();
  const changes: TaskRow[] = [];
  return { tasks: new TaskRunner(store, (r) => changes.push(r), createLogger("test")), store, changes };
}

/** A task body that runs until released, counting how many run at once. */
function gate(): { body: (ctx: TaskContext) => Promise<unknown>; release: () => void; running: () => number; peak: () => number } {
  let running = 0;
  let peak = 0;
  let open!: () => void;
  const opened = new Promise<void>((r) => (open = r));
  return {
    body: async () => {
      running++;
      peak = Math.max(peak, running);
      await opened;
      running--;
      return "done";
    },
    release: () => open(),
    running: () => running,
    peak: () => peak,
  };
}

void describe("TaskRunner", () => {
  void test("a slot's capacity bounds how many tasks run at once (vMotion-like limits)", async () => {
    const { tasks } = await runner();
    const g = gate();
    const rows = await Promise.all(Array.from({ length: 10 }, () => tasks.submit("vm.migrate", {}, g.body, { slots: [slot("migration:host:h1", 4), slot("migration:cluster", 8)] })));
    await sleep(20);
    assert.equal(g.running(), 4);
    assert.equal(tasks.active().length, 10);
    g.release();
    const ends = await Promise.all(rows.map((r) => tasks.wait(r.id)));
    assert.ok(ends.every((e) => e.state === "succeeded" && e.result === "done" && e.progress === 1));
    assert.equal(g.peak(), 4);
  });

  void test("slots are taken all at once: a task needing two busy slots does not hold one meanwhile", async () => {
    const { tasks } = await runner();
    const a = gate();
    const b = gate();
    const ta = await tasks.submit("vm.migrate", {}, a.body, { slots: [slot("vm:x")] });
    const tb = await tasks.submit("vm.migrate", {}, b.body, { slots: [slot("vm:y")] });
    const both = gate();
    const tboth = await tasks.submit("vm.migrate", {}, both.body, { slots: [slot("vm:x"), slot("vm:y")] });
    const c = gate();
    const tc = await tasks.submit("vm.migrate", {}, c.body, { slots: [slot("vm:z")] });
    await sleep(20);
    assert.equal(both.running(), 0);
    assert.equal(c.running(), 1, "an unrelated task is not blocked by a queued one");
    a.release();
    await tasks.wait(ta.id);
    await sleep(20);
    assert.equal(both.running(), 0, "still waits for vm:y");
    b.release();
    await tasks.wait(tb.id);
    await sleep(20);
    assert.equal(both.running(), 1);
    both.release();
    c.release();
    assert.equal((await tasks.wait(tboth.id)).state, "succeeded");
    assert.equal((await tasks.wait(tc.id)).state, "succeeded");
  });

  void test("cancel: a queued task ends at once, a running one is signalled; failures keep code and status", async () => {
    const { tasks, store } = await runner();
    const g = gate();
    const running = await tasks.submit("vm.start", {}, async (ctx) => {
      ctx.progress(0.5, "half way");
      await new Promise((_, reject) => ctx.signal.addEventListener("abort", () => reject(ctx.signal.reason as Error)));
    }, { slots: [slot("vm:a")] });
    const queued = await tasks.submit("vm.start", {}, g.body, { slots: [slot("vm:a")] });
    await sleep(20);
    const q = await tasks.cancel(queued.id);
    assert.equal(q.state, "cancelled");
    await tasks.cancel(running.id);
    const end = await tasks.wait(running.id);
    assert.equal(end.state, "cancelled");
    assert.equal(end.error?.code, "TASK_CANCELLED");
    assert.equal(end.cancelRequested, true);
    await assert.rejects(tasks.cancel(running.id), (e: HopError) => e.code === "TASK_ENDED");
    await assert.rejects(tasks.cancel("nope"), (e: HopError) => e.code === "TASK_NOT_FOUND" && e.status === 404);

    const failing = await tasks.submit("vm.migrate", { to: "h2" }, async () => {
      throw new HopError("INSUFFICIENT_CAPACITY", "no room", { status: 409 });
    });
    const f = await tasks.wait(failing.id);
    assert.equal(f.state, "failed");
    assert.deepEqual(f.error, { code: "INSUFFICIENT_CAPACITY", message: "no room", status: 409 });
    const stored = await store.getTask(failing.id);
    assert.equal(stored?.state, "failed");
    assert.deepEqual(stored?.params, { to: "h2" });
    assert.ok(stored?.startedAt !== undefined && stored.endedAt !== undefined);
  });

  void test("progress is recorded and every change is reported", async () => {
    const { tasks, store, changes } = await runner();
    const t = await tasks.submit("host.maintenance.enter", { host: "h1" }, async (ctx) => {
      ctx.progress(0.3, "moving 3 VMs");
      await sleep(300);
      ctx.progress(0.6, "moving 2 VMs");
      await sleep(300);
    }, { host: "h1" });
    const mid = await (async () => {
      await sleep(450);
      return store.getTask(t.id);
    })();
    assert.equal(mid?.state, "running");
    assert.ok((mid?.progress ?? 0) >= 0.3);
    await tasks.wait(t.id);
    const states = changes.filter((c) => c.id === t.id).map((c) => c.state);
    assert.deepEqual([states[0], states.at(-1)], ["queued", "succeeded"]);
    assert.ok(states.includes("running"));
  });
});
