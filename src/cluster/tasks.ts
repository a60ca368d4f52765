/**
 * Tasks: every long operation of the manager (start, migrate, evacuate, HA restart...) is a
 * task row in the store with progress, result, error and cancel, run here. A task may name
 * *slots* it needs (a VM's own slot so two operations on one VM never overlap; migration slots
 * per host and per cluster, like vMotion's 4/8 limits): it stays queued until it can take all
 * of them at once, so tasks never deadlock on each other.
 */
import { randomUUID } from "node:crypto";
import { HopError, errorMessage } from "../common/errors.js";
import type { Logger } from "../common/log.js";
import type { InventoryStore } from "./store/index.js";
import type { TaskError, TaskKind, TaskRow } from "./types.js";

export class TaskCancelledError extends HopError {
  constructor(id: string) {
    super("TASK_CANCELLED", `task ${id} was cancelled`, { status: 409 });
  }
}

export class TaskNotFoundError extends HopError {
  constructor(id: string) {
    super("TASK_NOT_FOUND", `no task with id '${id}'`, { status: 404 });
  }
}

/** What a running task's code gets. */
export interface TaskContext {
  readonly id: string;
  /** Aborted when the task is cancelled. */
  readonly signal: AbortSignal;
  /** Records progress (0..1) and the current step. Writes are coalesced. */
  progress(fraction: number, message?: string): void;
  /** Throws TASK_CANCELLED when a cancel was asked. */
  throwIfCancelled(): void;
}

export type TaskBody = (ctx: TaskContext) => Promise<unknown>;

export interface SubmitOptions {
  vm?: string;
  host?: string;
  parentId?: string;
  /** Slots to hold while running, each made by `slot(key, capacity)`. */
  slots?: string[];
}

interface Pending {
  row: TaskRow;
  body: TaskBody;
  slots: { key: string; cap: number }[];
  controller: AbortController;
}

function parseSlot(s: string): { key: string; cap: number } {
  const i = s.lastIndexOf("#");
  if (i === -1) return { key: s, cap: 1 };
  return { key: s.slice(0, i), cap: Math.max(1, Number(s.slice(i + 1)) || 1) };
}

/** Builds a slot string: `slot("migration:host:h1", 4)`. */
export function slot(key: string, capacity = 1): string {
  return `${key}#${capacity}`;
}

function isoNow(): string {
  return new Date().toISOString();
}

export function toTaskError(err: unknown): TaskError {
  if (err instanceof HopError) return { code: err.code, message: err.message, status: err.status };
  return { code: "INTERNAL", message: errorMessage(err) };
}

export class TaskRunner {
  private readonly queue: Pending[] = [];
  private readonly running = new Map<string, Pending>();
  private readonly held = new Map<string, number>();
  private readonly waiters = new Map<string, ((row: TaskRow) => void)[]>();
  private closed = false;

  constructor(
    private readonly store: InventoryStore,
    /** Called on every change of a task (the manager turns it into a `task.updated` event). */
    private readonly onChange: (row: TaskRow) => void,
    private readonly log: Logger,
  ) {}

  /** Records a task (queued) and runs it when its slots are free. Resolves with the row as created. */
  async submit(kind: TaskKind, params: Record<string, unknown>, body: TaskBody, opts: SubmitOptions = {}): Promise<TaskRow> {
    if (this.closed) throw new HopError("MANAGER_SHUTTING_DOWN", "the manager is shutting down", { status: 503 });
    const row: TaskRow = {
      id: randomUUID(),
      kind,
      state: "queued",
      progress: 0,
      params,
      cancelRequested: false,
      createdAt: isoNow(),
      ...(opts.vm !== undefined ? { vm: opts.vm } : {}),
      ...(opts.host !== undefined ? { host: opts.host } : {}),
      ...(opts.parentId !== undefined ? { parentId: opts.parentId } : {}),
    };
    await this.store.createTask(row);
    this.onChange(row);
    this.enqueue(row, body, opts.slots ?? []);
    return row;
  }

  /** Runs an existing task row again (recovery after a manager restart). */
  resume(row: TaskRow, body: TaskBody, slots: string[] = []): void {
    this.enqueue(row, body, slots);
  }

  private enqueue(row: TaskRow, body: TaskBody, slots: string[]): void {
    this.queue.push({ row, body, slots: slots.map(parseSlot), controller: new AbortController() });
    this.pump();
  }

  /** Resolves when the task has ended (succeeded, failed or cancelled). */
  async wait(id: string): Promise<TaskRow> {
    const row = await this.store.getTask(id);
    if (row === undefined) throw new TaskNotFoundError(id);
    if (row.state === "succeeded" || row.state === "failed" || row.state === "cancelled") return row;
    return new Promise((resolve) => {
      const list = this.waiters.get(id) ?? [];
      list.push(resolve);
      this.waiters.set(id, list);
    });
  }

  /** Asks a task to stop. A queued task ends at once; a running one is signalled. */
  async cancel(id: string): Promise<TaskRow> {
    const row = await this.store.getTask(id);
    if (row === undefined) throw new TaskNotFoundError(id);
    if (row.state === "succeeded" || row.state === "failed" || row.state === "cancelled") {
      throw new HopError("TASK_ENDED", `task ${id} has already ended (${row.state})`, { status: 409 });
    }
    const qi = this.queue.findIndex((p) => p.row.id === id);
    if (qi !== -1) {
      const [p] = this.queue.splice(qi, 1);
      if (p !== undefined) return this.finish(p, "cancelled", undefined, { code: "TASK_CANCELLED", message: "cancelled before it started" });
    }
    const updated = await this.store.updateTask(id, { cancelRequested: true });
    this.onChange(updated);
    this.running.get(id)?.controller.abort(new TaskCancelledError(id));
    return updated;
  }

  /** Tasks in this process that are queued or running. */
  active(): TaskRow[] {
    return [...this.queue.map((p) => p.row), ...[...this.running.values()].map((p) => p.row)];
  }

  /**
   * Stops taking tasks. Running ones are not aborted (that would cancel migrations on the
   * hosts): their rows stay "running" and the next manager process settles them (recovery.ts).
   */
  close(): void {
    this.closed = true;
  }

  private canRun(p: Pending): boolean {
    return p.slots.every((s) => (this.held.get(s.key) ?? 0) < s.cap);
  }

  private pump(): void {
    for (let i = 0; i < this.queue.length; ) {
      const p = this.queue[i]!;
      if (!this.canRun(p)) {
        i++;
        continue;
      }
      this.queue.splice(i, 1);
      for (const s of p.slots) this.held.set(s.key, (this.held.get(s.key) ?? 0) + 1);
      this.running.set(p.row.id, p);
      void this.run(p);
    }
  }

  private async run(p: Pending): Promise<void> {
    let lastWrite = 0;
    let pendingWrite: Promise<unknown> = Promise.resolve();
    const ctx: TaskContext = {
      id: p.row.id,
      signal: p.controller.signal,
      progress: (fraction, message) => {
        p.row.progress = Math.max(0, Math.min(1, fraction));
        if (message !== undefined) p.row.message = message;
        const now = Date.now();
        if (now - lastWrite < 250 && fraction < 1) return;
        lastWrite = now;
        const patch = { progress: p.row.progress, ...(p.row.message !== undefined ? { message: p.row.message } : {}) };
        pendingWrite = pendingWrite
          .then(() => this.store.updateTask(p.row.id, patch))
          .then((row) => this.onChange(row))
          .catch((err: unknown) => this.log.warn({ err, task: p.row.id }, "task progress not recorded"));
      },
      throwIfCancelled: () => {
        if (p.controller.signal.aborted) throw new TaskCancelledError(p.row.id);
      },
    };
    try {
      const started = await this.store.updateTask(p.row.id, { state: "running", ...(p.row.startedAt === undefined ? { startedAt: isoNow() } : {}) });
      p.row = started;
      this.onChange(started);
      const result = await p.body(ctx);
      await pendingWrite;
      await this.finish(p, "succeeded", result);
    } catch (err) {
      await pendingWrite;
      // Only a cancel aborts the signal: whatever error the body ends with then (the host's
      // MIGRATION_ABORTED, say), the task was cancelled.
      const cancelled = err instanceof TaskCancelledError || p.controller.signal.aborted;
      if (!cancelled) this.log.warn({ task: p.row.id, kind: p.row.kind, err: errorMessage(err) }, "task failed");
      await this.finish(p, cancelled ? "cancelled" : "failed", undefined, toTaskError(err)).catch((e: unknown) => this.log.error({ err: e }, "task end not recorded"));
    } finally {
      for (const s of p.slots) this.held.set(s.key, (this.held.get(s.key) ?? 1) - 1);
      this.running.delete(p.row.id);
      if (!this.closed) this.pump();
    }
  }

  private async finish(p: Pending, state: "succeeded" | "failed" | "cancelled", result?: unknown, error?: TaskError): Promise<TaskRow> {
    const row = await this.store.updateTask(p.row.id, {
      state,
      endedAt: isoNow(),
      ...(state === "succeeded" ? { progress: 1 } : {}),
      ...(result !== undefined ? { result } : {}),
      ...(error !== undefined ? { error } : {}),
    });
    this.onChange(row);
    const list = this.waiters.get(row.id) ?? [];
    this.waiters.delete(row.id);
    for (const w of list) w(row);
    return row;
  }
}
