/**
 * A real cluster on loopback for tests and benchmarks: `hop manager serve` and N `hop host serve`
 * processes sharing one datastore. Each host agent runs in its own process group, so "kill -9 of
 * it and its VMs" is one signal; each reaches the manager through a TCP relay that can be cut to
 * partition it (its heartbeats blocked, its VMs still alive).
 */
import type { ChildProcess } from "node:child_process";
import { once } from "node:events";
import { mkdir, readFile } from "node:fs/promises";
import { createServer, connect, type AddressInfo, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { waitFor } from "../common/testing.js";
import { freePort, spawnHopDetached, startAgent, type AgentProcess } from "../host/agents.js";
import { ManagerClient } from "./client.js";

/** A TCP relay to `target` that can be cut (every connection dropped, new ones refused) and healed. */
export class Relay {
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();
  private blocked = false;
  port = 0;

  constructor(private readonly target: { host: string; port: number }) {
    this.server = createServer((client) => {
      if (this.blocked) {
        client.destroy();
        return;
      }
      const up = connect(this.target.port, this.target.host);
      this.sockets.add(client).add(up);
      const drop = (): void => {
        client.destroy();
        up.destroy();
        this.sockets.delete(client);
        this.sockets.delete(up);
      };
      client.on("error", drop).on("close", drop);
      up.on("error", drop).on("close", drop);
      client.pipe(up);
      up.pipe(client);
    });
  }

  async listen(): Promise<string> {
    this.server.listen(0, "127.0.0.1");
    await once(this.server, "listening");
    this.port = (this.server.address() as AddressInfo).port;
    return `http://127.0.0.1:${this.port}`;
  }

  retarget(port: number): void {
    this.target.port = port;
  }

  cut(): void {
    this.blocked = true;
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
  }

  heal(): void {
    this.blocked = false;
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

export interface HarnessOptions {
  dir: string;
  hosts: number;
  token: string;
  heartbeatMs?: number;
  leaseMs?: number;
  graceMs?: number;
  /** Memory each host offers to VMs (admission control). */
  capacityMiB?: number;
  /** Extra environment for every process. */
  env?: Record<string, string>;
}

export interface HarnessHost {
  name: string;
  url: string;
  port: number;
  proc: ChildProcess;
  relay: Relay;
  agent: AgentProcess;
}

/** Polls every 100 ms; a request that fails (the process is still starting) counts as "not yet". */
async function waitUntil(cond: () => Promise<boolean>, ms: number, what: string): Promise<void> {
  await waitFor(() => cond().catch(() => false), ms, what, 100);
}

export class ClusterHarness {
  readonly hosts = new Map<string, HarnessHost>();
  manager: ChildProcess | undefined;
  managerPort = 0;
  readonly managerRelays: Relay[] = [];
  client!: ManagerClient;

  constructor(readonly opts: HarnessOptions) {}

  get managerUrl(): string {
    return `http://127.0.0.1:${this.managerPort}`;
  }

  get datastore(): string {
    return join(this.opts.dir, "datastore");
  }

  private async spawnLogged(name: string, args: string[]): Promise<ChildProcess> {
    await mkdir(join(this.opts.dir, "logs"), { recursive: true });
    return spawnHopDetached(args, join(this.opts.dir, "logs", `${name}.log`), {
      ...process.env,
      HOP_LOG_LEVEL: process.env["HOP_LOG_LEVEL"] === "silent" ? "info" : (process.env["HOP_LOG_LEVEL"] ?? "info"),
      ...this.opts.env,
    });
  }

  /** Starts (or restarts, on the same database and port) the manager and waits for it to answer. */
  async startManager(): Promise<void> {
    if (this.managerPort === 0) this.managerPort = await freePort();
    const o = this.opts;
    this.manager = await this.spawnLogged("manager", [
      "manager",
      "serve",
      "--listen",
      `127.0.0.1:${this.managerPort}`,
      "--db",
      join(o.dir, "manager.db"),
      "--token",
      o.token,
      ...(o.heartbeatMs !== undefined ? ["--heartbeat-ms", String(o.heartbeatMs)] : []),
      ...(o.leaseMs !== undefined ? ["--lease-ms", String(o.leaseMs)] : []),
      ...(o.graceMs !== undefined ? ["--grace-ms", String(o.graceMs)] : []),
    ]);
    this.client = new ManagerClient(this.managerUrl, o.token);
    await waitUntil(async () => (await this.client.health()).ok, 30_000, "the manager to answer");
  }

  /** kill -9 of the manager process. */
  async killManager(): Promise<void> {
    const p = this.manager;
    if (p?.pid === undefined || p.exitCode !== null) return;
    process.kill(p.pid, "SIGKILL");
    await once(p, "exit");
  }

  /** Starts host agent `name` (again, on the same port, after a kill) joined to the manager through its relay. */
  async startHost(name: string): Promise<HarnessHost> {
    const existing = this.hosts.get(name);
    let relay = existing?.relay;
    if (relay === undefined) {
      relay = new Relay({ host: "127.0.0.1", port: this.managerPort });
      await relay.listen();
    }
    const agent = await startAgent({
      name,
      datastore: this.datastore,
      token: this.opts.token,
      listen: `127.0.0.1:${existing?.port ?? 0}`,
      manager: `http://127.0.0.1:${relay.port}`,
      detached: true,
      inheritStderr: false,
      logLevel: "info",
      ...(this.opts.capacityMiB !== undefined ? { capacityMiB: this.opts.capacityMiB } : {}),
    });
    const h: HarnessHost = { name, url: agent.url, port: Number(new URL(agent.url).port), proc: agent.proc, relay, agent };
    this.hosts.set(name, h);
    return h;
  }

  async start(): Promise<void> {
    await this.startManager();
    for (let i = 1; i <= this.opts.hosts; i++) await this.startHost(`h${i}`);
    await this.waitHosts([...this.hosts.keys()], "connected");
  }

  async waitHosts(names: string[], connection: "connected" | "down", ms = 60_000): Promise<void> {
    await waitUntil(
      async () => {
        const hosts = await this.client.hosts();
        return names.every((n) => hosts.some((h) => h.name === n && h.connection === connection));
      },
      ms,
      `hosts ${names.join(", ")} to be ${connection}`,
    );
  }

  /** kill -9 of a host agent and every VM process it started (its process group). */
  async killHost(name: string): Promise<void> {
    const h = this.hosts.get(name);
    if (h?.proc.pid === undefined || h.proc.exitCode !== null) return;
    process.kill(-h.proc.pid, "SIGKILL");
    await once(h.proc, "exit");
  }

  /** The last lines of a process' log (for failure messages). */
  async logTail(name: string, lines = 30): Promise<string> {
    const host = this.hosts.get(name);
    const text = host !== undefined ? host.agent.stderr() : await readFile(join(this.opts.dir, "logs", `${name}.log`), "utf8").catch(() => "");
    return text.split("\n").slice(-lines).join("\n");
  }

  /** Stops everything: SIGTERM, then SIGKILL of the process groups after a grace period. */
  async stop(): Promise<void> {
    const procs = [...[...this.hosts.values()].map((h) => h.proc), ...(this.manager !== undefined ? [this.manager] : [])].filter((p) => p.pid !== undefined && p.exitCode === null && p.signalCode === null);
    for (const p of procs) p.kill("SIGTERM");
    await Promise.race([Promise.all(procs.map((p) => once(p, "exit"))), sleep(15_000)]);
    for (const p of procs) {
      if (p.exitCode === null && p.signalCode === null && p.pid !== undefined) {
        try {
          process.kill(-p.pid, "SIGKILL");
        } catch {
          // already gone
        }
      }
    }
    for (const h of this.hosts.values()) await h.relay.close();
  }
}
