/**
 * Migration benchmark, 128 MiB guests, two host agents on loopback (real HTTP API, real
 * migration connection): live idle, live with a 32 MiB and a 64 MiB dirty set (the guest's
 * `dirty` rewrites it flat out), quick idle. Per run: total time, the pause measured on the
 * hosts, and the longest silence of the guest's 10 ms heartbeat seen on the host consoles from
 * 0.5 s before to 1 s after the move (the same window the QEMU side uses), and, for reference,
 * the longest silence in the 0.5 s before the move (the heartbeat's own jitter).
 * With --qemu it runs the same cases under QEMU (Debian's qemu-system-x86, TCG, same kernel and
 * initramfs; installed by scripts/install-qemu.sh when missing) and prints both side by side.
 *   node dist/benchmarks/migration.js [--runs N] [--qemu] [--cases live-idle,quick-idle]
 * (It runs itself again with the host agent's V8 flags, src/host/flags.ts, if started without.)
 */
import { spawnSync } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { packageRoot } from "../src/common/paths.js";
import { HttpMigrationPeer } from "../src/host/client.js";
import { missingAgentFlags } from "../src/host/flags.js";
import { serveHost, type HostServerHandle } from "../src/host/server.js";
import { LocalSupervisor } from "../src/host/supervisor.js";
import type { MigrationReport } from "../src/migration/index.js";
import { qemuAvailable, runQemuMigrationCases, type QemuCaseResult } from "./qemu.js";
import { report, summarize, type Metric } from "./report.js";
import { setTimeout as sleep } from "node:timers/promises";

// The two host agents run in this process: with the V8 flags a host agent runs with (see
// src/host/flags.ts), or this benchmark runs itself again with them.
const missingFlags = missingAgentFlags();
if (missingFlags.length > 0) {
  const again = spawnSync(process.execPath, [...missingFlags, ...process.execArgv, ...process.argv.slice(1)], { stdio: "inherit" });
  process.exit(again.status ?? 1);
}

type CaseName = QemuCaseResult["name"];
const CASES: Record<CaseName, { mode: "live" | "quick"; dirtyMiB: number }> = {
  "live-idle": { mode: "live", dirtyMiB: 0 },
  "live-dirty-32": { mode: "live", dirtyMiB: 32 },
  "live-dirty-64": { mode: "live", dirtyMiB: 64 },
  "quick-idle": { mode: "quick", dirtyMiB: 0 },
};

const { values } = parseArgs({
  options: {
    runs: { type: "string", default: "10" },
    qemu: { type: "boolean", default: false },
    cases: { type: "string", default: Object.keys(CASES).join(",") },
  },
});
const runs = Number(values.runs);
const cases = values.cases.split(",").map((c) => c.trim()) as CaseName[];
for (const c of cases) if (!(c in CASES)) throw new Error(`unknown case ${c}; cases: ${Object.keys(CASES).join(", ")}`);

const TOKEN = "benchmark-cluster-token-0123456789abcdef";
const GAP_BEFORE_MS = 500;
const GAP_AFTER_MS = 1000;
/**
 * Between moves. A host that took in a VM forks its next spare VM process 0.5 s later and warms
 * it (src/vm/warmup.ts, ~0.7 s at a low priority): the next move starts after that.
 */
const SETTLE_MS = 3000;
/**
 * After the workload starts, before the first move. Starting it (an exec) makes the guest busy,
 * which turns v86's JIT on for 2 s after (src/engine/internals.ts, installJitGate): with a 2 s
 * wait, the first run's window (from GAP_BEFORE_MS before the move) still held that compiling
 * and saw 30-35 ms silences the move had no part in.
 */
const WORKLOAD_SETTLE_MS = 4000;

interface Run {
  totalMs: number;
  pauseMs: number;
  gapMs: number;
  /** The longest silence in the 0.5 s before the migration started: the heartbeat's own jitter. */
  baselineGapMs: number;
  converged: boolean;
  firstRoundMBps: number;
  rounds: number;
  throttleMax: number;
  stopReason: string;
}

type Host = { sup: LocalSupervisor; server: HostServerHandle };


/** Heartbeat arrival times of one VM on every host's console. */
function watchBeats(hosts: Record<string, Host>, vm: string): { times: number[]; stop: () => void } {
  const times: number[] = [];
  const offs: (() => void)[] = [];
  const watch = (sup: LocalSupervisor): void => {
    let partial = "";
    offs.push(
      sup.console(vm).subscribe((chunk) => {
        const now = performance.now();
        const lines = (partial + chunk.toString("latin1")).split("\n");
        partial = lines.pop() ?? "";
        for (const l of lines) if (/HB \d+/.test(l)) times.push(now);
      }),
    );
  };
  for (const h of Object.values(hosts)) {
    offs.push(h.sup.onEvent((ev) => ev.type === "vm.state" && ev.state === "incoming" && ev.vm === vm && watch(h.sup)));
    if (h.sup.list().some((v) => v.name === vm)) watch(h.sup);
  }
  return { times, stop: () => offs.forEach((f) => f()) };
}

/** The longest silence between heartbeats in [from, to], and when it started. */
function longestGap(times: number[], from: number, to: number): { gap: number; at: number } {
  const w = times.filter((t) => t >= from && t <= to);
  let gap = 0;
  let at = NaN;
  for (let i = 1; i < w.length; i++) {
    if (w[i]! - w[i - 1]! > gap) {
      gap = w[i]! - w[i - 1]!;
      at = w[i - 1]!;
    }
  }
  return { gap, at };
}

async function runCase(name: CaseName, hosts: { a: Host; b: Host }): Promise<Run[]> {
  const spec = CASES[name];
  const vm = `bench-${name}`;
  await hosts.a.sup.create({ name: vm, memoryMiB: 128 });
  await hosts.a.sup.start(vm);
  const beats = watchBeats(hosts, vm);
  const out: Run[] = [];
  let here: "a" | "b" = "a";
  try {
    await hosts.a.sup.exec(vm, "hb -i 10 > /dev/ttyS0 2>&1 &");
    if (spec.dirtyMiB > 0) await hosts.a.sup.exec(vm, `dirty -w ${spec.dirtyMiB} > /dev/null 2>&1 &`);
    await sleep(WORKLOAD_SETTLE_MS);
    for (let i = 0; i < runs; i++) {
      const to: "a" | "b" = here === "a" ? "b" : "a";
      const t0 = performance.now();
      const rep: MigrationReport = await hosts[here].sup.migrate(vm, { to, mode: spec.mode });
      const t1 = performance.now();
      here = to;
      // The window closes GAP_AFTER_MS after the move: the run is summed up and printed then, not
      // just before the next move, whose window would hold the time that took (a synchronous
      // console.log held this process, which relays the heartbeats, for up to ~4 ms).
      await sleep(GAP_AFTER_MS + 50);
      const r0 = rep.rounds[0];
      const g = longestGap(beats.times, t0 - GAP_BEFORE_MS, t1 + GAP_AFTER_MS);
      const run: Run = {
        totalMs: rep.totalMs,
        pauseMs: rep.downtimeMs,
        gapMs: g.gap,
        baselineGapMs: longestGap(beats.times, t0 - GAP_BEFORE_MS, t0).gap,
        converged: rep.stopReason === undefined || rep.stopReason === "converged",
        firstRoundMBps: r0 !== undefined ? r0.bandwidthBytesPerSec / 1e6 : NaN,
        rounds: rep.rounds.length,
        throttleMax: rep.throttleMax,
        stopReason: rep.stopReason ?? "-",
      };
      out.push(run);
      const d = rep.downtime;
      const parts = spec.mode === "live" ? `stop ${d.stopMs} + state ${d.stateSaveMs} + final copy ${d.finalCopyMs} + transfer ${d.transferMs} + resume ${d.resumeMs}, restore ${d.restoreMs}` : `stop ${d.stopMs} + save ${d.stateSaveMs} + transfer ${d.transferMs} + restore ${d.restoreMs}`;
      console.log(`${name} #${i + 1}: total ${run.totalMs.toFixed(0)} ms, pause ${run.pauseMs.toFixed(1)} ms (${parts}), gap ${run.gapMs.toFixed(1)} ms (from ${(g.at - t0).toFixed(0)} ms after the start; ${run.baselineGapMs.toFixed(1)} ms before it), rounds ${run.rounds}, stop ${run.stopReason}, throttle ${run.throttleMax}%${Number.isFinite(run.firstRoundMBps) ? `, first round ${run.firstRoundMBps.toFixed(0)} MB/s` : ""}`);
      await sleep(SETTLE_MS - GAP_AFTER_MS - 50);
    }
  } finally {
    beats.stop();
    await hosts[here].sup.poweroff(vm).catch(() => undefined);
    await hosts[here].sup.destroy(vm, { force: true }).catch(() => undefined);
  }
  return out;
}

function med(xs: number[]): number {
  const s = xs.filter(Number.isFinite).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}
function max(xs: number[]): number {
  const s = xs.filter(Number.isFinite);
  return s.length === 0 ? NaN : Math.max(...s);
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), "hop-bench-mig-"));
  const ds = join(dir, "shared-ds");
  const hosts = {} as { a: Host; b: Host };
  const urls = new Map<string, string>();
  const metrics: Metric[] = [];
  const results: Partial<Record<CaseName, Run[]>> = {};
  try {
    for (const name of ["a", "b"] as const) {
      const sup = new LocalSupervisor({
        hostName: name,
        datastore: ds,
        token: TOKEN,
        migrationListen: { host: "127.0.0.1", port: 0 },
        peers: (to) => new HttpMigrationPeer(urls.get(to) ?? to, TOKEN),
      });
      await sup.init();
      const server = await serveHost({ supervisor: sup, migrations: sup, token: TOKEN, listen: "127.0.0.1:0" });
      urls.set(name, server.url);
      hosts[name] = { sup, server };
    }
    await hosts.a.sup.prepareTemplate(128);
    for (const c of cases) {
      const rs = await runCase(c, hosts);
      results[c] = rs;
      const key = c.replace(/-/g, "_");
      const t = (text: string, ok: (m: Metric) => boolean): { text: string; ok: (m: Metric) => boolean } => ({ text, ok });
      metrics.push(summarize(`${key}_total_ms`, "ms", rs.map((r) => r.totalMs)));
      metrics.push(
        summarize(`${key}_pause_on_hosts_ms`, "ms", rs.map((r) => r.pauseMs), c === "quick-idle" ? t("<= 500", (m) => m.max <= 500) : undefined),
      );
      const gapTarget =
        c === "live-idle" ? t("median <= 20, max <= 40", (m) => m.median <= 20 && m.max <= 40) : c === "live-dirty-64" ? t("<= 50", (m) => m.max <= 50) : undefined;
      metrics.push(summarize(`${key}_heartbeat_gap_ms`, "ms", rs.map((r) => r.gapMs), gapTarget));
      metrics.push(summarize(`${key}_heartbeat_gap_without_migration_ms`, "ms", rs.map((r) => r.baselineGapMs)));
      if (CASES[c].mode === "live") {
        metrics.push(summarize(`${key}_first_round_MBps`, "MB/s", rs.map((r) => r.firstRoundMBps), c === "live-idle" ? t(">= 500", (m) => m.median >= 500) : undefined));
        metrics.push(summarize(`${key}_converged_runs`, "runs", [rs.filter((r) => r.converged).length], c === "live-dirty-64" ? t(`all ${runs}`, (m) => m.median === runs) : undefined));
        metrics.push(summarize(`${key}_rounds`, "rounds", rs.map((r) => r.rounds)));
      }
    }
  } finally {
    for (const h of Object.values(hosts)) {
      await h.server.close();
      await h.sup.close();
    }
    await rm(dir, { recursive: true, force: true });
  }

  let qemu: QemuCaseResult[] | undefined;
  if (values.qemu === true) {
    if (!qemuAvailable()) {
      const r = spawnSync("bash", [join(packageRoot, "scripts", "install-qemu.sh")], { stdio: "inherit" });
      if (r.status !== 0) throw new Error("installing QEMU failed (scripts/install-qemu.sh)");
    }
    qemu = await runQemuMigrationCases({ runs, memoryMiB: 128, cases, log: (s) => console.log(`qemu: ${s}`) });
  }

  const file = await report("migration", metrics, { runs, cases: results, ...(qemu !== undefined ? { qemu } : {}) });
  void file;
  if (qemu !== undefined) {
    console.log("\nside by side (median / max, ms; ratio = QEMU / Hopvisor, above 1 means Hopvisor is better)");
    const rows: string[][] = [["case", "metric", "Hopvisor", "QEMU", "ratio (median)"]];
    for (const c of cases) {
      const ours = results[c] ?? [];
      const theirs = (qemu.find((q) => q.name === c)?.runs ?? []).filter((r) => r.converged);
      for (const [label, get] of [
        ["total", (r: { totalMs: number }) => r.totalMs],
        ["pause on hosts", (r: { pauseMs: number }) => r.pauseMs],
        ["heartbeat gap", (r: { gapMs: number }) => r.gapMs],
      ] as const) {
        const a = ours.map(get);
        const b = theirs.map(get);
        rows.push([c, label, `${med(a).toFixed(1)} / ${max(a).toFixed(1)}`, b.length > 0 ? `${med(b).toFixed(1)} / ${max(b).toFixed(1)}` : "did not converge", b.length > 0 ? (med(b) / med(a)).toFixed(2) : "-"]);
      }
    }
    const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
    for (const [n, r] of rows.entries()) {
      console.log(r.map((x, i) => x.padEnd(widths[i]!)).join("  "));
      if (n === 0) console.log(widths.map((w) => "-".repeat(w)).join("  "));
    }
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
