/**
 * `hop vm migrate` and `hop vm suspend`: move a VM to another host, or save it to the datastore.
 * Against a host agent, `--to` names the target (a --peer name or URL) and progress comes from
 * the source host's events; against the cluster manager, `--to` is a host name and optional (the
 * manager picks), the migration is a task and progress comes from the manager's events.
 */
import cliProgress from "cli-progress";
import type { Command } from "commander";
import { Option } from "commander";
import { HopError } from "../common/errors.js";
import type { ClusterMigrateRequest } from "../cluster/api-types.js";
import { parseClusterEvent, type ManagerClient } from "../cluster/client.js";
import { parseHostEvent, waitOpen, type HostClient } from "../host/client.js";
import { LIVE_DEFAULTS, type MigrationProgress, type MigrationReport } from "../migration/index.js";
import { connect, connectAny, intOption, output, withHostOptions, type HostOptions } from "./common.js";
import { formatMs, keyValues, table } from "./format.js";
import { taskStarted } from "./task.js";

interface MigrateOptions extends HostOptions {
  to?: string;
  mode: "live" | "quick" | "cold";
  downtimeTarget?: number;
  bandwidth?: number;
  lz4?: boolean;
  /** false with --no-wait (manager only). */
  wait: boolean;
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
    ["pause", r.mode === "cold" ? "- (VM was off)" : r.mode === "live"
          ? `${r.downtimeMs.toFixed(1)} ms = stop ${d.stopMs} + state save ${d.stateSaveMs} + final copy ${d.finalCopyMs} + transfer ${d.transferMs} + resume ${d.resumeMs} ms (restore ${d.restoreMs} ms, during the final copy)`
          : `${r.downtimeMs.toFixed(1)} ms = stop ${d.stopMs} + final copy ${d.finalCopyMs} + state save ${d.stateSaveMs} + transfer ${d.transferMs} + restore ${d.restoreMs} + resume ${d.resumeMs} ms`],
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

/** Shows migration progress: a bar on a terminal, one line per round otherwise, nothing with --json. */
class ProgressView {
  private bar: cliProgress.SingleBar | undefined;
  private rounds = 0;
  private readonly tty: boolean;

  constructor(private readonly json: boolean) {
    this.tty = !json && process.stderr.isTTY;
  }

  update(p: MigrationProgress): void {
    if (p.round !== undefined) this.rounds = p.round.round + 1;
    if (this.tty) {
      if (this.bar === undefined) {
        this.bar = new cliProgress.SingleBar({ format: "{phase} [{bar}] rounds {value} | {line}", stream: process.stderr, hideCursor: true, barsize: 20 }, cliProgress.Presets.shades_classic);
        this.bar.start(30, 0, { phase: p.phase.padEnd(13), line: "" });
      }
      this.bar.update(this.rounds, { phase: p.phase.padEnd(13), line: progressLine(p).slice(0, 100) });
    } else if (!this.json && p.round !== undefined) {
      process.stderr.write(`${progressLine(p)}\n`);
    }
  }

  done(): void {
    this.bar?.update(this.rounds, { phase: "done".padEnd(13), line: "" });
    this.stop();
  }

  stop(): void {
    this.bar?.stop();
    this.bar = undefined;
  }
}

/** Migration through a host agent: --to is required; progress from the source host's events. */
async function migrateOnHost(client: HostClient, name: string, to: string, opts: MigrateOptions): Promise<void> {
  const view = new ProgressView(opts.json === true);
  const events = client.events();
  events.on("message", (data) => {
    const ev = parseHostEvent(data);
    if (ev.type !== "migration.progress" || ev.vm !== name) return;
    view.update(ev.progress);
  });
  await waitOpen(events).catch(() => undefined);
  try {
    const report = await client.migrate(name, {
      to,
      mode: opts.mode,
      ...(opts.downtimeTarget !== undefined ? { downtimeTargetMs: opts.downtimeTarget } : {}),
      ...(opts.bandwidth !== undefined ? { bandwidth: opts.bandwidth } : {}),
      ...(opts.lz4 === true ? { lz4: true } : {}),
    });
    view.done();
    output(opts, report, () => formatReport(report));
  } finally {
    view.stop();
    events.close();
  }
}

/**
 * Migration through the cluster manager (a vm.migrate task): progress from the manager's
 * migration.progress events for this VM (of our task, once its id is seen). Prints the same
 * report as on a host agent, plus the task id (JSON: the report with `taskId`).
 */
async function migrateOnManager(client: ManagerClient, name: string, opts: MigrateOptions): Promise<void> {
  const req: ClusterMigrateRequest = {
    ...(opts.to !== undefined ? { to: opts.to } : {}),
    mode: opts.mode,
    ...(opts.downtimeTarget !== undefined ? { downtimeTargetMs: opts.downtimeTarget } : {}),
    ...(opts.bandwidth !== undefined ? { bandwidth: opts.bandwidth } : {}),
    ...(opts.lz4 === true ? { lz4: true } : {}),
  };
  if (!opts.wait) {
    const task = await client.migrate(name, { ...req, wait: false });
    output(opts, task, () => taskStarted(task));
    return;
  }
  const view = new ProgressView(opts.json === true);
  let taskId: string | undefined;
  const events = client.events();
  events.on("message", (data) => {
    let ev;
    try {
      ev = parseClusterEvent(data);
    } catch {
      return;
    }
    if (ev.type !== "migration.progress" || ev.vm !== name || ev.data === undefined) return;
    if (ev.taskId !== undefined) {
      if (taskId !== undefined && ev.taskId !== taskId) return;
      taskId = ev.taskId;
    }
    view.update(ev.data as MigrationProgress);
  });
  await waitOpen(events).catch(() => undefined);
  try {
    const r = await client.migrate(name, { ...req, wait: true });
    view.done();
    output(opts, { ...r.report, taskId: r.taskId }, () => `${formatReport(r.report)}\n\ntask: ${r.taskId}`);
  } finally {
    view.stop();
    events.close();
  }
}

export function register(vm: Command): void {
  withHostOptions(
    vm
      .command("migrate")
      .description("move a VM to another host: live (memory-to-memory, tens of ms pause), quick (state through the shared datastore, a pause of ~0.2-0.5 s) or cold (VM off)")
      .argument("<name>")
      .option("--to <host>", "target host: on a cluster manager a host name (default: the manager picks one); on a host agent (required) a name given with --peer, or its URL")
      .addOption(new Option("--mode <mode>", "live | quick | cold").choices(["live", "quick", "cold"]).default("live"))
      .option("--downtime-target <ms>", `live: the pause to aim for (default ${LIVE_DEFAULTS.downtimeTargetMs})`, intOption(1, 60_000))
      .option("--bandwidth <bytes/s>", "live: limit page traffic, e.g. 125M (1 Gbit/s)", parseBandwidth)
      .option("--lz4", "live: LZ4-compress pages (pays on slow links)")
      .option("--no-wait", "cluster manager: answer with the task at once instead of the report"),
  ).action(async (name: string, opts: MigrateOptions) => {
    const target = await connectAny(opts);
    if (target.kind === "manager") {
      await migrateOnManager(target.client, name, opts);
      return;
    }
    if (opts.to === undefined) {
      throw new HopError("USAGE", `--to is required when talking to a host agent (${target.client.baseUrl}); only a cluster manager picks the target itself`, { status: 400 });
    }
    if (!opts.wait) throw new HopError("NOT_A_MANAGER", `--no-wait needs a cluster manager; ${target.client.baseUrl} is a host agent`, { status: 400 });
    await migrateOnHost(target.client, name, opts.to, opts);
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
