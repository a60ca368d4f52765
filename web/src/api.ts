/**
 * The browser's client of the manager API: fetch for HTTP, WebSocket URLs carrying ?token=.
 * Every request and response type comes from the server's own definitions (src/cluster/api-types.ts,
 * src/cluster/types.ts) and every route is described once, in ManagerApiBase (src/cluster/api-base.ts),
 * which the Node ManagerClient extends too; this class adds fetch and the browser's WebSockets.
 */
import type { ClusterMigrateRequest, TaskRow } from "../../src/cluster/api-types.js";
import { ManagerApiBase, type EventListFilter, type TaskListFilter } from "../../src/cluster/api-base.js";
import type { ApiErrorBody } from "../../src/host/api.js";

export type { EventListFilter, TaskListFilter };

/** An error answer of the manager ({ error: { code, message } }) or a failure to reach it. */
export class ApiError extends Error {
  constructor(
    readonly code: string,
    message: string,
    /** HTTP status; 0 when the manager could not be reached. */
    readonly status: number,
  ) {
    super(message);
    this.name = "ApiError";
  }
}

export function errorText(err: unknown): string {
  if (err instanceof ApiError) return `${err.message} (${err.code})`;
  return err instanceof Error ? err.message : String(err);
}

const enc = encodeURIComponent;

export class HopApi extends ManagerApiBase {
  /** Called when the manager answers 401 (the token was revoked or the manager restarted with another). */
  onUnauthorized: ((err: ApiError) => void) | undefined;

  constructor(
    readonly token: string,
    /** "" (same origin as the page) or "http://host:port". */
    readonly baseUrl = "",
  ) {
    super();
  }

  /** Starts a migration task and answers at once with it (follow it through the events). */
  startMigration(name: string, req: Omit<ClusterMigrateRequest, "wait">): Promise<TaskRow> {
    return this.migrate(name, { ...req, wait: false });
  }

  // --- WebSockets (browsers cannot set headers on them: the token goes in the query) ---

  /** The live event stream: one ClusterEvent (JSON) per message. */
  eventsSocket(): WebSocket {
    return new WebSocket(this.socketUrl("/v1/events"));
  }

  /** A VM's serial console through the manager (it follows the VM across migrations). */
  consoleSocket(vm: string): WebSocket {
    const ws = new WebSocket(this.socketUrl(`/v1/vms/${enc(vm)}/console`));
    ws.binaryType = "arraybuffer";
    return ws;
  }

  private socketUrl(path: string): string {
    const base = new URL(this.baseUrl === "" ? window.location.href : this.baseUrl);
    const proto = base.protocol === "https:" ? "wss:" : "ws:";
    return `${proto}//${base.host}${path}?token=${enc(this.token)}`;
  }

  protected async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const headers: Record<string, string> = { authorization: `Bearer ${this.token}`, accept: "application/json" };
    const init: RequestInit = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let res: Response;
    try {
      res = await fetch(this.baseUrl + path, init);
    } catch (err) {
      throw new ApiError("MANAGER_UNREACHABLE", `cannot reach the manager: ${err instanceof Error ? err.message : String(err)}`, 0);
    }
    if (res.status === 204) return undefined as T;
    const text = await res.text();
    let json: unknown;
    try {
      json = text === "" ? undefined : JSON.parse(text);
    } catch {
      json = undefined;
    }
    if (!res.ok) {
      const e = (json as Partial<ApiErrorBody> | undefined)?.error;
      const err = new ApiError(e?.code ?? `HTTP_${res.status}`, e?.message ?? `${method} ${path} answered HTTP ${res.status}`, res.status);
      if (res.status === 401) this.onUnauthorized?.(err);
      throw err;
    }
    return json as T;
  }
}
