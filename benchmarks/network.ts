/**
 * What a real client on the host sees of a migrating guest. Two host agents as processes on
 * loopback, joined by VXLAN (each its own 127.x.y.z underlay), the first with host access (a
 * Linux gateway): a TCP client in this process talks to kvd in a 128 MiB guest (a request every
 * 5 ms, every reply checked) and the system's ping pings it every 10 ms, both through the
 * gateway, while the guest moves back and forth. Per run: the longest gap between replies the
 * TCP client saw (from the migration request to 1 s after it returned) and the pings lost.
 * Needs root (gateway, ping below 200 ms); otherwise it says so and exits.
 *   node dist/benchmarks/network.js [--runs N] [--cases live,quick]
 *
 * Reference (same guest image under QEMU, user-mode networking, benchmarks/qemu.ts): the
 * longest gap a TCP client saw was 104-131 ms for live migration and 255 ms for quick.
 */
import { randomBytes, randomInt } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { startAgent, type AgentProcess } from "../src/host/agents.js";
import { HostClient } from "../src/host/client.js";
import { KvdProbe, Pinger } from "../src/host/probes.js";
import { LocalSupervisor } from "../src/host/supervisor.js";
import { freeSubnet, skipReasonUnlessRoot } from "../src/net/index.js";
import { report, summarize, type Metric } from "./report.js";
import { setTimeout as sleep } from "node:timers/promises";

const { values } = parseArgs({
  options: {
    runs: { type: "string", default: "10" },
    cases: { type: "string", default: "live,quick" },
  },
});
const runs = Number(values.runs);
const caseNames = values.cases.split(",").map((c) => c.trim());
for (const c of caseNames) if (c !== "live" && c !== "quick") throw new Error(`unknown case ${c}; cases: live, quick`);
const cases = caseNames as ("live" | "quick")[];

const QEMU = { live: { text: "QEMU user-net: 104-131", max: 131 }, quick: { text: "QEMU user-net: 255", max: 255 } } as const;
const AFTER_MS = 1000;

interface Run {
  pauseMs: number;
  totalMs: number;
  gapMs: number;
  pingsLost: number;
  replies: number;
  errors: number;
}


async function main(): Promise<void> {
  const skip = skipReasonUnlessRoot();
  if (skip !== false) {
    console.log(`network benchmark skipped: ${skip}`);
    return;
  }
  const dir = await mkdtemp(join(tmpdir(), "hop-bench-net-"));
  const token = randomBytes(24).toString("hex");
  const agents: AgentProcess[] = [];
  const metrics: Metric[] = [];
  const results: Partial<Record<"live" | "quick", Run[]>> = {};
  try {
    const prep = new LocalSupervisor({ hostName: "prep", datastore: join(dir, "prep") });
    await prep.init();
    await prep.prepareTemplate(128);
    await prep.close();
    const base = `127.${randomInt(64, 250)}.${randomInt(1, 250)}`;
    const port = randomInt(20_000, 60_000);
    const network = `bench:${randomInt(1000, 1 << 20)}:${await freeSubnet()}`;
    const ds = join(dir, "ds");
    const underlay = { a: `${base}.1`, b: `${base}.2` };
    for (const name of ["a", "b"] as const) {
      agents.push(
        await startAgent({
          name: `bench-${name}`,
          datastore: ds,
          token,
          underlay: `${underlay[name]}:${port}`,
          vxlanRemotes: [`${underlay[name === "a" ? "b" : "a"]}:${port}`],
          networks: [network],
          ...(name === "a" ? { hostAccess: ["bench"] } : {}),
        }),
      );
    }
    const hosts = { a: { client: new HostClient(agents[0]!.url, token), url: agents[0]!.url }, b: { client: new HostClient(agents[1]!.url, token), url: agents[1]!.url } };
    await hosts.a.client.create({ name: "netbench", memoryMiB: 128, network: "bench" });
    await hosts.a.client.start("netbench");
    const ip = (await hosts.a.client.get("netbench")).config.ip?.split("/")[0] ?? "";
    let here: "a" | "b" = "a";
    for (const mode of cases) {
      const probe = await KvdProbe.connect({ host: ip, mode: "seq", intervalMs: 5 });
      const ping = new Pinger(ip, 10);
      probe.start();
      const out: Run[] = [];
      try {
        await sleep(1500);
        for (let i = 0; i < runs; i++) {
          const to: "a" | "b" = here === "a" ? "b" : "a";
          const errorsBefore = probe.stats().errors;
          const t0 = performance.now();
          const seq0 = ping.seqAt(t0) ?? 1;
          const rep = await hosts[here].client.migrate("netbench", { to: hosts[to].url, mode });
          const t1 = performance.now();
          here = to;
          await sleep(AFTER_MS + 300);
          const seq1 = ping.seqAt(t1 + AFTER_MS) ?? seq0;
          const run: Run = {
            pauseMs: rep.downtimeMs,
            totalMs: rep.totalMs,
            gapMs: probe.longestGap(t0, t1 + AFTER_MS),
            pingsLost: ping.lost(seq0, seq1).length,
            replies: probe.stats().replies,
            errors: probe.stats().errors - errorsBefore,
          };
          out.push(run);
          console.log(`${mode} #${i + 1}: pause ${run.pauseMs.toFixed(1)} ms, longest gap between TCP replies ${run.gapMs.toFixed(1)} ms, pings lost ${run.pingsLost}, client errors ${run.errors}`);
        }
      } finally {
        const s = await probe.stop();
        probe.close();
        await ping.stop();
        console.log(`${mode}: TCP client ${s.replies} replies of ${s.sent} requests, ${s.errors} errors${s.errorMessages.length > 0 ? ` (${s.errorMessages.join("; ")})` : ""}, connection ${s.closed ? "closed" : "open throughout"}`);
      }
      results[mode] = out;
      metrics.push(summarize(`${mode}_tcp_longest_gap_ms`, "ms", out.map((r) => r.gapMs), { text: QEMU[mode].text, ok: (m) => m.median <= QEMU[mode].max }));
      metrics.push(summarize(`${mode}_pings_lost`, "pings", out.map((r) => r.pingsLost), mode === "live" ? { text: "<= 1", ok: (m) => m.max <= 1 } : undefined));
      metrics.push(summarize(`${mode}_pause_on_hosts_ms`, "ms", out.map((r) => r.pauseMs)));
      metrics.push(summarize(`${mode}_tcp_client_errors`, "errors", out.map((r) => r.errors), { text: "0", ok: (m) => m.max === 0 }));
    }
    await hosts[here].client.poweroff("netbench").catch(() => undefined);
  } finally {
    await Promise.all(agents.map((a) => a.stop()));
    await rm(dir, { recursive: true, force: true });
  }
  await report("network", metrics, { runs, cases: results, qemuReference: { live: "104-131 ms", quick: "255 ms" } });
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
