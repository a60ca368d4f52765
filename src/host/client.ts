/**
 * Typed client of the host agent API (used by the `hop` CLI). One method per route; errors
 * come back as `ApiError` (the server's code, message and status) or `HOST_UNREACHABLE`.
 *
 * Plain node:http is used rather than global fetch: fetch's built-in 300 s headers timeout would
 * cut off long `exec` and `shutdown` calls (the API allows up to 600 s), and it cannot be
 * changed without the undici package.
 */
import http from "node:http";
import https from "node:https";
import WebSocket, { type RawData } from "ws";
import { HopError, errorMessage } from "../common/errors.js";
import type { VmCreateRequest } from "../vm/config.js";
import type { ApiErrorBody, DestroyOptions, ExecRequest, HealthResponse, ShutdownRequest, VmListResponse } from "./api.js";
import type { ExecResult, HostEvent, VmInfo } from "./types.js";
import type { IncomingOutcome, IncomingRequest, IncomingTicket, MigratePeerResolver, MigrateRequest, MigrationPeer } from "./migration.js";
import type { MigrationReport } from "../migration/index.js";
import type { AdoptRequest } from "../cluster/protocol.js";
import type { NetworkCreateRequest, NetworkDetail, NetworkInfo, NetworksResponse } from "./network.js";

/** An error response of a host agent (or the cluster manager), with the server's code, message and HTTP status. */
export class ApiError extends HopError {
  constructor(code: string, message: string, status: number) {
    super(code, message, { status });
  }
}

const NETWORK_CODES = new Set(["ECONNREFUSED", "ECONNRESET", "ENOTFOUND", "EAI_AGAIN", "EHOSTUNREACH", "ENETUNREACH", "ETIMEDOUT", "EPIPE"]);

/**
 * Where an API client sends its requests. `label` names the server in messages ("host agent",
 * "manager") and `codePrefix` starts the error codes ("HOST" -> HOST_UNREACHABLE, HOST_TIMEOUT...).
 */
export interface ApiEndpoint {
  baseUrl: string;
  token: string;
  label: string;
  codePrefix: string;
}

const HOST_AGENT = { label: "host agent", codePrefix: "HOST" } as const;

/** Checks a base URL (http/https) and drops trailing slashes; `what` names it in the error. */
export function normalizeBaseUrl(baseUrl: string, what = "host"): string {
  let url: URL;
  try {
    url = new URL(baseUrl);
  } catch {
    throw new HopError("BAD_HOST_URL", `'${baseUrl}' is not a URL (expected e.g. http://127.0.0.1:7401)`, { status: 400 });
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new HopError("BAD_HOST_URL", `${what} URL must be http:// or https://, not '${baseUrl}'`, { status: 400 });
  }
  return url.href.replace(/\/+$/, "");
}

function unreachable(ep: ApiEndpoint, err: unknown): HopError | undefined {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (code === undefined || !NETWORK_CODES.has(code)) return undefined;
  return new HopError(`${ep.codePrefix}_UNREACHABLE`, `cannot reach the ${ep.label} at ${ep.baseUrl} (${code})`, { status: 503, cause: err });
}

function isApiErrorBody(v: unknown): v is ApiErrorBody {
  const e = (v as { error?: { code?: unknown; message?: unknown } } | null)?.error;
  return typeof e?.code === "string" && typeof e.message === "string";
}

function apiErrorFrom(status: number, statusText: string, text: string, label: string): ApiError {
  try {
    const body: unknown = JSON.parse(text);
    if (isApiErrorBody(body)) return new ApiError(body.error.code, body.error.message, status);
  } catch {
    // not JSON: fall through
  }
  const snippet = text.trim().slice(0, 200);
  return new ApiError(`HTTP_${status}`, `${label} answered ${status} ${statusText}${snippet !== "" ? `: ${snippet}` : ""}`, status);
}

/** Resolves once `ws` (from HostClient.console/events) is open; rejects with ApiError / HOST_UNREACHABLE. */
const openPromises = new WeakMap<WebSocket, Promise<void>>();

export function waitOpen(ws: WebSocket): Promise<void> {
  if (ws.readyState === WebSocket.OPEN) return Promise.resolve();
  const p = openPromises.get(ws);
  if (p !== undefined) return p;
  return new Promise((resolve, reject) => {
    ws.once("open", () => resolve());
    ws.once("error", reject);
    ws.once("close", () => reject(new HopError("WS_CLOSED", "the WebSocket closed before it opened")));
  });
}

/** Decodes one message of the events WebSocket. */
export function parseHostEvent(data: RawData): HostEvent {
  const buf = Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data);
  return JSON.parse(buf.toString("utf8")) as HostEvent;
}

export class HostClient {
  readonly baseUrl: string;
  private readonly endpoint: ApiEndpoint;

  constructor(baseUrl: string, token: string) {
    this.baseUrl = normalizeBaseUrl(baseUrl);
    this.endpoint = { baseUrl: this.baseUrl, token, ...HOST_AGENT };
  }

  health(): Promise<HealthResponse> {
    return this.call<HealthResponse>("GET", "/v1/health");
  }

  async list(): Promise<VmInfo[]> {
    return (await this.call<VmListResponse>("GET", "/v1/vms")).vms;
  }

  get(name: string): Promise<VmInfo> {
    return this.call<VmInfo>("GET", `/v1/vms/${enc(name)}`);
  }

  create(req: VmCreateRequest): Promise<VmInfo> {
    return this.call<VmInfo>("POST", "/v1/vms", req);
  }

  start(name: string): Promise<VmInfo> {
    return this.call<VmInfo>("POST", `/v1/vms/${enc(name)}/start`);
  }

  pause(name: string): Promise<VmInfo> {
    return this.call<VmInfo>("POST", `/v1/vms/${enc(name)}/pause`);
  }

  resume(name: string): Promise<VmInfo> {
    return this.call<VmInfo>("POST", `/v1/vms/${enc(name)}/resume`);
  }

  poweroff(name: string): Promise<VmInfo> {
    return this.call<VmInfo>("POST", `/v1/vms/${enc(name)}/poweroff`);
  }

  /** Graceful shutdown through the guest agent; the host powers off hard after `timeoutMs`. */
  shutdown(name: string, opts: ShutdownRequest = {}): Promise<VmInfo> {
    return this.call<VmInfo>("POST", `/v1/vms/${enc(name)}/shutdown`, opts);
  }

  async destroy(name: string, opts: DestroyOptions = {}): Promise<void> {
    const q = new URLSearchParams();
    if (opts.force === true) q.set("force", "true");
    if (opts.deleteDisk === true) q.set("deleteDisk", "true");
    const qs = q.toString();
    await this.call<undefined>("DELETE", `/v1/vms/${enc(name)}${qs !== "" ? `?${qs}` : ""}`);
  }

  exec(name: string, command: string, opts: { timeoutMs?: number } = {}): Promise<ExecResult> {
    const body: ExecRequest = { command, ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}) };
    return this.call<ExecResult>("POST", `/v1/vms/${enc(name)}/exec`, body);
  }

  suspend(name: string): Promise<VmInfo> {
    return this.call<VmInfo>("POST", `/v1/vms/${enc(name)}/suspend`);
  }

  /** Migrates a VM to another host; resolves with the report when it runs (or is defined) there. */
  migrate(name: string, req: MigrateRequest): Promise<MigrationReport> {
    return this.call<MigrationReport>("POST", `/v1/vms/${enc(name)}/migrate`, req);
  }

  migrations(): Promise<{ migrations: { migrationId: string; vm: string }[] }> {
    return this.call("GET", "/v1/migrations");
  }

  cancelMigration(migrationId: string): Promise<{ cancelled: boolean }> {
    return this.call("POST", `/v1/migrations/${enc(migrationId)}/cancel`);
  }

  prepareIncoming(req: IncomingRequest, timeoutMs = 120_000): Promise<IncomingTicket> {
    return this.call<IncomingTicket>("POST", "/v1/migrations/incoming", req, timeoutMs);
  }

  commitIncoming(migrationId: string, statePath: string, timeoutMs = 120_000): Promise<IncomingTicket> {
    return this.call<IncomingTicket>("POST", `/v1/migrations/incoming/${enc(migrationId)}/commit`, { statePath }, timeoutMs);
  }

  async abortIncoming(migrationId: string): Promise<void> {
    await this.call<undefined>("DELETE", `/v1/migrations/incoming/${enc(migrationId)}`, undefined, 10_000);
  }

  async fenceIncoming(migrationId: string): Promise<IncomingOutcome> {
    return (await this.call<{ outcome: IncomingOutcome }>("POST", `/v1/migrations/incoming/${enc(migrationId)}/fence`, undefined, 15_000)).outcome;
  }

  /**
   * HA restart: the host takes over VM `name` of the failed host `req.fromHost` from the shared
   * datastore (its config must still carry `req.generation`; 409 VM_OWNERSHIP_CHANGED otherwise)
   * and starts it unless `req.start` is false.
   */
  adopt(name: string, req: AdoptRequest): Promise<VmInfo> {
    return this.call<VmInfo>("POST", `/v1/vms/${enc(name)}/adopt`, req);
  }

  /** The host's virtual networks, its VXLAN endpoint and switch counters. */
  networks(): Promise<NetworksResponse> {
    return this.call<NetworksResponse>("GET", "/v1/networks");
  }

  /** Defines a virtual network (in the datastore) and carries it on this host; `hostAccess`: a Linux gateway here (root). */
  createNetwork(req: NetworkCreateRequest): Promise<NetworkInfo> {
    return this.call<NetworkInfo>("POST", "/v1/networks", req);
  }

  /** One network: ports with counters, MAC table, forwardings, address allocations. */
  network(name: string): Promise<NetworkDetail> {
    return this.call<NetworkDetail>("GET", `/v1/networks/${enc(name)}`);
  }

  /**
   * The VM's serial console: binary frames carry output (scrollback first), text frames carry
   * an ApiErrorBody (e.g. a write to a stopped VM); send bytes to type. Close code 4404: no
   * such VM. Attach the 'message' listener before awaiting `waitOpen(ws)`: the scrollback can
   * arrive together with the upgrade response and is emitted before the await resumes.
   */
  console(name: string): WebSocket {
    return this.socket(`/v1/vms/${enc(name)}/console`);
  }

  /** Host events, one JSON HostEvent per text message (decode with parseHostEvent). Await `waitOpen(ws)`. */
  events(): WebSocket {
    return this.socket("/v1/events");
  }

  // --- internals ---

  private socket(path: string): WebSocket {
    return apiSocket(this.endpoint, path);
  }

  private call<T>(method: string, path: string, body?: unknown, timeoutMs?: number): Promise<T> {
    return apiCall<T>(this.endpoint, method, path, body, timeoutMs);
  }
}

/**
 * Opens an authenticated WebSocket on `path` of the endpoint (http -> ws). Await `waitOpen(ws)`:
 * a refused upgrade becomes the server's ApiError, a network failure <PREFIX>_UNREACHABLE.
 */
export function apiSocket(ep: ApiEndpoint, path: string): WebSocket {
  const url = ep.baseUrl.replace(/^http/, "ws") + path;
  const ws = new WebSocket(url, { headers: { authorization: `Bearer ${ep.token}` } });
  const opened = new Promise<void>((resolve, reject) => {
    let settled = false;
    const settle = (err?: unknown): void => {
      if (settled) return;
      settled = true;
      if (err === undefined) resolve();
      else reject(err instanceof Error ? err : new Error(errorMessage(err)));
    };
    ws.once("open", () => settle());
    // A refused upgrade (401, 404...): report the server's JSON error, then drop the handshake.
    ws.on("unexpected-response", (_req, res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("error", () => undefined);
      res.on("end", () => {
        settle(apiErrorFrom(res.statusCode ?? 0, res.statusMessage ?? "", Buffer.concat(chunks).toString("utf8"), ep.label));
        ws.terminate();
      });
    });
    ws.on("error", (err) => settle(unreachable(ep, err) ?? err));
    ws.once("close", (code, reason) => settle(new HopError("WS_CLOSED", `the WebSocket closed before it opened (${code} ${reason.toString()})`)));
  });
  opened.catch(() => undefined); // observed through waitOpen(); never an unhandled rejection
  openPromises.set(ws, opened);
  return ws;
}

/**
 * One JSON request to the endpoint with its bearer token. Resolves with the parsed body
 * (undefined for 204 / empty); rejects with ApiError for a non-2xx answer (the server's
 * `{error:{code,message}}` when it sent one) or <PREFIX>_UNREACHABLE / _TIMEOUT / _REQUEST_FAILED.
 */
export function apiCall<T>(ep: ApiEndpoint, method: string, path: string, body?: unknown, timeoutMs?: number): Promise<T> {
  const url = new URL(ep.baseUrl + path);
  const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body), "utf8");
  const headers: http.OutgoingHttpHeaders = { authorization: `Bearer ${ep.token}`, accept: "application/json" };
  if (payload !== undefined) {
    headers["content-type"] = "application/json";
    headers["content-length"] = payload.length;
  }
  const mod = url.protocol === "https:" ? https : http;
  return new Promise<T>((resolve, reject) => {
    const req = mod.request(url, { method, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("error", (err) => reject(unreachable(ep, err) ?? err));
      res.on("end", () => {
        const status = res.statusCode ?? 0;
        const text = Buffer.concat(chunks).toString("utf8");
        if (status < 200 || status >= 300) {
          reject(apiErrorFrom(status, res.statusMessage ?? "", text, ep.label));
          return;
        }
        if (status === 204 || text === "") {
          resolve(undefined as T);
          return;
        }
        try {
          resolve(JSON.parse(text) as T);
        } catch (err) {
          reject(new HopError("BAD_RESPONSE", `${ep.label} sent invalid JSON for ${method} ${path}: ${errorMessage(err)}`, { status: 502 }));
        }
      });
    });
    req.on("error", (err) => reject(unreachable(ep, err) ?? new HopError(`${ep.codePrefix}_REQUEST_FAILED`, `${method} ${url.href} failed: ${err.message}`, { cause: err })));
    if (timeoutMs !== undefined) {
      req.setTimeout(timeoutMs, () => req.destroy(new HopError(`${ep.codePrefix}_TIMEOUT`, `${method} ${url.href} got no answer within ${timeoutMs} ms`, { status: 504 })));
    }
    req.end(payload);
  });
}

function enc(name: string): string {
  return encodeURIComponent(name);
}

/** The target host agent of a migration, reached over its HTTP API with the cluster token. */
export class HttpMigrationPeer implements MigrationPeer {
  private readonly client: HostClient;
  constructor(readonly url: string, token: string) {
    this.client = new HostClient(url, token);
  }
  prepareIncoming(req: IncomingRequest): Promise<IncomingTicket> {
    return this.client.prepareIncoming(req);
  }
  commitIncoming(migrationId: string, statePath: string): Promise<IncomingTicket> {
    return this.client.commitIncoming(migrationId, statePath);
  }
  abortIncoming(migrationId: string): Promise<void> {
    return this.client.abortIncoming(migrationId);
  }
  fenceIncoming(migrationId: string): Promise<IncomingOutcome> {
    return this.client.fenceIncoming(migrationId);
  }
}

/** Resolves `--to`: a URL, or a host name from `peers` (name -> URL). */
export function httpPeerResolver(token: string, peers: ReadonlyMap<string, string>): MigratePeerResolver {
  return (to) => {
    const url = peers.get(to) ?? (/^https?:\/\//.test(to) ? to : undefined);
    if (url === undefined) {
      throw new HopError("HOST_UNKNOWN", `unknown host '${to}': give its URL (http://ADDR:PORT) or start the host agent with --peer ${to}=URL`, { status: 400 });
    }
    return new HttpMigrationPeer(url, token);
  };
}
