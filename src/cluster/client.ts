/**
 * Typed client of the cluster manager's API (api-types.ts): one method per route. It shares the
 * HTTP and WebSocket plumbing with HostClient (apiCall / apiSocket in host/client.ts), so errors
 * behave the same: `ApiError` with the server's code, message and status, or
 * MANAGER_UNREACHABLE / MANAGER_TIMEOUT naming the URL.
 *
 * The manager mirrors the host agent's VM routes, so a HostClient works against it too; this
 * client adds the cluster routes and the manager's variants (placement, migrate without a target,
 * tasks).
 */
import type WebSocket from "ws";
import type { RawData } from "ws";
import { apiCall, apiSocket, normalizeBaseUrl, type ApiEndpoint } from "../host/client.js";
import type { ClusterEvent } from "./api-types.js";
import { ManagerApiBase } from "./api-base.js";

export { ApiError, waitOpen } from "../host/client.js";
export { ManagerApiBase, queryString, taskEnded, type EventListFilter, type TaskListFilter } from "./api-base.js";

/** Decodes one message of the manager's events WebSocket. */
export function parseClusterEvent(data: RawData): ClusterEvent {
  const buf = Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data);
  return JSON.parse(buf.toString("utf8")) as ClusterEvent;
}

function enc(name: string): string {
  return encodeURIComponent(name);
}

export class ManagerClient extends ManagerApiBase {
  readonly baseUrl: string;
  private readonly endpoint: ApiEndpoint;

  constructor(baseUrl: string, token: string) {
    super();
    this.baseUrl = normalizeBaseUrl(baseUrl, "manager");
    this.endpoint = { baseUrl: this.baseUrl, token, label: "manager", codePrefix: "MANAGER" };
  }

  /**
   * The VM's serial console, following it across migrations (see HostClient.console: attach the
   * 'message' listener before awaiting `waitOpen(ws)`).
   */
  console(name: string): WebSocket {
    return apiSocket(this.endpoint, `/v1/vms/${enc(name)}/console`);
  }

  /** Live events, one JSON ClusterEvent per text message (decode with parseClusterEvent). Await `waitOpen(ws)`. */
  events(): WebSocket {
    return apiSocket(this.endpoint, "/v1/events");
  }

  protected call<T>(method: string, path: string, body?: unknown, timeoutMs?: number): Promise<T> {
    return apiCall<T>(this.endpoint, method, path, body, timeoutMs);
  }
}
