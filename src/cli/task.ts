/** `hop task list|show|cancel`: the cluster manager's tasks (every change to a VM or host is one). */
import { InvalidArgumentError, type Command } from "commander";
import type { MigrationReport } from "../migration/index.js";
import { HopError } from "../common/errors.js";
import type { TaskKind, TaskRow, TaskState } from "../cluster/types.js";
import { taskEnded, type TaskListFilter } from "../cluster/client.js";
import { intOption, output, withManager, withManagerOptions, type HostOptions } from "./common.js";
import { formatAgo, formatMs, keyValues, table } from "./format.js";
import { formatReport } from "./migrate.js";

export const TASK_STATES: readonly TaskState[] = ["queued", "running", "succeeded", "failed", "cancelled"];

/** --state: one state or several, comma-separated. */
export function parseStates(value: string): TaskState[] {
  const states = value.split(",").map((s) => s.trim()).filter((s) => s !== "");
  const bad = states.filter((s) => !(TASK_STATES as readonly string[]).includes(s));
  if (states.length === 0 || bad.length > 0) throw new InvalidArgumentError(`must be ${TASK_STATES.join(", ")} (or several, comma-separated)`);
  return states as TaskState[];
}

function target(t: TaskRow): string {
  if (t.vm !== undefined && t.host !== undefined) return `${t.vm} @ ${t.host}`;
  return t.vm ?? t.host ?? "-";
}

function percent(progress: number): string {
  return `${Math.round(Math.min(1, Math.max(0, progress)) * 100)}%`;
}

/** Run time of a task: ended - started, or so far while it runs. */
function duration(t: TaskRow, now: number): string | undefined {
  if (t.startedAt === undefined) return undefined;
  const start = Date.parse(t.startedAt);
  const end = t.endedAt !== undefined ? Date.parse(t.endedAt) : now;
  if (Number.isNaN(start) || Number.isNaN(end)) return undefined;
  return `${formatMs(Math.max(0, end - start))}${t.endedAt === undefined ? " so far" : ""}`;
}

/** "state" plus the error or the step in progress. */
function stateText(t: TaskRow): string {
  if (t.state === "failed" && t.error !== undefined) return `failed: ${t.error.message} (${t.error.code})`;
  if (t.cancelRequested && (t.state === "queued" || t.state === "running")) return `${t.state} (cancel requested)`;
  return t.state;
}

/** Tasks as a table, newest first as the manager lists them. */
export function taskTable(tasks: readonly TaskRow[], now: number = Date.now()): string {
  if (tasks.length === 0) return "no tasks";
  return table(
    ["ID", "KIND", "TARGET", "STATE", "PROGRESS", "CREATED", "MESSAGE"],
    tasks.map((t) => [
      t.id,
      t.kind,
      target(t),
      t.cancelRequested && !["succeeded", "failed", "cancelled"].includes(t.state) ? `${t.state}*` : t.state,
      percent(t.progress),
      formatAgo(t.createdAt, now),
      t.state === "failed" && t.error !== undefined ? `${t.error.code}: ${t.error.message}` : (t.message ?? ""),
    ]),
  );
}

function looksLikeReport(v: unknown): v is MigrationReport {
  const r = v as Partial<MigrationReport> | null;
  return typeof r === "object" && r !== null && typeof r.vm === "string" && Array.isArray(r.rounds) && typeof r.downtime === "object";
}

/** The migration report inside a task result ({report} or the report itself), if any. */
function reportIn(result: unknown): MigrationReport | undefined {
  if (looksLikeReport(result)) return result;
  const inner = (result as { report?: unknown } | null | undefined)?.report;
  return looksLikeReport(inner) ? inner : undefined;
}

function clip(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, max - 1)}… (--json shows all)`;
}

/** Every field of one task; a migration's result is shown as its report. */
export function describeTask(t: TaskRow, now: number = Date.now()): string {
  const params = Object.keys(t.params).length > 0 ? JSON.stringify(t.params) : undefined;
  const report = reportIn(t.result);
  const head = keyValues([
    ["id", t.id],
    ["kind", t.kind],
    ["vm", t.vm],
    ["host", t.host],
    ["state", stateText(t)],
    ["progress", percent(t.progress)],
    ["step", t.message],
    ["parent", t.parentId],
    ["params", params],
    ["created", `${t.createdAt} (${formatAgo(t.createdAt, now)})`],
    ["started", t.startedAt],
    ["ended", t.endedAt],
    ["duration", duration(t, now)],
    ["result", report === undefined && t.result !== undefined ? clip(JSON.stringify(t.result), 300) : undefined],
  ]);
  return report === undefined ? head : `${head}\n\n${formatReport(report)}`;
}

/** One line about a task that was just started or changed. */
export function taskLine(t: TaskRow): string {
  return `task ${t.id} ${t.kind}${t.vm !== undefined || t.host !== undefined ? ` ${target(t)}` : ""}: ${stateText(t)}`;
}

/** "task ... : running\nfollow it with: hop task show ID" (no hint once it has ended). */
export function taskStarted(t: TaskRow): string {
  return taskEnded(t) ? taskLine(t) : `${taskLine(t)}\nfollow it with: hop task show ${t.id}`;
}

/** A failed or cancelled task makes the command exit 1 (after it is printed). */
export function exitCodeFor(t: TaskRow): void {
  if (t.state === "failed" || t.state === "cancelled") process.exitCode = 1;
}

interface ListOptions extends HostOptions {
  state?: TaskState[];
  parent?: string;
  kind?: string;
  vm?: string;
  onHost?: string;
  limit?: number;
}

export function register(program: Command): void {
  const task = program.command("task").description("follow the cluster manager's tasks (create, start, migrate, maintenance, HA restarts...)");

  withManagerOptions(
    task
      .command("list")
      .alias("ls")
      .description("list tasks, newest first")
      .option("--state <states>", `only tasks in these states (comma-separated: ${TASK_STATES.join(",")})`, parseStates)
      .option("--kind <kind>", "only tasks of this kind (vm.create, vm.migrate, host.maintenance.enter, ha.restart, drs.apply...)")
      .option("--vm <name>", "only tasks acting on this VM")
      .option("--on-host <name>", "only tasks acting on this host")
      .option("--parent <id>", "only the tasks this task spawned (an evacuation's migrations)")
      .option("--limit <n>", "at most this many (default: the manager's, 100)", intOption(1, 1000)),
  ).action(async (opts: ListOptions) => {
    if (opts.host !== undefined && !opts.host.includes("://")) {
      throw new HopError("BAD_HOST_URL", `--host is the manager's URL; to list the tasks of host '${opts.host}' use --on-host ${opts.host}`, { status: 400 });
    }
    const filter: TaskListFilter = {
      ...(opts.state !== undefined ? { state: opts.state } : {}),
      ...(opts.kind !== undefined ? { kind: opts.kind as TaskKind } : {}),
      ...(opts.vm !== undefined ? { vm: opts.vm } : {}),
      ...(opts.onHost !== undefined ? { host: opts.onHost } : {}),
      ...(opts.parent !== undefined ? { parentId: opts.parent } : {}),
      ...(opts.limit !== undefined ? { limit: opts.limit } : {}),
    };
    const tasks = await withManager(opts, (c) => c.tasks(filter));
    output(opts, { tasks }, () => taskTable(tasks));
  });

  withManagerOptions(task.command("show").description("show one task").argument("<id>")).action(async (id: string, opts: HostOptions) => {
    const t = await withManager(opts, (c) => c.task(id));
    output(opts, t, () => describeTask(t));
  });

  withManagerOptions(task.command("cancel").description("ask a queued or running task to stop (a migration past its switchover completes)").argument("<id>")).action(
    async (id: string, opts: HostOptions) => {
      const t = await withManager(opts, (c) => c.cancelTask(id));
      output(opts, t, () => taskLine(t));
    },
  );
}
