/**
 * What a restarted manager does with the tasks its database says were queued or running: each
 * kind either carries on (idempotent bodies: evacuation, HA restart), is settled by asking the
 * hosts what happened (a migration runs on the host agents and does not need the manager), or
 * is marked failed with TASK_INTERRUPTED.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { HopError } from "../common/errors.js";
import type { HaMonitor } from "./ha.js";
import type { Manager } from "./manager.js";
import { evacuate } from "./maintenance.js";
import { slot, type TaskContext } from "./tasks.js";
import type { TaskRow } from "./types.js";

/** How long a recovered migration task waits for the source host to finish it. */
const MIGRATION_SETTLE_MS = 10 * 60_000;

/** A string parameter of a task row ("" when absent or not a string). */
function param(row: TaskRow, key: string): string {
  const v = row.params[key];
  return typeof v === "string" ? v : "";
}

function interrupted(row: TaskRow): HopError {
  return new HopError("TASK_INTERRUPTED", `the manager restarted while this ${row.kind} task was ${row.state}; it was not resumed`, { status: 500 });
}

/** Settles a migration that was under way when the manager stopped: the hosts know how it ended. */
async function settleMigration(m: Manager, ctx: TaskContext, row: TaskRow): Promise<unknown> {
  const name = row.vm ?? "";
  const to = param(row, "to");
  const from = param(row, "from") || (row.host ?? "");
  const deadline = Date.now() + MIGRATION_SETTLE_MS;
  ctx.progress(row.progress, `the manager restarted: asking ${from} how the migration of ${name} went`);
  for (;;) {
    const source = m.registry.client(from);
    const inProgress = source === undefined ? false : await source.migrations().then((r) => r.migrations.some((x) => x.vm === name), () => false);
    if (!inProgress) break;
    if (Date.now() > deadline) throw new HopError("MIGRATION_SETTLE_TIMEOUT", `the migration of ${name} was still running on ${from} after ${MIGRATION_SETTLE_MS} ms`, { status: 504 });
    await sleep(500, undefined, { signal: ctx.signal });
  }
  const target = m.registry.client(to);
  const info = target === undefined ? undefined : await target.get(name).catch(() => undefined);
  const vm = await m.getVm(name);
  if (info !== undefined && info.state !== "incoming") {
    if (vm.host !== to) await m.swapOwner(vm, to, info);
    void m.emit({ type: "vm.migrated", host: to, vm: name, taskId: ctx.id, message: `VM ${name} is on ${to}: the migration completed while the manager was away` });
    return { recovered: true, host: to };
  }
  throw new HopError("MIGRATION_INTERRUPTED", `the manager restarted during the migration of ${name}; it stayed on ${vm.host}`, { status: 500 });
}

/** Picks up every task left queued or running by the previous manager process. */
export async function recoverTasks(m: Manager, ha: HaMonitor): Promise<number> {
  const open = await m.store.listTasks({ state: ["queued", "running"], limit: 1000 });
  // Children first, so a resumed evacuation finds its migrations already running.
  open.sort((a, b) => (a.parentId === undefined ? 1 : 0) - (b.parentId === undefined ? 1 : 0));
  for (const row of open) {
    const vmSlot = row.vm !== undefined ? [slot(`vm:${row.vm}`)] : [];
    switch (row.kind) {
      case "vm.migrate":
        m.tasks.resume(row, (ctx) => settleMigration(m, ctx, row), vmSlot);
        break;
      case "host.maintenance.enter":
        m.tasks.resume(row, (ctx) => evacuate(m, ctx, param(row, "host") || (row.host ?? "")), [slot(`host:${String(row.host)}`)]);
        break;
      case "ha.restart": {
        const to = param(row, "to");
        const from = param(row, "from");
        m.tasks.resume(row, (ctx) => ha.restart(ctx, String(row.vm), from, Number(row.params["generation"]), to === from ? undefined : to), vmSlot);
        break;
      }
      case "vm.start":
        m.tasks.resume(
          row,
          async () => {
            const vm = await m.getVm(String(row.vm));
            if (vm.state === "running") return vm;
            throw interrupted(row);
          },
          vmSlot,
        );
        break;
      default:
        m.tasks.resume(
          row,
          async () => {
            throw interrupted(row);
          },
          vmSlot,
        );
    }
    m.log.info({ task: row.id, kind: row.kind, vm: row.vm, host: row.host }, "task recovered after a manager restart");
  }
  if (open.length > 0) void m.emit({ type: "manager.recovered", message: `manager restarted: ${open.length} unfinished task(s) picked up` });
  return open.length;
}

