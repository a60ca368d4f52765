/**
 * The manager's live view of its host agents: when each was last heard from (monotonic clock,
 * so wall-clock jumps never declare a host down), an API client per host, and a subscription to
 * each host's event stream (reconnected while the host is connected).
 */
import type { RawData } from "ws";
import type WebSocket from "ws";
import { errorMessage } from "../common/errors.js";
import type { Logger } from "../common/log.js";
import { monotonicMs } from "../common/time.js";
import { HostClient, parseHostEvent, waitOpen } from "../host/client.js";
import type { HostEvent } from "../host/types.js";

interface LiveHost {
  client: HostClient;
  lastSeen: number;
  events?: WebSocket;
  reconnect?: NodeJS.Timeout;
  wantEvents: boolean;
}

export class HostRegistry {
  private readonly hosts = new Map<string, LiveHost>();

  constructor(
    private readonly token: string,
    private readonly onHostEvent: (host: string, ev: HostEvent) => void,
    private readonly log: Logger,
  ) {}

  /** Records that `name` (at `url`) was heard from now. */
  seen(name: string, url: string): void {
    const h = this.hosts.get(name);
    if (h === undefined || h.client.baseUrl !== url.replace(/\/+$/, "")) {
      if (h !== undefined) this.stopEvents(h);
      this.hosts.set(name, { client: new HostClient(url, this.token), lastSeen: monotonicMs(), wantEvents: false });
      return;
    }
    h.lastSeen = monotonicMs();
  }

  /** A host known from the database when the manager starts: it gets a full grace period from now. */
  remember(name: string, url: string): void {
    if (!this.hosts.has(name)) this.hosts.set(name, { client: new HostClient(url, this.token), lastSeen: monotonicMs(), wantEvents: false });
  }

  forget(name: string): void {
    const h = this.hosts.get(name);
    if (h !== undefined) this.stopEvents(h);
    this.hosts.delete(name);
  }

  /** Milliseconds since the host was last heard from (Infinity if unknown). */
  silenceMs(name: string): number {
    const h = this.hosts.get(name);
    return h === undefined ? Infinity : monotonicMs() - h.lastSeen;
  }

  client(name: string): HostClient | undefined {
    return this.hosts.get(name)?.client;
  }

  names(): string[] {
    return [...this.hosts.keys()];
  }

  /** Follow (or stop following) the host's event stream. */
  follow(name: string, on: boolean): void {
    const h = this.hosts.get(name);
    if (h === undefined) return;
    h.wantEvents = on;
    if (!on) this.stopEvents(h);
    else if (h.events === undefined && h.reconnect === undefined) this.openEvents(name, h);
  }

  close(): void {
    for (const h of this.hosts.values()) {
      h.wantEvents = false;
      this.stopEvents(h);
    }
  }

  private stopEvents(h: LiveHost): void {
    if (h.reconnect !== undefined) clearTimeout(h.reconnect);
    delete h.reconnect;
    const ws = h.events;
    delete h.events;
    ws?.removeAllListeners("close");
    ws?.on("error", () => undefined);
    ws?.terminate();
  }

  private openEvents(name: string, h: LiveHost): void {
    const ws = h.client.events();
    h.events = ws;
    ws.on("message", (data: RawData) => {
      try {
        this.onHostEvent(name, parseHostEvent(data));
      } catch (err) {
        this.log.warn({ host: name, err: errorMessage(err) }, "bad event from host");
      }
    });
    ws.on("error", () => undefined);
    ws.on("close", () => {
      if (h.events === ws) delete h.events;
      if (h.wantEvents && this.hosts.get(name) === h && h.reconnect === undefined) {
        h.reconnect = setTimeout(() => {
          delete h.reconnect;
          if (h.wantEvents && this.hosts.get(name) === h && h.events === undefined) this.openEvents(name, h);
        }, 1_000);
        h.reconnect.unref();
      }
    });
    waitOpen(ws).catch((err: unknown) => this.log.debug({ host: name, err: errorMessage(err) }, "host event stream not open"));
  }
}
