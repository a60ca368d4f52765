/**
 * High availability: the monitor that notices hosts going silent, declares them down after the
 * grace period (when their leases have certainly expired and they have powered their VMs off
 * themselves), and restarts their VMs on surviving hosts from the shared datastore, with
 * admission control. Also restarts in place a VM that should run but is found stopped on a
 * healthy host (fenced during a short loss of the manager, or crashed).
 */
import { HopError, errorMessage } from "../common/errors.js";
import type { Manager } from "./manager.js";
import { planPlacements } from "./placement.js";
import { slot, type TaskContext } from "./tasks.js";
import type { VmRow } from "./types.js";

/** How often the monitor looks. */
const TICK_MS = 250;
/** How long a VM that should run must be seen stopped on a healthy host before it is restarted there. */
const IN_PLACE_AFTER_MS = 3_000;
/** Retry HA restarts that found no room, or failed, after this long. */
const RETRY_MS = 5_000;

export class HaMonitor {
  private timer: NodeJS.Timeout | undefined;
  /** VMs with an HA task queued or running. */
  private readonly active = new Set<string>();
  private readonly stoppedSince = new Map<string, number>();
  private readonly retryAfter = new Map<string, number>();
  /** When each host was declared down (for the restart-time figure). */
  private readonly downAt = new Map<string, number>();
  private busy = false;

  constructor(private readonly m: Manager) {}

  start(): void {
    this.timer = setInterval(() => {
      if (this.busy) return;
      this.busy = true;
      this.tick()
        .catch((err: unknown) => this.m.log.error({ err: errorMessage(err) }, "HA monitor pass failed"))
        .finally(() => (this.busy = false));
    }, TICK_MS);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
  }

  private async tick(): Promise<void> {
    const { heartbeatMs, graceMs } = this.m.opts;
    for (const h of await this.m.store.listHosts()) {
      if (h.connection === "down") continue;
      const silence = this.m.registry.silenceMs(h.name);
      if (silence > graceMs) {
        await this.m.setHost(h.name, { connection: "down" });
        this.m.registry.follow(h.name, false);
        this.downAt.set(h.name, Date.now());
        for (const v of await this.m.store.listVms({ host: h.name })) await this.m.store.updateVm(v.name, { state: "unknown" });
        void this.m.emit({ type: "host.down", severity: "error", host: h.name, message: `host ${h.name} is down: no heartbeat for ${Math.round(silence)} ms (grace ${graceMs} ms); its lease has expired, HA restarts its VMs` });
      } else if (h.connection === "connected" && silence > heartbeatMs * 2.5) {
        await this.m.setHost(h.name, { connection: "disconnected" });
        void this.m.emit({ type: "host.disconnected", severity: "warning", host: h.name, message: `host ${h.name} missed its heartbeats (${Math.round(silence)} ms)` });
      }
    }
    await this.restartFromDownHosts();
    await this.restartInPlace();
  }

  /** VMs that should run on hosts that are down: plan room for all of them at once, then restart. */
  private async restartFromDownHosts(): Promise<void> {
    const hosts = await this.m.store.listHosts();
    const down = new Set(hosts.filter((h) => h.connection === "down").map((h) => h.name));
    if (down.size === 0) return;
    const now = Date.now();
    const waiting = (await this.m.store.listVms()).filter(
      (v) => down.has(v.host) && v.desiredPower === "running" && !this.active.has(v.name) && (this.retryAfter.get(v.name) ?? 0) <= now,
    );
    if (waiting.length === 0) return;
    const plan = planPlacements(await this.m.placementHosts(), waiting.map((v) => ({ name: v.name, memoryMiB: v.config.memoryMiB })));
    for (const u of plan.unplaced) {
      this.retryAfter.set(u.vm, now + RETRY_MS);
      void this.m.emit({ type: "ha.no-capacity", severity: "error", vm: u.vm, message: `HA cannot restart ${u.vm} yet: ${u.message} (admission control; retrying)` });
    }
    for (const a of plan.assignments) {
      const row = waiting.find((v) => v.name === a.vm);
      if (row !== undefined) await this.submit(row, a.host, "failover");
    }
  }

  /** VMs that should run, found stopped or crashed on a healthy host for a while: start them there. */
  private async restartInPlace(): Promise<void> {
    const now = Date.now();
    const hosts = new Map((await this.m.store.listHosts()).map((h) => [h.name, h]));
    const busy = new Set(this.m.tasks.active().map((t) => t.vm));
    for (const v of await this.m.store.listVms()) {
      const h = hosts.get(v.host);
      const off = v.desiredPower === "running" && (v.state === "stopped" || v.state === "crashed") && h?.connection === "connected" && !busy.has(v.name) && !this.active.has(v.name);
      if (!off) {
        this.stoppedSince.delete(v.name);
        continue;
      }
      const since = this.stoppedSince.get(v.name) ?? now;
      this.stoppedSince.set(v.name, since);
      if (now - since < IN_PLACE_AFTER_MS || (this.retryAfter.get(v.name) ?? 0) > now) continue;
      this.stoppedSince.delete(v.name);
      await this.submit(v, undefined, "in-place");
    }
  }

  private async submit(row: VmRow, target: string | undefined, why: "failover" | "in-place"): Promise<void> {
    this.active.add(row.name);
    const release = target !== undefined ? this.m.reserve(target, row.config.memoryMiB) : () => undefined;
    try {
      const task = await this.m.tasks.submit("ha.restart", { from: row.host, to: target ?? row.host, generation: row.generation, why }, (ctx) => this.restart(ctx, row.name, row.host, row.generation, target), {
        vm: row.name,
        host: target ?? row.host,
        slots: [slot(`vm:${row.name}`)],
      });
      void this.m.tasks
        .wait(task.id)
        .then((end) => {
          // A failed restart (the chosen host refused or vanished) is tried again later, not at once.
          if (end.state !== "succeeded") this.retryAfter.set(row.name, Date.now() + RETRY_MS);
        })
        .catch(() => this.retryAfter.set(row.name, Date.now() + RETRY_MS))
        .finally(() => {
          release();
          this.active.delete(row.name);
        });
    } catch (err) {
      release();
      this.active.delete(row.name);
      throw err;
    }
  }

  /** The body of an ha.restart task. Idempotent: a VM already moved on is left alone. */
  async restart(ctx: TaskContext, name: string, from: string, generation: number, target: string | undefined): Promise<{ host: string; generation: number; sinceDownMs?: number }> {
    const row = await this.m.getVm(name);
    if (row.host !== from || row.generation !== generation) {
      return { host: row.host, generation: row.generation };
    }
    if (row.desiredPower !== "running") throw new HopError("HA_NOT_WANTED", `VM ${name} is no longer meant to run (${row.desiredPower})`, { status: 409 });
    if (target === undefined) {
      ctx.progress(0.3, `restarting ${name} on ${from}`);
      const info = await this.m.client(from).start(name);
      await this.m.recordVm(info, from);
      void this.m.emit({ type: "ha.restarted", severity: "warning", host: from, vm: name, taskId: ctx.id, message: `HA restarted ${name} on ${from} (it was found ${row.state})` });
      return { host: from, generation };
    }
    await this.m.requireConnected(target);
    ctx.progress(0.3, `restarting ${name} on ${target} (from ${from}, down)`);
    const info = await this.m.client(target).adopt(name, { fromHost: from, generation, start: true });
    await this.m.swapOwner(row, target, info);
    const downAt = this.downAt.get(from);
    const sinceDownMs = downAt !== undefined ? Date.now() - downAt : undefined;
    void this.m.emit({
      type: "ha.restarted",
      severity: "warning",
      host: target,
      vm: name,
      taskId: ctx.id,
      message: `HA restarted ${name} on ${target} (host ${from} is down)${sinceDownMs !== undefined ? `, ${sinceDownMs} ms after it was declared down` : ""}`,
      data: { from, to: target, generation: info.config.generation, sinceDownMs },
    });
    return { host: target, generation: info.config.generation ?? generation + 1, ...(sinceDownMs !== undefined ? { sinceDownMs } : {}) };
  }
}
