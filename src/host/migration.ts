/**
 * Host-agent side of migrations: the request schemas, how a source host reaches a target host
 * (MigrationPeer), and the target's migration listener.
 *
 * The phases follow libvirt's peer-to-peer migration: the source asks the target to *prepare*
 * (the target validates the VM's config, reserves its name and starts a paused VM process that
 * expects exactly this migration), then the source's VM process connects to the target's
 * migration port and streams; the target's VM process resumes the guest and acknowledges.
 * A connection is handed to the VM process that expects its migration id, before any
 * authentication: the VM process runs the whole receiver state machine (token proof included).
 */
import { createServer, type AddressInfo, type Server, type Socket } from "node:net";
import { z } from "zod";
import type { Logger } from "../common/log.js";
import { Command, decodeMessage, errorFrame, FrameDecoder, MAX_CONTROL_PAYLOAD_BYTES, MigrationProtocolError, toMigrationError } from "../migration/index.js";
import type { VmConfig } from "../vm/config.js";
import { macSchema, memorySchema, vmNameSchema } from "../vm/config.js";
import { networkSpecSchema } from "./network.js";

export const migrationModeSchema = z.enum(["live", "quick", "cold"]);

/** Body of POST /v1/vms/:name/migrate. */
export const migrateRequestSchema = z
  .object({
    to: z.string().min(1).max(2048),
    mode: migrationModeSchema.default("live"),
    downtimeTargetMs: z.number().int().min(1).max(60_000).optional(),
    /** Bytes per second for page traffic. */
    bandwidth: z.number().int().min(1024 * 1024).optional(),
    lz4: z.boolean().optional(),
    verifyRam: z.boolean().optional(),
    maxRounds: z.number().int().min(1).max(1000).optional(),
  })
  .strict();
export type MigrateRequest = z.input<typeof migrateRequestSchema>;

const vmConfigSchema = z
  .object({
    name: vmNameSchema,
    uuid: z.string().min(1).max(128),
    memoryMiB: memorySchema,
    mac: macSchema,
    ip: z.string().optional(),
    gw: z.string().optional(),
    network: z.string().optional(),
    disk: z.object({ path: z.string().min(1), sizeMiB: z.number().int().min(1) }).optional(),
    boot: z.enum(["template", "cold"]),
    createdAt: z.string(),
    host: z.string().optional(),
    generation: z.number().int().min(0).optional(),
  })
  .strict();

/** Body of POST /v1/migrations/incoming: the source host asks this host to prepare. */
export const incomingRequestSchema = z
  .object({
    migrationId: z.string().regex(/^[A-Za-z0-9._-]{1,128}$/),
    mode: migrationModeSchema,
    source: z.string().min(1).max(200),
    config: vmConfigSchema,
    /** The source's datastore id: the VM's files must be on a datastore this host shares. */
    datastoreId: z.string().min(1).max(200),
    verifyRam: z.boolean().optional(),
    /** The definition of the VM's virtual network, for a target that does not carry it yet. */
    network: networkSpecSchema.optional(),
  })
  .strict();
export type IncomingRequest = z.input<typeof incomingRequestSchema>;

export interface IncomingTicket {
  host: string;
  /** Live: where the source's VM process connects. */
  address?: { host: string; port: number };
  /** Quick: what the restore took on the target. */
  restoreMs?: number;
  /** The target's VXLAN endpoint ("address:port"): where the source forwards the VM's frames after the switchover. */
  vtep?: string;
}

export type IncomingOutcome = "pending" | "resumed" | "resuming" | "aborted";

/** How a source host drives the target host of a migration (HTTP between host agents; see peer.ts). */
export interface MigrationPeer {
  readonly url: string;
  prepareIncoming(req: IncomingRequest): Promise<IncomingTicket>;
  /** Drop a prepared migration (its VM never runs). Idempotent. */
  abortIncoming(migrationId: string): Promise<void>;
  /** Quick migration, phase two: restore the saved state (relative to the shared datastore) and run. */
  commitIncoming(migrationId: string, statePath: string): Promise<IncomingTicket>;
  /** After an ambiguous end: "resumed" if the VM runs there; otherwise it is fenced and "aborted". */
  fenceIncoming(migrationId: string): Promise<IncomingOutcome>;
}

/** Resolves a `--to` argument (host name or URL) to a peer; throws a HopError when it cannot. */
export type MigratePeerResolver = (to: string) => MigrationPeer;

/** Reads the first frame (HELLO) of a new migration connection, then hands the paused socket on. */
export class MigrationListener {
  private server: Server | undefined;
  /** Connections that have not sent their HELLO yet (the others belong to VM processes). */
  private readonly pending = new Set<Socket>();

  constructor(
    private readonly route: (migrationId: string, socket: Socket, head: Buffer) => boolean,
    private readonly log: Logger,
  ) {}

  async listen(host: string, port: number): Promise<{ host: string; port: number }> {
    const server = createServer({ pauseOnConnect: true }, (socket) => this.accept(socket));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, host, () => {
        server.off("error", reject);
        resolve();
      });
    });
    const a = server.address() as AddressInfo;
    return { host: a.address, port: a.port };
  }

  private accept(socket: Socket): void {
    this.pending.add(socket);
    socket.once("close", () => this.pending.delete(socket));
    const decoder = new FrameDecoder({ maxPayload: MAX_CONTROL_PAYLOAD_BYTES });
    const chunks: Buffer[] = [];
    const refuse = (err: unknown): void => {
      const e = toMigrationError(err);
      this.log.warn({ remote: socket.remoteAddress, code: e.code, err: e.message }, "migration connection refused");
      socket.end(errorFrame(e));
      setTimeout(() => socket.destroy(), 1_000).unref();
    };
    const timer = setTimeout(() => refuse(new MigrationProtocolError("MIGRATION_UNEXPECTED_COMMAND", "no HELLO within 10 s")), 10_000);
    const onData = (chunk: Buffer): void => {
      chunks.push(chunk);
      let frames;
      try {
        frames = decoder.push(chunk);
      } catch (err) {
        cleanup();
        refuse(err);
        return;
      }
      const first = frames[0];
      if (first === undefined) return;
      cleanup();
      this.pending.delete(socket);
      socket.pause();
      try {
        if (first.command !== Command.Hello) throw new MigrationProtocolError("MIGRATION_UNEXPECTED_COMMAND", "a migration connection must begin with HELLO");
        const hello = decodeMessage(first);
        if (hello.cmd !== Command.Hello) throw new MigrationProtocolError("MIGRATION_UNEXPECTED_COMMAND", "a migration connection must begin with HELLO");
        if (!this.route(hello.migrationId, socket, Buffer.concat(chunks))) {
          throw new MigrationProtocolError("MIGRATION_AUTH_FAILED", `this host expects no migration ${hello.migrationId}`);
        }
      } catch (err) {
        refuse(err);
      }
    };
    const onError = (): void => cleanup();
    const cleanup = (): void => {
      clearTimeout(timer);
      socket.off("data", onData);
      socket.off("error", onError);
    };
    socket.on("data", onData);
    socket.on("error", onError);
    socket.resume();
  }

  /**
   * Stops listening and drops connections still waiting for their HELLO. Connections handed to
   * VM processes are theirs: not waited for (Node's server.close() would wait for them, and never
   * calls back once every process it handed sockets to has exited).
   */
  async close(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    if (s === undefined) return;
    s.close();
    for (const socket of this.pending) socket.destroy();
    this.pending.clear();
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
}

/** The VM's config as the target host will keep it. */
export function adoptedConfig(config: VmConfig, host: string): VmConfig {
  return { ...config, host, generation: (config.generation ?? 0) + 1 };
}
