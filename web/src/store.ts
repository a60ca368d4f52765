/**
 * The cluster as the page knows it: fetched once, then kept current by the manager's event
 * WebSocket (no polling). An event that says a resource changed re-fetches that resource only
 * (debounced); task rows arrive whole in `task.updated` events. After a lost connection the
 * stream reconnects and everything is fetched again (events may have been missed meanwhile).
 */
import { createContext, useContext, useEffect, useRef, useSyncExternalStore } from "react";
import type { ClusterEvent, ClusterVm, DatastoreRow, HostInfo, NetworkRow, TaskRow } from "../../src/cluster/api-types.js";
import { ApiError, errorText, type HopApi } from "./api.js";

export type LiveState = "connecting" | "live" | "reconnecting";

export interface ClusterSnapshot {
  hosts: HostInfo[];
  vms: ClusterVm[];
  networks: NetworkRow[];
  datastores: DatastoreRow[];
  /** Recent tasks, newest first. */
  tasks: TaskRow[];
  /** Recent events, newest first. */
  events: ClusterEvent[];
  loaded: boolean;
  live: LiveState;
  /** The last failed fetch, if any. */
  error?: string | undefined;
}

const TASKS_KEPT = 400;
const EVENTS_KEPT = 600;

export function isTaskRow(v: unknown): v is TaskRow {
  return typeof v === "object" && v !== null && typeof (v as TaskRow).id === "string" && typeof (v as TaskRow).kind === "string" && typeof (v as TaskRow).state === "string";
}

function byName<T extends { name: string }>(a: T, b: T): number {
  return a.name.localeCompare(b.name);
}

function newestFirst(a: TaskRow, b: TaskRow): number {
  return b.createdAt.localeCompare(a.createdAt);
}

type Resource = "hosts" | "vms" | "networks" | "datastores";

export class ClusterStore {
  private snap: ClusterSnapshot = { hosts: [], vms: [], networks: [], datastores: [], tasks: [], events: [], loaded: false, live: "connecting" };
  private readonly listeners = new Set<() => void>();
  private readonly eventListeners = new Set<(ev: ClusterEvent) => void>();
  private ws: WebSocket | undefined;
  private retryTimer: number | undefined;
  private retryMs = 1_000;
  private stopped = false;
  /** Later-started fetches win over earlier ones that answer late. */
  private readonly started: Record<Resource, number> = { hosts: 0, vms: 0, networks: 0, datastores: 0 };
  private readonly applied: Record<Resource, number> = { hosts: 0, vms: 0, networks: 0, datastores: 0 };
  private readonly dirty = new Set<Resource>();
  private readonly dirtyVms = new Set<string>();
  private readonly vmStamps = new Map<string, number>();
  private flushTimer: number | undefined;

  constructor(readonly api: HopApi) {}

  readonly subscribe = (fn: () => void): (() => void) => {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  };

  readonly getSnapshot = (): ClusterSnapshot => this.snap;

  /** Every live event, as it arrives (dialogs follow their migration through these). */
  onEvent(fn: (ev: ClusterEvent) => void): () => void {
    this.eventListeners.add(fn);
    return () => this.eventListeners.delete(fn);
  }

  start(): void {
    this.stopped = false;
    this.connect();
  }

  stop(): void {
    this.stopped = true;
    if (this.retryTimer !== undefined) window.clearTimeout(this.retryTimer);
    if (this.flushTimer !== undefined) window.clearTimeout(this.flushTimer);
    const ws = this.ws;
    this.ws = undefined;
    ws?.close(1000, "page closed");
  }

  private set(patch: Partial<ClusterSnapshot>): void {
    this.snap = { ...this.snap, ...patch };
    for (const fn of this.listeners) fn();
  }

  private fail(err: unknown): void {
    if (err instanceof ApiError && err.status === 401) return; // the app logs out
    this.set({ error: errorText(err) });
  }

  /** Fetches everything (at start and after a reconnect). */
  async reload(): Promise<void> {
    const tasks = this.api.tasks({ limit: 200 });
    const events = this.api.listEvents({ limit: 200 });
    await Promise.all([this.fetch("hosts"), this.fetch("vms"), this.fetch("networks"), this.fetch("datastores")]);
    try {
      const [t, e] = await Promise.all([tasks, events]);
      // Keep what arrived live meanwhile (it is newer).
      const liveTasks = new Map(this.snap.tasks.map((x) => [x.id, x]));
      const merged = new Map(t.map((x) => [x.id, x]));
      for (const [id, x] of liveTasks) merged.set(id, x);
      const seen = new Set(this.snap.events.map((x) => x.id));
      const mergedEvents = [...this.snap.events, ...e.filter((x) => !seen.has(x.id))].sort((a, b) => b.id - a.id).slice(0, EVENTS_KEPT);
      this.set({ tasks: [...merged.values()].sort(newestFirst).slice(0, TASKS_KEPT), events: mergedEvents, loaded: true, error: undefined });
    } catch (err) {
      this.fail(err);
    }
  }

  private async fetch(r: Resource): Promise<void> {
    const stamp = ++this.started[r];
    try {
      const patch: Partial<ClusterSnapshot> = {};
      switch (r) {
        case "hosts":
          patch.hosts = (await this.api.hosts()).sort(byName);
          break;
        case "vms":
          patch.vms = (await this.api.list()).sort(byName);
          break;
        case "networks":
          patch.networks = (await this.api.networks()).sort(byName);
          break;
        case "datastores":
          patch.datastores = await this.api.datastores();
          break;
      }
      if (stamp < this.applied[r]) return;
      this.applied[r] = stamp;
      this.set(patch);
    } catch (err) {
      this.fail(err);
    }
  }

  private async fetchVm(name: string): Promise<void> {
    const vmsStamp = this.started.vms;
    const stamp = (this.vmStamps.get(name) ?? 0) + 1;
    this.vmStamps.set(name, stamp);
    try {
      const vm = await this.api.get(name);
      if (this.applied.vms > vmsStamp) return; // a full list fetched since knows better
      if (this.vmStamps.get(name) !== stamp) return; // a later fetch of this VM is under way
      this.upsertVm(vm);
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 404)) this.fail(err);
      else if (this.vmStamps.get(name) === stamp) this.removeVm(name);
    }
  }

  upsertVm(vm: ClusterVm): void {
    const others = this.snap.vms.filter((v) => v.name !== vm.name);
    this.set({ vms: [...others, vm].sort(byName) });
  }

  private removeVm(name: string): void {
    if (this.snap.vms.some((v) => v.name === name)) this.set({ vms: this.snap.vms.filter((v) => v.name !== name) });
  }

  upsertTask(task: TaskRow): void {
    const old = this.snap.tasks.find((t) => t.id === task.id);
    // Rows are replaced only by ones at least as far along (an event may overtake a response).
    if (old !== undefined && old.endedAt !== undefined && task.endedAt === undefined) return;
    const tasks = [task, ...this.snap.tasks.filter((t) => t.id !== task.id)].sort(newestFirst).slice(0, TASKS_KEPT);
    this.set({ tasks });
  }

  /** Marks resources to re-fetch shortly (several events in a burst make one fetch). */
  private invalidate(resources: Resource[], vms: string[] = []): void {
    for (const r of resources) this.dirty.add(r);
    for (const v of vms) this.dirtyVms.add(v);
    if (this.flushTimer !== undefined) return;
    this.flushTimer = window.setTimeout(() => {
      this.flushTimer = undefined;
      const rs = [...this.dirty];
      const vs = [...this.dirtyVms];
      this.dirty.clear();
      this.dirtyVms.clear();
      for (const r of rs) void this.fetch(r);
      if (!rs.includes("vms")) for (const v of vs) void this.fetchVm(v);
    }, 150);
  }

  private apply(ev: ClusterEvent): void {
    // Stream-only: heartbeats changed load figures; refresh them, nothing to list.
    if (ev.type === "cluster.load") {
      this.invalidate(["hosts", "vms"], []);
      return;
    }
    if (!this.snap.events.some((e) => e.id === ev.id)) this.set({ events: [ev, ...this.snap.events].slice(0, EVENTS_KEPT) });
    if (ev.type === "task.updated" && isTaskRow(ev.data)) this.upsertTask(ev.data);
    if (ev.type !== "migration.progress") {
      const resources: Resource[] = ["hosts"];
      if (ev.type.startsWith("network.")) resources.push("networks");
      if (ev.type === "host.joined" || ev.type === "host.rejoined" || ev.type === "host.removed") resources.push("datastores");
      // A host going down or coming back changes what is known of all its VMs.
      if (ev.vm === undefined && ev.type.startsWith("host.")) resources.push("vms");
      this.invalidate(resources, ev.vm !== undefined ? [ev.vm] : []);
    }
    for (const fn of this.eventListeners) fn(ev);
  }

  private connect(): void {
    if (this.stopped) return;
    let ws: WebSocket;
    try {
      ws = this.api.eventsSocket();
    } catch (err) {
      this.fail(err);
      this.retry();
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      this.retryMs = 1_000;
      this.set({ live: "live" });
      // Fetched after the stream is open, so nothing that happens from now on is missed.
      void this.reload();
    };
    ws.onmessage = (m: MessageEvent) => {
      if (typeof m.data !== "string") return;
      try {
        this.apply(JSON.parse(m.data) as ClusterEvent);
      } catch {
        // not an event
      }
    };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = undefined;
      if (this.stopped) return;
      this.set({ live: "reconnecting" });
      this.retry();
    };
  }

  private retry(): void {
    if (this.stopped || this.retryTimer !== undefined) return;
    this.retryTimer = window.setTimeout(() => {
      this.retryTimer = undefined;
      // The close may be a refused token: ask once over HTTP (a 401 logs the page out).
      this.api.health().then(
        () => this.connect(),
        (err: unknown) => {
          if (!(err instanceof ApiError && err.status === 401)) this.retry();
        },
      );
    }, this.retryMs);
    this.retryMs = Math.min(this.retryMs * 2, 10_000);
  }
}

export const StoreContext = createContext<ClusterStore | undefined>(undefined);

export function useStore(): ClusterStore {
  const s = useContext(StoreContext);
  if (s === undefined) throw new Error("useStore outside StoreContext");
  return s;
}

export function useCluster(): ClusterSnapshot {
  const s = useStore();
  return useSyncExternalStore(s.subscribe, s.getSnapshot);
}

/** Calls `fn` for every live event while the component is mounted (the latest `fn`). */
export function useClusterEvents(fn: (ev: ClusterEvent) => void): void {
  const store = useStore();
  const ref = useRef(fn);
  useEffect(() => {
    ref.current = fn;
  });
  useEffect(() => store.onEvent((ev) => ref.current(ev)), [store]);
}
