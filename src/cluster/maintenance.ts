/**
 * Maintenance mode (vCenter's "enter maintenance mode"): the host takes no new VMs, every VM
 * that runs on it is live-migrated to another host (planned with admission control, run as child
 * tasks within the per-host and per-cluster migration limits), then the host is marked "in"
 * maintenance. VMs that are off or suspended stay registered on it (as vCenter does by default);
 * starting one places it elsewhere. Exit returns the host to service.
 *
 * Balancing (DRS) lives here too: it uses the same child-migration machinery.
 */
import { HopError } from "../common/errors.js";
import type { DrsRecommendations } from "./api-types.js";
import { DEFAULT_DRS_MAX_MOVES, DEFAULT_DRS_THRESHOLD, recommendMoves } from "./drs.js";
import { HostNotFoundError } from "./errors.js";
import type { Manager } from "./manager.js";
import { planPlacements } from "./placement.js";
import { slot, type TaskContext } from "./tasks.js";
import type { TaskRow } from "./types.js";

const RUNNING_STATES: ReadonlySet<string> = new Set(["running", "paused", "starting"]);

/** Waits for child tasks, reporting progress on the parent; returns the ones that did not succeed. */
async function awaitChildren(m: Manager, ctx: TaskContext, children: TaskRow[], what: string): Promise<TaskRow[]> {
  let done = 0;
  const failed: TaskRow[] = [];
  const onAbort = (): void => {
    for (const c of children) void m.tasks.cancel(c.id).catch(() => undefined);
  };
  ctx.signal.addEventListener("abort", onAbort, { once: true });
  try {
    await Promise.all(
      children.map(async (c) => {
        const end = await m.tasks.wait(c.id);
        done++;
        if (end.state !== "succeeded") failed.push(end);
        ctx.progress(0.1 + (0.85 * done) / Math.max(1, children.length), `${what}: ${done}/${children.length} done${failed.length > 0 ? `, ${failed.length} failed` : ""}`);
      }),
    );
  } finally {
    ctx.signal.removeEventListener("abort", onAbort);
  }
  return failed;
}

export async function enterMaintenance(m: Manager, host: string, wait: boolean): Promise<TaskRow> {
  const h = await m.store.getHost(host);
  if (h === undefined) throw new HostNotFoundError(host);
  if (h.maintenance === "in") throw new HopError("HOST_IN_MAINTENANCE", `host ${host} is already in maintenance mode`, { status: 409 });
  const { task } = await m.runTask("host.maintenance.enter", { host }, (ctx) => evacuate(m, ctx, host), { host, slots: [slot(`host:${host}`)], wait });
  return wait ? m.getTask(task.id) : task;
}

/** The body of host.maintenance.enter (also run again after a manager restart: it is idempotent). */
export async function evacuate(m: Manager, ctx: TaskContext, host: string): Promise<{ moved: string[]; left: string[] }> {
  await m.setHost(host, { maintenance: "entering" });
  void m.emit({ type: "host.maintenance.entering", host, taskId: ctx.id, message: `host ${host} is entering maintenance mode` });
  try {
    const moved: string[] = [];
    // Children from before a manager restart that still run are waited for, not doubled.
    const previous = (await m.store.listTasks({ parentId: ctx.id, state: ["queued", "running"] })).filter((t) => m.tasks.active().some((a) => a.id === t.id));
    for (let pass = 0; pass < 3; pass++) {
      ctx.throwIfCancelled();
      const vms = (await m.store.listVms({ host })).filter((v) => RUNNING_STATES.has(v.state) || (v.desiredPower === "running" && v.state !== "stopped"));
      if (vms.length === 0 && previous.length === 0) break;
      const plan = planPlacements(await m.placementHosts(), vms.map((v) => ({ name: v.name, memoryMiB: v.config.memoryMiB })), { exclude: [host] });
      if (plan.unplaced.length > 0) {
        throw new HopError("EVACUATION_NO_CAPACITY", `cannot evacuate ${host}: ${plan.unplaced.map((u) => `${u.vm}: ${u.message}`).join("; ")}`, { status: 409 });
      }
      ctx.progress(0.1, `evacuating ${vms.length} VM(s) from ${host}`);
      const children = [...previous.splice(0)];
      for (const a of plan.assignments) children.push(await m.submitMigration(a.vm, { to: a.host, mode: "live" }, { parentId: ctx.id }));
      const failed = await awaitChildren(m, ctx, children, `evacuating ${host}`);
      for (const c of children) if (!failed.includes(c) && c.vm !== undefined) moved.push(c.vm);
      if (failed.length > 0) {
        throw new HopError("EVACUATION_FAILED", `could not move ${failed.map((f) => `${f.vm ?? "?"} (${f.error?.message ?? f.state})`).join(", ")} off ${host}`, { status: 409 });
      }
    }
    const left = (await m.store.listVms({ host })).filter((v) => RUNNING_STATES.has(v.state));
    if (left.length > 0) throw new HopError("EVACUATION_FAILED", `VMs still running on ${host}: ${left.map((v) => v.name).join(", ")}`, { status: 409 });
    await m.setHost(host, { maintenance: "in" });
    const stayed = (await m.store.listVms({ host })).map((v) => v.name);
    void m.emit({ type: "host.maintenance.entered", host, taskId: ctx.id, message: `host ${host} is in maintenance mode (${moved.length} VM(s) moved${stayed.length > 0 ? `; ${stayed.length} powered-off VM(s) stay registered` : ""})` });
    return { moved, left: stayed };
  } catch (err) {
    await m.setHost(host, { maintenance: "none" });
    void m.emit({ type: "host.maintenance.failed", severity: "error", host, taskId: ctx.id, message: `host ${host} did not enter maintenance mode: ${(err as Error).message}` });
    throw err;
  }
}

export async function exitMaintenance(m: Manager, host: string): Promise<TaskRow> {
  const h = await m.store.getHost(host);
  if (h === undefined) throw new HostNotFoundError(host);
  if (h.maintenance === "none") throw new HopError("HOST_NOT_IN_MAINTENANCE", `host ${host} is not in maintenance mode`, { status: 409 });
  const { task } = await m.runTask(
    "host.maintenance.exit",
    { host },
    async (ctx) => {
      await m.setHost(host, { maintenance: "none" });
      void m.emit({ type: "host.maintenance.exited", host, taskId: ctx.id, message: `host ${host} is back in service` });
      return { host };
    },
    { host, slots: [slot(`host:${host}`)], wait: true },
  );
  return m.getTask(task.id);
}

// ---- balancing ----

export interface DrsSettings {
  mode: "off" | "manual" | "auto";
  intervalMs: number;
  threshold: number;
}

export async function drsRecommendations(m: Manager, threshold: number): Promise<DrsRecommendations> {
  const hosts = await m.placementHosts();
  const busy = new Set(m.tasks.active().map((t) => t.vm));
  const vms = (await m.store.listVms()).filter((v) => v.state === "running");
  return recommendMoves(
    hosts.map((h) => ({ name: h.name, eligible: h.connection === "connected" && h.maintenance === "none", capacity: h.capacity, reservedMiB: h.reservedMiB, cpuPct: h.cpuPct })),
    vms.map((v) => ({ name: v.name, host: v.host, memoryMiB: v.config.memoryMiB, cpuPct: v.cpuPct ?? 0, movable: !busy.has(v.name) })),
    { threshold, maxMoves: DEFAULT_DRS_MAX_MOVES },
  );
}

/** Runs the recommended moves as a drs.apply task with one live migration per move. */
export async function applyDrs(m: Manager, threshold: number): Promise<TaskRow> {
  const recs = await drsRecommendations(m, threshold);
  const { task } = await m.runTask(
    "drs.apply",
    { threshold, moves: recs.moves },
    async (ctx) => {
      const children: TaskRow[] = [];
      for (const mv of recs.moves) children.push(await m.submitMigration(mv.vm, { to: mv.to, mode: "live" }, { parentId: ctx.id }));
      const failed = await awaitChildren(m, ctx, children, "balancing");
      if (failed.length > 0) throw new HopError("DRS_MOVES_FAILED", `${failed.length} of ${children.length} balancing move(s) failed`, { status: 409 });
      if (recs.moves.length > 0) void m.emit({ type: "drs.applied", taskId: ctx.id, message: `balancing moved ${recs.moves.length} VM(s); imbalance was ${recs.imbalance}`, data: recs });
      return recs;
    },
    { slots: [slot("drs")], wait: false },
  );
  return task;
}

export { DEFAULT_DRS_THRESHOLD };
