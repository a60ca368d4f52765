/** Shared benchmark output: a readable table on stdout and benchmarks/results/NAME.json. */
import { mkdir, writeFile } from "node:fs/promises";
import { cpus, totalmem } from "node:os";
import { join } from "node:path";
import { packageRoot } from "../src/common/paths.js";

export interface Metric {
  key: string;
  unit: string;
  value: number;
  median: number;
  max: number;
  min: number;
  runs: number;
  target?: string;
  met?: boolean;
  samples?: number[];
}

export function summarize(key: string, unit: string, samples: number[], target?: { text: string; ok: (m: Metric) => boolean }): Metric {
  const sorted = [...samples].sort((a, b) => a - b);
  const median = sorted.length === 0 ? NaN : sorted.length % 2 === 1 ? (sorted[(sorted.length - 1) / 2] ?? NaN) : ((sorted[sorted.length / 2 - 1] ?? 0) + (sorted[sorted.length / 2] ?? 0)) / 2;
  const m: Metric = {
    key,
    unit,
    value: round(median),
    median: round(median),
    max: round(sorted[sorted.length - 1] ?? NaN),
    min: round(sorted[0] ?? NaN),
    runs: samples.length,
    samples: samples.map(round),
  };
  if (target !== undefined) {
    m.target = target.text;
    m.met = target.ok(m);
  }
  return m;
}

function round(v: number): number {
  return Math.round(v * 100) / 100;
}

export function machine(): string {
  const c = cpus();
  return `${c.length} x ${c[0]?.model ?? "cpu"}, ${Math.round(totalmem() / 2 ** 30)} GiB, node ${process.version}`;
}

export async function report(name: string, metrics: Metric[], extra: Record<string, unknown> = {}): Promise<string> {
  const rows = metrics.map((m) => [m.key, m.unit, String(m.median), String(m.max), String(m.runs), m.target ?? "", m.met === undefined ? "" : m.met ? "yes" : "NO"]);
  const head = ["metric", "unit", "median", "max", "runs", "target", "met"];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (r: string[]): string => r.map((c, i) => c.padEnd(widths[i] ?? 0)).join("  ");
  console.log(`\n${name} (${machine()})`);
  console.log(line(head));
  console.log(widths.map((w) => "-".repeat(w)).join("  "));
  for (const r of rows) console.log(line(r));
  const dir = join(packageRoot, "benchmarks", "results");
  await mkdir(dir, { recursive: true });
  const file = join(dir, `${name}.json`);
  await writeFile(file, JSON.stringify({ name, machine: machine(), date: new Date().toISOString(), metrics, ...extra }, null, 2) + "\n");
  console.log(`\nwrote ${file}`);
  return file;
}
