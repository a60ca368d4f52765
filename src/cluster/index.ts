/**
 * The cluster manager: inventory (SQLite), tasks and events, host leases and HA, maintenance
 * mode, balancing, and its HTTP API. `serveManager` runs one; `ManagerClient` talks to one.
 */
import { HopError } from "../common/errors.js";
import { createLogger, type Logger } from "../common/log.js";
import { packageVersion } from "../common/paths.js";
import { createApiApp, listenApp } from "../host/server.js";
import { HaMonitor } from "./ha.js";
import { DEFAULT_DRS_THRESHOLD, applyDrs, type DrsSettings } from "./maintenance.js";
import { Manager } from "./manager.js";
import { DEFAULT_GRACE_MS, DEFAULT_HEARTBEAT_MS, DEFAULT_LEASE_MS } from "./protocol.js";
import { recoverTasks } from "./recovery.js";
import { registerManagerApi } from "./server.js";
import { SqliteStore, type InventoryStore } from "./store/index.js";
import { registerWebClient, WEB_PUBLIC_ROUTES } from "../web/static.js";

export * from "./types.js";
export type * from "./api-types.js";
export * from "./protocol.js";
export { Manager } from "./manager.js";
export { SqliteStore, MemoryStore, type InventoryStore } from "./store/index.js";
export { ManagerClient } from "./client.js";

export interface ManagerServeOptions {
  /** "HOST:PORT" (port 0: any free port). */
  listen: string;
  /** SQLite database file. */
  db: string;
  /** The cluster token (at least 16 characters): host agents and users present it. */
  token: string;
  heartbeatMs?: number;
  leaseMs?: number;
  graceMs?: number;
  drs?: { mode: "off" | "manual" | "auto"; intervalMs?: number; threshold?: number };
  maxMigrationsPerHost?: number;
  maxMigrationsPerCluster?: number;
  log?: Logger;
  /** Another store than SQLite at `db` (tests, embedding). */
  store?: InventoryStore;
}

export interface ManagerHandle {
  url: string;
  managerId: string;
  manager: Manager;
  close(): Promise<void>;
}

/** Checks the timing settings: a host must always fence itself before the manager restarts its VMs. */
export function checkTimings(heartbeatMs: number, leaseMs: number, graceMs: number): void {
  if (heartbeatMs < 100) throw new HopError("BAD_TIMINGS", `heartbeat interval ${heartbeatMs} ms is too short (at least 100 ms)`, { status: 400 });
  if (leaseMs < heartbeatMs * 2) throw new HopError("BAD_TIMINGS", `the lease (${leaseMs} ms) must be at least two heartbeat intervals (${heartbeatMs} ms)`, { status: 400 });
  if (graceMs < leaseMs + heartbeatMs) {
    throw new HopError("BAD_TIMINGS", `the grace period (${graceMs} ms) must exceed the lease plus one heartbeat (${leaseMs + heartbeatMs} ms), so a cut-off host has fenced itself before its VMs restart elsewhere`, { status: 400 });
  }
}

export async function serveManager(opts: ManagerServeOptions): Promise<ManagerHandle> {
  if (opts.token.length < 16) throw new HopError("TOKEN_TOO_SHORT", "the cluster token must be at least 16 characters", { status: 400 });
  const heartbeatMs = opts.heartbeatMs ?? DEFAULT_HEARTBEAT_MS;
  const leaseMs = opts.leaseMs ?? DEFAULT_LEASE_MS;
  const graceMs = opts.graceMs ?? DEFAULT_GRACE_MS;
  checkTimings(heartbeatMs, leaseMs, graceMs);
  const log = opts.log ?? createLogger("manager");
  const drs: DrsSettings = { mode: opts.drs?.mode ?? "manual", intervalMs: opts.drs?.intervalMs ?? 300_000, threshold: opts.drs?.threshold ?? DEFAULT_DRS_THRESHOLD };
  const store = opts.store ?? new SqliteStore({ path: opts.db });
  const manager = new Manager({
    store,
    token: opts.token,
    version: packageVersion(),
    heartbeatMs,
    leaseMs,
    graceMs,
    maxMigrationsPerHost: opts.maxMigrationsPerHost ?? 4,
    maxMigrationsPerCluster: opts.maxMigrationsPerCluster ?? 8,
    log,
  });
  await manager.init();
  const ha = new HaMonitor(manager);
  const app = await createApiApp({
    token: opts.token,
    log: log,
    role: "manager",
    // The web client (its page and assets need no token; its API calls carry one), before the API's OpenAPI catalogue.
    publicRoutes: WEB_PUBLIC_ROUTES,
    register: (a) => {
      registerWebClient(a);
      registerManagerApi(a, manager, drs);
    },
  });
  const server = await listenApp(app, opts.listen);
  await recoverTasks(manager, ha);
  ha.start();
  let drsTimer: NodeJS.Timeout | undefined;
  if (drs.mode === "auto") {
    drsTimer = setInterval(() => {
      if (manager.tasks.active().some((t) => t.kind === "drs.apply")) return;
      applyDrs(manager, drs.threshold).catch((err: unknown) => log.warn({ err: (err as Error).message }, "balancing pass failed"));
    }, drs.intervalMs);
    drsTimer.unref();
  }
  void manager.emit({ type: "manager.started", message: `manager ${manager.managerId} listening on ${server.url}` });
  log.info({ url: server.url, managerId: manager.managerId, heartbeatMs, leaseMs, graceMs, drs: drs.mode }, "manager ready");
  let closing: Promise<void> | undefined;
  const close = async (): Promise<void> => {
    if (drsTimer !== undefined) clearInterval(drsTimer);
    ha.stop();
    manager.close();
    await server.close();
    await store.close();
  };
  return { url: server.url, managerId: manager.managerId, manager, close: () => (closing ??= close()) };
}
