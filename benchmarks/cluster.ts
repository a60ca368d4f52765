/**
 * Cluster benchmarks on loopback with real guests, 3 host agents (separate processes, one shared
 * datastore) and the manager:
 *  - evacuation: a host running 8 VMs (128 MiB) enters maintenance mode; time until every VM
 *    runs on the other hosts (live migrations within the per-host limit of 4), and the pauses;
 *  - HA restart: kill -9 of a host agent and its VMs; time until its VMs run elsewhere, from
 *    the kill and from the moment the manager declared the host down (default timings:
 *    heartbeat 1 s, lease 5 s, grace 8 s).
 *
 *   node dist/benchmarks/cluster.js [--runs N] [--vms 8] [--ha-vms 4]
 */
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { setTimeout as sleep } from "node:timers/promises";
import { ClusterHarness } from "../src/cluster/testing.js";
import { waitFor as waitUntil } from "../src/common/testing.js";
import type { TaskRow } from "../src/cluster/types.js";
import type { MigrationReport } from "../src/migration/index.js";
import { LocalSupervisor } from "../src/host/supervisor.js";
import { report, summarize, type Metric } from "./report.js";

const { values } = parseArgs({
  options: {
    runs: { type: "string", default: "3" },
    vms: { type: "string", default: "8" },
    "ha-vms": { type: "string", default: "4" },
  },
});
const runs = Number(values.runs);
const vmCount = Number(values.vms);
const haVms = Number(values["ha-vms"]);

/** Polls every 50 ms; a request that fails counts as "not yet". */
function waitFor<T>(fn: () => Promise<T | undefined | false>, ms: number, what: string): Promise<T> {
  return waitUntil(() => fn().catch(() => undefined), ms, what, 50);
}

const dir = await mkdtemp(join(tmpdir(), "hop-bench-cluster-"));
const prep = new LocalSupervisor({ hostName: "prep", datastore: join(dir, "prep-ds") });
await prep.init();
await prep.prepareTemplate(128);
await prep.close();

const token = `bench-${randomBytes(16).toString("hex")}`;
const cluster = new ClusterHarness({ dir, hosts: 3, token, capacityMiB: 4096 });
const evacMs: number[] = [];
const evacPauseMs: number[] = [];
const evacMaxPauseMs: number[] = [];
const haFromKillMs: number[] = [];
const haFromDownMs: number[] = [];
try {
  await cluster.start();
  const c = cluster.client;
  const names = Array.from({ length: vmCount }, (_, i) => `ev${i + 1}`);
  for (const name of names) await c.create({ name, memoryMiB: 128, host: "h1", start: true });

  for (let run = 0; run < runs; run++) {
    // Everything on h1, then evacuate it.
    for (const v of await c.list()) if (names.includes(v.name) && v.host !== "h1") await c.migrate(v.name, { to: "h1" });
    await sleep(2_000);
    const t0 = performance.now();
    const task = await c.maintenance("h1", { enter: true, wait: true });
    const ms = performance.now() - t0;
    if (task.state !== "succeeded") throw new Error(`evacuation failed: ${JSON.stringify(task.error)}`);
    const children: TaskRow[] = await c.tasks({ parentId: task.id });
    const pauses = children.map((ch) => (ch.result as { report: MigrationReport }).report.downtimeMs);
    evacMs.push(ms);
    evacPauseMs.push(...pauses);
    evacMaxPauseMs.push(Math.max(...pauses));
    console.log(`evacuation ${run + 1}: ${names.length} VMs in ${Math.round(ms)} ms, pauses ${pauses.map((p) => Math.round(p)).join(", ")} ms`);
    await c.maintenance("h1", { enter: false });
  }

  // HA: the VMs to protect on h3, then kill -9 of h3 and its VMs.
  const haNames = Array.from({ length: haVms }, (_, i) => `ha${i + 1}`);
  for (const name of haNames) await c.create({ name, memoryMiB: 128, host: "h3", start: true });
  for (let run = 0; run < runs; run++) {
    const victim = run % 2 === 0 ? "h3" : "h2";
    for (const v of await c.list()) if (haNames.includes(v.name) && v.host !== victim) await c.migrate(v.name, { to: victim });
    await sleep(2_000);
    const lastEvent = (await c.listEvents({ limit: 1 }))[0]?.id ?? 0;
    const killedAt = Date.now();
    await cluster.killHost(victim);
    await waitFor(async () => {
      const vms = await c.list();
      return haNames.every((n) => vms.some((v) => v.name === n && v.host !== victim && v.state === "running"));
    }, 120_000, "the VMs to run elsewhere");
    const fromKill = Date.now() - killedAt;
    const down = (await c.listEvents({ afterId: lastEvent, type: "host.down", limit: 10 })).find((e) => e.host === victim);
    const fromDown = down !== undefined ? Date.now() - Date.parse(down.at) : NaN;
    haFromKillMs.push(fromKill);
    if (!Number.isNaN(fromDown)) haFromDownMs.push(fromDown);
    console.log(`HA ${run + 1}: ${haNames.length} VMs of ${victim} running elsewhere ${fromKill} ms after kill -9 (${Math.round(fromDown)} ms after host.down)`);
    await cluster.startHost(victim);
    await cluster.waitHosts([victim], "connected");
  }
} finally {
  await cluster.stop();
  await rm(dir, { recursive: true, force: true });
}

const metrics: Metric[] = [
  summarize(`evacuation of ${vmCount} VMs (total)`, "ms", evacMs),
  summarize("evacuation: pause per VM", "ms", evacPauseMs),
  summarize("evacuation: longest pause in a run", "ms", evacMaxPauseMs),
  summarize(`HA restart of ${haVms} VMs from kill -9`, "ms", haFromKillMs, { text: "<= 15000", ok: (m) => m.max <= 15_000 }),
  summarize("HA restart after host declared down", "ms", haFromDownMs),
];
await report("cluster", metrics, { vms: vmCount, haVms, timings: { heartbeatMs: 1000, leaseMs: 5000, graceMs: 8000 } });
