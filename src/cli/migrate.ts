/** `hop vm migrate` and `hop vm suspend`: move a VM to another host, or save it to the datastore. */
import cliProgress from "cli-progress";
import type { Command } from "commander";
import { Option } from "commander";
import { parseHostEvent, waitOpen } from "../host/client.js";
import type { MigrationProgress, MigrationReport } from "../migration/index.js";
import { connect, intOption, output, withHostOptions, type HostOptions } from "./common.js";
import { formatMs, keyValues, table } from "./format.js";

interface MigrateOptions extends HostOptions {
  to: string;
  mode: "live" | "quick" | "cold";
  downtimeTarget?: number;
  bandwidth?: number;
  lz4?: boolean;
}

const MB = 1e6;

function mb(bytes: number): string {
  return (bytes / MB).toFixed(1);
}

/** "1g", "500m", "100M" (bytes per second, decimal units as network links are quoted) -> bytes/s. */
export function parseBandwidth(value: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmg]?)(?:b(?:ps|\/s)?)?$/i.exec(value.trim());
  if (m === null) throw new Error(`bandwidth '${value}' must look like 500M or 1G (bytes per second)`);
  const mult = { "": 1, k: 1e3, m: 1e6, g: 1e9 }[m[2]!.toLowerCase() as "" | "k" | "m" | "g"];
  return Math.round(Number(m[1]) * mult);
}

/** A human summary of a migration report. */
export function formatReport(r: MigrationReport): string {
  const d = r.downtime;
  const head = keyValues([
    ["migrated", `${r.vm}: ${r.from} -> ${r.to} (${r.mode})`],
    ["total", formatMs(r.totalMs)],
    ["pause", r.mode === "cold" ? "- (VM was off)" : `${r.downtimeMs.toFixed(1)} ms = stop ${d.stopMs} + final copy ${d.finalCopyMs} + state save ${d.stateSaveMs} + transfer ${d.transferMs} + restore ${d.restoreMs} + resume ${d.resumeMs} ms`],
    ["sent", `${mb(r.bytes)} MB, ${r.pages} pages, ${r.rounds.length} rounds${r.stopReason !== undefined ? ` (stopped: ${r.stopReason})` : ""}`],
    ["throttle", r.throttleMax > 0 ? `up to ${r.throttleMax}% (guest stunned ${formatMs(r.stunnedMs)})` : "none"],
  ]);
  if (r.rounds.length === 0) return head;
  const rows = r.rounds.map((x) => [String(x.round), String(x.pages), mb(x.bytes), x.durationMs.toFixed(1), mb(x.bandwidthBytesPerSec), mb(x.dirtyBytesPerSec), String(x.throttle), x.decision]);
  return `${head}\n\n${table(["round", "pages", "MB", "ms", "MB/s", "dirty MB/s", "stun %", "then"], rows)}`;
}

function progressLine(p: MigrationProgress): string {
  const r = p.round;
  if (r === undefined) return p.phase;
  return `round ${r.round}: ${r.pages} pages, ${mb(r.bytes)} MB at ${mb(r.bandwidthBytesPerSec)} MB/s, dirty ${mb(r.dirtyBytesPerSec)} MB/s, expected pause ${r.expectedDowntimeMs.toFixed(1)} ms -> ${r.decision}`;
}

export function register(vm: Command): void {
  withHostOptions(
    vm
      .command("migrate")
      .description("move a VM to another host: live (memory-to-memory, tens of ms pause), quick (state through the shared datastore, a pause of ~0.2-0.5 s) or cold (VM off)")
      .argument("<name>")
      .requiredOption("--to <host>", "target host: a name given to the host agent with --peer, or its URL")
      .addOption(new Option("--mode <mode>", "live | quick | cold").choices(["live", "quick", "cold"]).default("live"))
      .option("--downtime-target <ms>", "live: the pause to aim for (default 50)", intOption(1, 60_000))
      .option("--bandwidth <bytes/s>", "live: limit page traffic, e.g. 125M (1 Gbit/s)", parseBandwidth)
      .option("--lz4", "live: LZ4-compress pages (pays on slow links)"),
  ).action(async (name: string, opts: MigrateOptions) => {
    const client = await connect(opts);
    const json = opts.json === true;
    const tty = !json && process.stderr.isTTY;
    // Progress comes from the source host's event stream.
    const events = client.events();
    let bar: cliProgress.SingleBar | undefined;
    let rounds = 0;
    events.on("message", (data) => {
      const ev = parseHostEvent(data);
      if (ev.type !== "migration.progress" || ev.vm !== name) return;
      const p = ev.progress;
      if (p.round !== undefined) rounds = p.round.round + 1;
      if (tty) {
        if (bar === undefined) {
          bar = new cliProgress.SingleBar({ format: "{phase} [{bar}] rounds {value} | {line}", stream: process.stderr, hideCursor: true, barsize: 20 }, cliProgress.Presets.shades_classic);
          bar.start(30, 0, { phase: p.phase.padEnd(13), line: "" });
        }
        bar.update(rounds, { phase: p.phase.padEnd(13), line: progressLine(p).slice(0, 100) });
      } else if (!json && p.round !== undefined) {
        process.stderr.write(`${progressLine(p)}\n`);
      }
    });
    await waitOpen(events).catch(() => undefined);
    try {
      const report = await client.migrate(name, {
        to: opts.to,
        mode: opts.mode,
        ...(opts.downtimeTarget !== undefined ? { downtimeTargetMs: opts.downtimeTarget } : {}),
        ...(opts.bandwidth !== undefined ? { bandwidth: opts.bandwidth } : {}),
        ...(opts.lz4 === true ? { lz4: true } : {}),
      });
      bar?.update(rounds, { phase: "done".padEnd(13), line: "" });
      bar?.stop();
      output(opts, report, () => formatReport(report));
    } finally {
      bar?.stop();
      events.close();
    }
  });

  withHostOptions(vm.command("suspend").description("save a VM's whole state to the datastore and stop it; `start` resumes it").argument("<name>")).action(
    async (name: string, opts: HostOptions) => {
      const info = await (await connect(opts)).suspend(name);
      output(opts, info, () => `${info.name}: ${info.state}`);
    },
  );

  withHostOptions(vm.command("migrate-cancel").description("cancel a live migration before its switchover").argument("<migration-id>")).action(
    async (id: string, opts: HostOptions) => {
      const r = await (await connect(opts)).cancelMigration(id);
      output(opts, r, () => (r.cancelled ? `cancelled ${id}` : `${id} could not be cancelled (already switching over or done)`));
    },
  );
}
