/**
 * The host agent's link to the cluster manager (src/cluster/protocol.ts): join, then heartbeat
 * every `heartbeatMs`; each answer renews the host's lease, counted from when the request was
 * *sent*. While the lease is not held (not joined yet, or expired: manager unreachable, 5xx,
 * timeouts) the host starts no VM, and once it expires every VM process of the host is killed
 * (self-fencing), so the manager may restart the VMs elsewhere after its grace period without
 * two copies ever running. VMs the manager lists in `release` are forgotten here.
 *
 * One request is in flight at a time (a single loop); a timer checks the lease every ~200 ms.
 */
import { availableParallelism, totalmem } from "node:os";
import { setTimeout as sleep } from "node:timers/promises";
import { z } from "zod";
import { HopError, errorMessage } from "../common/errors.js";
import { createLogger, type Logger } from "../common/log.js";
import { packageVersion } from "../common/paths.js";
import { parseInput } from "../common/validation.js";
import { DEFAULT_LEASE_MS, hostNameSchema, type HeartbeatRequest, type JoinRequest, type VmReport } from "../cluster/protocol.js";
import { isOn } from "../vm/lifecycle.js";
import type { VmStats } from "../vm/ipc.js";
import type { HostEvent, VmInfo } from "./types.js";

const MiB = 1024 * 1024;

/** The reason VMs are fenced with when the lease runs out. */
export const LEASE_LOST_REASON = "lost the manager's lease";

/**
 * The host's lease: valid until (send time of the request the manager answered) + leaseMs.
 * Times come from a monotonic clock (injectable for tests). Never held: expired.
 */
export class Lease {
  private until: number | undefined;

  constructor(private readonly clock: () => number = () => performance.now()) {}

  now(): number {
    return this.clock();
  }

  /** An answer arrived to a request sent at `sentAt` (clock time) granting `leaseMs`. */
  renew(sentAt: number, leaseMs: number): void {
    this.until = sentAt + leaseMs;
  }

  /** Whether a lease was ever granted. */
  get held(): boolean {
    return this.until !== undefined;
  }

  expired(now: number = this.clock()): boolean {
    return this.until === undefined || now >= this.until;
  }

  remainingMs(now: number = this.clock()): number {
    return this.until === undefined ? 0 : Math.max(0, this.until - now);
  }
}

/** What the link needs of the supervisor (LocalSupervisor implements it). */
export interface ManagedSupervisor {
  readonly hostName: string;
  readonly datastore: { readonly id: string };
  readonly migrationAddress: { host: string; port: number } | undefined;
  readonly net: { readonly vtepEndpoint: string | undefined };
  list(): VmInfo[];
  stats(name: string): Promise<VmStats>;
  releaseVms(names: readonly string[], reason: string): Promise<string[]>;
  fenceAll(reason: string): Promise<string[]>;
  setStartGuard(guard: (() => void) | undefined): void;
  publish(ev: HostEvent): void;
}

export interface ManagerLinkOptions {
  supervisor: ManagedSupervisor;
  /** The manager's API, e.g. http://10.0.0.1:7400. */
  managerUrl: string;
  /** The cluster token (Bearer), the same in both directions. */
  token: string;
  /** This host's name in the cluster (default: the supervisor's). */
  hostName?: string;
  /** This host agent's API URL, as the manager should reach it. */
  agentUrl: string;
  /** Default: os.availableParallelism() CPUs and 80% of os.totalmem(). */
  capacity?: { cpus?: number; memoryMiB?: number };
  log?: Logger;
  /** How often the lease is checked (default 200 ms). */
  checkMs?: number;
  /** Monotonic clock, milliseconds (default performance.now). */
  clock?: () => number;
}

export interface ManagerLinkStatus {
  joined: boolean;
  leaseRemainingMs: number;
  lastError?: string;
}

const leaseGrantSchema = z.object({
  leaseMs: z.number().int().min(1),
  heartbeatMs: z.number().int().min(1),
  release: z.array(z.string()).optional(),
});
type LeaseGrantBody = z.infer<typeof leaseGrantSchema>;

/** Retry delay after the manager refused the token (401/403). */
const AUTH_RETRY_MS = 10_000;
/** Before the first answer: how often to try to join. */
const DEFAULT_RETRY_MS = 1_000;
/** How long a VM's stats may take before a heartbeat goes without them. */
const STATS_TIMEOUT_MS = 250;

/** Resolves with the value, or undefined when it fails or takes longer than `ms`. */
async function within<T>(p: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p.catch(() => undefined), new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/** An error answer of the manager. */
export class ManagerError extends HopError {}

export class ManagerLink {
  readonly managerUrl: string;
  readonly hostName: string;
  private readonly supervisor: ManagedSupervisor;
  private readonly token: string;
  private readonly agentUrl: string;
  private readonly capacity: { cpus: number; memoryMiB: number };
  private readonly log: Logger;
  private readonly checkMs: number;
  private readonly clock: () => number;
  private readonly lease: Lease;
  private readonly version = packageVersion();

  private joined = false;
  private seq = 0;
  private leaseMs = DEFAULT_LEASE_MS;
  private heartbeatMs = DEFAULT_RETRY_MS;
  private lastError: string | undefined;
  /** Consecutive failed requests (the first is logged as a warning, the rest at debug). */
  private failures = 0;
  /** "none": never held; "held"; "lost": expired (until renewed). */
  private leaseState: "none" | "held" | "lost" = "none";
  /** Set once the fence of the current expiry was logged. */
  private fencedThisExpiry = false;
  private fencing: Promise<void> | undefined;
  /** CPU time of each VM process at the last heartbeat, by `name#pid`. */
  private cpuSamples = new Map<string, { cpuUs: number; at: number }>();

  private running = false;
  private abort = new AbortController();
  private loop: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;

  constructor(opts: ManagerLinkOptions) {
    this.supervisor = opts.supervisor;
    this.hostName = parseInput(hostNameSchema, opts.hostName ?? opts.supervisor.hostName, "host name");
    // VM configs name their owner by the supervisor's name: the manager must know the host by the same.
    if (this.hostName !== opts.supervisor.hostName) {
      throw new HopError("HOST_NAME_MISMATCH", `the manager link's host name '${this.hostName}' differs from the supervisor's '${opts.supervisor.hostName}'`, { status: 400 });
    }
    let url: URL;
    try {
      url = new URL(opts.managerUrl);
    } catch {
      throw new HopError("BAD_MANAGER_URL", `'${opts.managerUrl}' is not a URL (expected e.g. http://127.0.0.1:7400)`, { status: 400 });
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") throw new HopError("BAD_MANAGER_URL", `the manager URL must be http:// or https://, not '${opts.managerUrl}'`, { status: 400 });
    this.managerUrl = url.href.replace(/\/+$/, "");
    parseInput(z.url(), opts.agentUrl, "agent URL");
    this.agentUrl = opts.agentUrl;
    if (opts.token.trim() === "") throw new HopError("TOKEN_EMPTY", "the cluster token must not be empty", { status: 400 });
    this.token = opts.token.trim();
    this.capacity = {
      cpus: opts.capacity?.cpus ?? availableParallelism(),
      memoryMiB: opts.capacity?.memoryMiB ?? Math.floor((totalmem() * 0.8) / MiB),
    };
    this.log = opts.log ?? createLogger("managerlink", { host: this.hostName });
    this.checkMs = opts.checkMs ?? 200;
    this.clock = opts.clock ?? (() => performance.now());
    this.lease = new Lease(this.clock);
  }

  /** Joins the manager and keeps heartbeating until stop(). Until the first answer, the host starts no VM. */
  start(): void {
    if (this.running) return;
    this.running = true;
    this.abort = new AbortController();
    this.supervisor.setStartGuard(() => this.requireLease());
    this.timer = setInterval(() => this.check(), this.checkMs);
    this.timer.unref();
    this.loop = this.run().catch((err: unknown) => this.log.error({ err }, "the manager link stopped unexpectedly"));
    this.log.info({ manager: this.managerUrl, url: this.agentUrl }, "joining the cluster manager");
  }

  /** Stops heartbeating (the VMs are left as they are; the start guard is removed). */
  async stop(): Promise<void> {
    if (!this.running) return;
    this.running = false;
    this.abort.abort();
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
    this.supervisor.setStartGuard(undefined);
    await this.loop;
    await this.fencing;
  }

  status(): ManagerLinkStatus {
    return {
      joined: this.joined,
      leaseRemainingMs: Math.round(this.lease.remainingMs()),
      ...(this.lastError !== undefined ? { lastError: this.lastError } : {}),
    };
  }

  // --- internals ---

  private requireLease(): void {
    if (!this.lease.expired()) return;
    const why = this.lastError ?? (this.lease.held ? "the lease expired" : "not joined yet");
    throw new HopError("HOST_NO_LEASE", `host ${this.hostName} holds no lease from the cluster manager at ${this.managerUrl} (${why}): it starts no VM until the manager answers`, { status: 503 });
  }

  /** The only loop: join or heartbeat, then wait; requests never overlap. */
  private async run(): Promise<void> {
    while (this.running) {
      const sentAt = this.clock();
      let delay: number;
      try {
        if (this.joined) await this.heartbeat();
        else await this.join();
        if (this.failures > 0) this.log.info({ failures: this.failures }, "the cluster manager answers again");
        this.failures = 0;
        this.lastError = undefined;
        delay = sentAt + this.heartbeatMs - this.clock();
      } catch (err) {
        if (!this.running) break;
        delay = this.onFailure(err, sentAt);
      }
      if (delay > 0 && this.running) {
        await sleep(delay, undefined, { signal: this.abort.signal }).catch(() => undefined);
      }
    }
  }

  private onFailure(err: unknown, sentAt: number): number {
    const e = err as HopError;
    this.lastError = errorMessage(err);
    this.failures++;
    if (e instanceof ManagerError && e.status === 410) {
      this.log.warn({ code: e.code }, "the cluster manager does not know this host any more: joining again");
      this.joined = false;
      return 0;
    }
    if (e instanceof ManagerError && (e.status === 401 || e.status === 403)) {
      this.log.error({ manager: this.managerUrl, code: e.code, status: e.status }, "the cluster manager refused the token: this host's cluster token is wrong (retrying slowly)");
      return AUTH_RETRY_MS;
    }
    const fields = { manager: this.managerUrl, code: e.code, err: this.lastError, joined: this.joined, leaseRemainingMs: Math.round(this.lease.remainingMs()) };
    if (this.failures === 1) this.log.warn(fields, this.joined ? "heartbeat to the cluster manager failed" : "joining the cluster manager failed");
    else this.log.debug(fields, "manager request failed again");
    return sentAt + (this.joined || this.lease.held ? this.heartbeatMs : DEFAULT_RETRY_MS) - this.clock();
  }

  private async join(): Promise<void> {
    const body: JoinRequest = {
      name: this.hostName,
      url: this.agentUrl,
      version: this.version,
      datastoreId: this.supervisor.datastore.id,
      capacity: this.capacity,
      ...(this.supervisor.migrationAddress !== undefined ? { migrationAddress: this.supervisor.migrationAddress } : {}),
      ...(this.supervisor.net.vtepEndpoint !== undefined ? { vtep: this.supervisor.net.vtepEndpoint } : {}),
      vms: (await this.reports()).vms,
    };
    const sentAt = this.clock();
    const grant = await this.post("/v1/hosts/join", body);
    this.joined = true;
    this.log.info({ manager: this.managerUrl, leaseMs: grant.leaseMs, heartbeatMs: grant.heartbeatMs }, "joined the cluster manager");
    await this.granted(grant, sentAt);
  }

  private async heartbeat(): Promise<void> {
    const { vms, load } = await this.reports();
    const body: HeartbeatRequest = { seq: ++this.seq, load, vms };
    const sentAt = this.clock();
    const grant = await this.post(`/v1/hosts/${encodeURIComponent(this.hostName)}/heartbeat`, body);
    await this.granted(grant, sentAt);
  }

  /** An answer: renew the lease (from the send time), adopt the cadence, release what the manager lists. */
  private async granted(grant: LeaseGrantBody, sentAt: number): Promise<void> {
    this.leaseMs = grant.leaseMs;
    // A heartbeat must fit in the lease several times over, whatever the manager says.
    this.heartbeatMs = Math.max(50, Math.min(grant.heartbeatMs, Math.floor(grant.leaseMs / 3)));
    this.lease.renew(sentAt, grant.leaseMs);
    const wasLost = this.leaseState === "lost";
    this.leaseState = "held";
    this.fencedThisExpiry = false;
    if (wasLost) {
      this.log.warn({ manager: this.managerUrl }, "the manager renewed this host's lease after it was lost");
      this.supervisor.publish({ type: "host.lease", at: new Date().toISOString(), state: "renewed-after-loss" });
    }
    const release = grant.release ?? [];
    if (release.length > 0) {
      const done = await this.supervisor.releaseVms(release, "owned elsewhere");
      if (done.length > 0) this.log.warn({ vms: done }, "released VMs the manager knows owned by another host");
    }
  }

  /** The lease check (every checkMs): fence once it has expired and VM processes run here. */
  private check(): void {
    if (!this.running || !this.lease.expired()) return;
    if (this.leaseState === "held") {
      this.leaseState = "lost";
      this.log.error({ manager: this.managerUrl, lastError: this.lastError }, "lost the cluster manager's lease");
      this.supervisor.publish({ type: "host.lease", at: new Date().toISOString(), state: "lost" });
    }
    if (this.fencing !== undefined) return;
    const live = this.supervisor.list().filter((v) => v.pid !== undefined);
    if (live.length === 0) return;
    if (!this.fencedThisExpiry) {
      this.fencedThisExpiry = true;
      this.log.error({ vms: live.map((v) => v.name), lastError: this.lastError }, "no lease from the cluster manager: powering off this host's VMs (the manager may restart them elsewhere)");
    }
    this.fencing = this.supervisor
      .fenceAll(LEASE_LOST_REASON)
      .then(
        () => undefined,
        (err: unknown) => this.log.error({ err }, "fencing failed"),
      )
      .finally(() => (this.fencing = undefined));
  }

  /** One VmReport per VM, and the host's load (CPU from the VM processes' CPU time since the last report). */
  private async reports(): Promise<{ vms: VmReport[]; load: HeartbeatRequest["load"] }> {
    const infos = this.supervisor.list();
    const stats = await Promise.all(infos.map((v) => (v.pid !== undefined ? within(this.supervisor.stats(v.name), STATS_TIMEOUT_MS) : Promise.resolve(undefined))));
    const now = this.clock();
    const samples = new Map<string, { cpuUs: number; at: number }>();
    let cpuPct = 0;
    let rssMiB = 0;
    let memUsedMiB = 0;
    let running = 0;
    const vms = infos.map((v, i): VmReport => {
      const s = stats[i];
      let vmCpu: number | undefined;
      let vmRss: number | undefined;
      if (s !== undefined && v.pid !== undefined) {
        const key = `${v.name}#${v.pid}`;
        const cpuUs = s.cpuUserUs + s.cpuSystemUs;
        samples.set(key, { cpuUs, at: now });
        const prev = this.cpuSamples.get(key);
        if (prev !== undefined && now > prev.at) vmCpu = Math.max(0, Math.round(((cpuUs - prev.cpuUs) / 1000 / (now - prev.at)) * 1000) / 10);
        vmRss = Math.round((s.rssBytes / MiB) * 10) / 10;
        cpuPct += vmCpu ?? 0;
        rssMiB += vmRss;
      }
      if (isOn(v.state)) {
        running++;
        memUsedMiB += v.config.memoryMiB;
      }
      return {
        name: v.name,
        uuid: v.uuid,
        state: v.state,
        generation: v.config.generation ?? 0,
        memoryMiB: v.config.memoryMiB,
        ...(vmCpu !== undefined ? { cpuPct: vmCpu } : {}),
        ...(vmRss !== undefined ? { rssMiB: vmRss } : {}),
        config: { ...v.config },
      };
    });
    this.cpuSamples = samples;
    return { vms, load: { cpuPct: Math.round(cpuPct * 10) / 10, memUsedMiB, rssMiB: Math.round(rssMiB * 10) / 10, vmCount: running } };
  }

  /** POSTs to the manager with a timeout shorter than the lease; answers a validated LeaseGrant. */
  private async post(path: string, body: unknown): Promise<LeaseGrantBody> {
    const timeoutMs = Math.max(200, Math.floor(this.leaseMs * 0.6));
    const signal = AbortSignal.any([AbortSignal.timeout(timeoutMs), this.abort.signal]);
    const url = this.managerUrl + path;
    let status: number;
    let text: string;
    try {
      const res = await fetch(url, {
        method: "POST",
        headers: { authorization: `Bearer ${this.token}`, "content-type": "application/json", accept: "application/json" },
        body: JSON.stringify(body),
        signal,
      });
      status = res.status;
      text = await res.text();
    } catch (err) {
      if ((err as Error).name === "TimeoutError") throw new HopError("MANAGER_TIMEOUT", `POST ${url} got no answer within ${timeoutMs} ms`, { status: 504, cause: err });
      const cause = (err as { cause?: { code?: string; message?: string } }).cause;
      throw new HopError("MANAGER_UNREACHABLE", `cannot reach the cluster manager at ${this.managerUrl} (${cause?.code ?? cause?.message ?? errorMessage(err)})`, { status: 503, cause: err });
    }
    let json: unknown;
    try {
      json = text === "" ? undefined : JSON.parse(text);
    } catch {
      json = undefined;
    }
    if (status < 200 || status >= 300) {
      const e = (json as { error?: { code?: unknown; message?: unknown } } | undefined)?.error;
      const code = typeof e?.code === "string" ? e.code : `HTTP_${status}`;
      const message = typeof e?.message === "string" ? e.message : `the cluster manager answered ${status}${text.trim() !== "" ? `: ${text.trim().slice(0, 200)}` : ""}`;
      throw new ManagerError(code, `POST ${path}: ${message}`, { status });
    }
    const grant = leaseGrantSchema.safeParse(json);
    if (!grant.success) throw new HopError("MANAGER_BAD_RESPONSE", `the cluster manager's answer to POST ${path} is not a lease grant: ${grant.error.issues.map((i) => i.message).join("; ")}`, { status: 502 });
    return grant.data;
  }
}
