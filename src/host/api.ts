/**
 * The host agent's HTTP + WebSocket API (all under /v1). Every route delegates to a
 * `Supervisor`; this file only validates input, maps errors to JSON and streams events and
 * consoles. Request and response types are exported for the typed client.
 */
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { BadRequestError, formatIssues, parseInput } from "../common/validation.js";
import type { RawData, WebSocket } from "ws";
import { z } from "zod";
import { HopError, errorMessage } from "../common/errors.js";
import { vmCreateSchema, vmNameSchema } from "../vm/config.js";
import type { ExecResult, HostEvent, MigrationService, Supervisor, VmInfo } from "./types.js";
import type { IncomingOutcome, IncomingTicket } from "./migration.js";
import type { MigrationReport } from "../migration/index.js";
import type { NetworkDetail, NetworkInfo, NetworkService, NetworksResponse } from "./network.js";
import { adoptRequestSchema } from "../cluster/protocol.js";

/** Largest request body (and WebSocket message) the API accepts. */
export const BODY_LIMIT = 1024 * 1024;
/** Largest command `exec` accepts, in bytes (UTF-8). */
export const MAX_EXEC_COMMAND_BYTES = 64 * 1024;
export const MAX_EXEC_TIMEOUT_MS = 600_000;
/** A WebSocket client that falls this far behind is disconnected rather than buffered forever. */
export const WS_MAX_BUFFERED = 8 * 1024 * 1024;

/** WebSocket close codes used by the API (4000-4999 are application codes). */
export const WS_CLOSE = {
  /** Normal end (e.g. the VM was destroyed). */
  normal: 1000,
  /** The host agent is shutting down. */
  goingAway: 1001,
  /** The client did not keep up with the stream. */
  tooSlow: 1013,
  /** Bad request (invalid VM name). */
  badRequest: 4400,
  /** No such VM. */
  notFound: 4404,
  /** Unexpected server error. */
  internal: 4500,
} as const;

// ---- request schemas and API types ----

export const execRequestSchema = z
  .object({
    command: z
      .string()
      .min(1, "command must not be empty")
      .refine((c) => Buffer.byteLength(c, "utf8") <= MAX_EXEC_COMMAND_BYTES, `command must be at most ${MAX_EXEC_COMMAND_BYTES} bytes`),
    timeoutMs: z
      .number()
      .int("timeoutMs must be a whole number")
      .min(1, "timeoutMs must be at least 1")
      .max(MAX_EXEC_TIMEOUT_MS, `timeoutMs must be at most ${MAX_EXEC_TIMEOUT_MS}`)
      .optional(),
  })
  .strict();
export type ExecRequest = z.infer<typeof execRequestSchema>;

export const shutdownRequestSchema = z
  .object({
    timeoutMs: z
      .number()
      .int("timeoutMs must be a whole number")
      .min(1, "timeoutMs must be at least 1")
      .max(MAX_EXEC_TIMEOUT_MS, `timeoutMs must be at most ${MAX_EXEC_TIMEOUT_MS}`)
      .optional(),
  })
  .strict();
export type ShutdownRequest = z.infer<typeof shutdownRequestSchema>;

/** Bodies of the power actions without parameters: absent, or an empty object. */
const emptyBodySchema = z.object({}).strict();

const queryBool = z
  .enum(["true", "false", "1", "0", ""], { message: "must be true or false" })
  .transform((v) => v === "true" || v === "1" || v === "");

export const destroyQuerySchema = z
  .object({
    force: queryBool.optional(),
    deleteDisk: queryBool.optional(),
  })
  .strict();
export interface DestroyOptions {
  force?: boolean;
  deleteDisk?: boolean;
}

export interface HealthResponse {
  host: string;
  vms: number;
  uptimeS: number;
}

export interface VmListResponse {
  vms: VmInfo[];
}

/** The body of every error response. */
export interface ApiErrorBody {
  error: { code: string; message: string };
}

export type { ExecResult, HostEvent, VmInfo };

// ---- validation and errors ----

export { BadRequestError, formatIssues, parseInput };

export function parseVmName(value: unknown): string {
  return parseInput(vmNameSchema, value, "name");
}

function isZodError(err: unknown): err is { issues: z.core.$ZodIssue[] } {
  return err instanceof z.ZodError || (err instanceof Error && err.name === "ZodError" && Array.isArray((err as { issues?: unknown }).issues));
}

/** Maps any thrown value to an HTTP status and the JSON error body. */
export function toErrorResponse(err: unknown): { status: number; body: ApiErrorBody } {
  const make = (status: number, code: string, message: string): { status: number; body: ApiErrorBody } => ({ status, body: { error: { code, message } } });
  if (err instanceof HopError) return make(err.status, err.code, err.message);
  if (isZodError(err)) return make(400, "BAD_REQUEST", formatIssues(err.issues, "body"));
  const fe = err as Partial<FastifyError> | undefined;
  switch (fe?.code) {
    case "FST_ERR_CTP_BODY_TOO_LARGE":
      return make(413, "PAYLOAD_TOO_LARGE", `request body is larger than ${BODY_LIMIT} bytes`);
    case "FST_ERR_CTP_INVALID_MEDIA_TYPE":
      return make(415, "UNSUPPORTED_MEDIA_TYPE", "request body must be application/json");
    case "FST_ERR_CTP_INVALID_JSON_BODY":
    case "FST_ERR_CTP_EMPTY_JSON_BODY":
      return make(400, "BAD_REQUEST", "request body is not valid JSON");
    default:
      break;
  }
  if (typeof fe?.statusCode === "number" && fe.statusCode >= 400 && fe.statusCode < 500) {
    return make(fe.statusCode, "BAD_REQUEST", errorMessage(err));
  }
  return make(500, "INTERNAL", `internal error: ${errorMessage(err)}`);
}

/** A WebSocket close reason must fit in 123 bytes. */
export function closeReason(text: string): string {
  if (Buffer.byteLength(text, "utf8") <= 123) return text;
  let out = text;
  while (out !== "" && Buffer.byteLength(`${out}…`, "utf8") > 123) out = out.slice(0, -1);
  return `${out}…`;
}

export function rawToBuffer(data: RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

/** Sends on a WebSocket unless the peer is gone or hopelessly behind (then it is closed). */
export function sendTo(socket: WebSocket, data: Buffer | string, binary: boolean): void {
  if (socket.readyState !== socket.OPEN) return;
  if (socket.bufferedAmount > WS_MAX_BUFFERED) {
    socket.close(WS_CLOSE.tooSlow, "client is not reading fast enough");
    return;
  }
  socket.send(data, { binary });
}

// ---- routes ----

interface NameParams {
  name: string;
}

/**
 * JSON-only bodies (other types are 415; an empty body is "no body"; anything unparsable is a
 * 400 with a fixed message), errors as ApiErrorBody and a JSON 404, on any of our API servers.
 */
export function installJsonHandling(app: FastifyInstance): void {
  app.removeAllContentTypeParsers();
  app.addContentTypeParser("application/json", { parseAs: "string", bodyLimit: BODY_LIMIT }, (_req, body, done) => {
    const text = typeof body === "string" ? body : body.toString("utf8");
    if (text.trim() === "") {
      done(null, undefined);
      return;
    }
    try {
      done(null, JSON.parse(text));
    } catch {
      done(new BadRequestError("request body is not valid JSON"), undefined);
    }
  });

  app.setErrorHandler((err: unknown, req: FastifyRequest, reply: FastifyReply) => {
    const { status, body } = toErrorResponse(err);
    if (status >= 500) req.log.error({ err, code: body.error.code, url: req.routeOptions.url }, "request failed");
    else req.log.debug({ code: body.error.code, status, reason: body.error.message }, "request rejected");
    return reply.code(status).type("application/json").send(body);
  });

  app.setNotFoundHandler((req, reply) => {
    const path = req.url.split("?")[0] ?? req.url;
    return reply.code(404).send({ error: { code: "NOT_FOUND", message: `no route ${req.method} ${path}` } } satisfies ApiErrorBody);
  });
}

/**
 * Installs the /v1 routes, the JSON body parser and the JSON error / not-found handlers on
 * `app` (which must already have @fastify/websocket registered).
 */
export function registerApi(app: FastifyInstance, supervisor: Supervisor, migrations?: MigrationService, networks?: NetworkService): void {
  const startedAt = Date.now();
  installJsonHandling(app);

  app.get("/v1/health", async (): Promise<HealthResponse> => ({
    host: supervisor.hostName,
    vms: supervisor.list().length,
    uptimeS: Math.floor((Date.now() - startedAt) / 1000),
  }));

  app.get("/v1/vms", async (): Promise<VmListResponse> => ({ vms: supervisor.list() }));

  app.post("/v1/vms", async (req, reply) => {
    const body = parseInput(vmCreateSchema, req.body, "body");
    const info = await supervisor.create(body);
    return reply.code(201).send(info);
  });

  app.get<{ Params: NameParams }>("/v1/vms/:name", async (req): Promise<VmInfo> => supervisor.get(parseVmName(req.params.name)));

  const power = (action: "start" | "pause" | "resume" | "poweroff"): void => {
    app.post<{ Params: NameParams }>(`/v1/vms/:name/${action}`, async (req): Promise<VmInfo> => {
      const name = parseVmName(req.params.name);
      parseInput(emptyBodySchema, req.body ?? {}, "body");
      return supervisor[action](name);
    });
  };
  power("start");
  power("pause");
  power("resume");
  power("poweroff");

  app.post<{ Params: NameParams }>("/v1/vms/:name/shutdown", async (req): Promise<VmInfo> => {
    const name = parseVmName(req.params.name);
    const body = parseInput(shutdownRequestSchema, req.body ?? {}, "body");
    return supervisor.shutdown(name, body.timeoutMs !== undefined ? { timeoutMs: body.timeoutMs } : {});
  });

  app.delete<{ Params: NameParams }>("/v1/vms/:name", async (req, reply) => {
    const name = parseVmName(req.params.name);
    const q = parseInput(destroyQuerySchema, req.query ?? {}, "query");
    await supervisor.destroy(name, {
      ...(q.force !== undefined ? { force: q.force } : {}),
      ...(q.deleteDisk !== undefined ? { deleteDisk: q.deleteDisk } : {}),
    });
    return reply.code(204).send();
  });

  app.post<{ Params: NameParams }>("/v1/vms/:name/exec", async (req): Promise<ExecResult> => {
    const name = parseVmName(req.params.name);
    const body = parseInput(execRequestSchema, req.body, "body");
    return supervisor.exec(name, body.command, body.timeoutMs !== undefined ? { timeoutMs: body.timeoutMs } : {});
  });

  // Host events as JSON text messages. Anything the client sends is ignored.
  if (migrations !== undefined) registerMigrationRoutes(app, migrations);
  if (networks !== undefined) registerNetworkRoutes(app, networks);

  app.get("/v1/events", { websocket: true }, (socket, req) => {
    req.log.debug("events client connected");
    const off = supervisor.onEvent((ev) => sendTo(socket, JSON.stringify(ev), false));
    socket.on("close", () => {
      off();
      req.log.debug("events client disconnected");
    });
  });

  // Serial console: scrollback, then live output, as binary frames. Binary or text frames from
  // the client are written to the console. Errors (e.g. writing to a stopped VM) come back as a
  // text frame holding an ApiErrorBody; the connection stays open.
  app.get<{ Params: NameParams }>("/v1/vms/:name/console", { websocket: true }, (socket, req) => {
    const parsed = vmNameSchema.safeParse(req.params.name);
    if (!parsed.success) {
      socket.close(WS_CLOSE.badRequest, closeReason(formatIssues(parsed.error.issues, "name")));
      return;
    }
    const name = parsed.data;
    let stream;
    try {
      stream = supervisor.console(name);
    } catch (err) {
      const { status, body } = toErrorResponse(err);
      if (status >= 500) req.log.error({ err, vm: name }, "console attach failed");
      socket.close(status === 404 ? WS_CLOSE.notFound : status === 400 ? WS_CLOSE.badRequest : WS_CLOSE.internal, closeReason(body.error.message));
      return;
    }
    req.log.debug({ vm: name }, "console client attached");
    const scrollback = stream.scrollback();
    if (scrollback.length > 0) sendTo(socket, scrollback, true);
    const unsubscribe = stream.subscribe((chunk) => sendTo(socket, chunk, true));
    const offEvents = supervisor.onEvent((ev) => {
      if (ev.type === "vm.destroyed" && ev.vm === name) socket.close(WS_CLOSE.normal, closeReason(`VM '${name}' was destroyed`));
    });
    socket.on("message", (data: RawData) => {
      try {
        supervisor.consoleWrite(name, rawToBuffer(data));
      } catch (err) {
        const { status, body } = toErrorResponse(err);
        if (status >= 500) req.log.error({ err, vm: name }, "console write failed");
        sendTo(socket, JSON.stringify(body), false);
      }
    });
    socket.on("close", () => {
      unsubscribe();
      offEvents();
      req.log.debug({ vm: name }, "console client detached");
    });
  });
}

const networkNameParam = z.string().regex(/^[a-z0-9][a-z0-9_-]{0,31}$/, "must be a network name");

/** Virtual networks of the host: list (with the VTEP and counters), create (validated by the service), one in detail. */
function registerNetworkRoutes(app: FastifyInstance, n: NetworkService): void {
  app.get("/v1/networks", async (): Promise<NetworksResponse> => n.listNetworks());
  app.post("/v1/networks", async (req, reply) => {
    const info: NetworkInfo = await n.createNetwork(req.body ?? {});
    return reply.code(201).send(info);
  });
  app.get<{ Params: NameParams }>("/v1/networks/:name", async (req): Promise<NetworkDetail> => n.getNetwork(parseInput(networkNameParam, req.params.name, "name")));
}

const commitSchema = z.object({ statePath: z.string().min(1).max(1024) }).strict();
const migrationIdParam = z.string().regex(/^[A-Za-z0-9._-]{1,128}$/, "must be a migration id");

/** Suspend, migrate (source side) and the host-to-host migration calls (target side). */
function registerMigrationRoutes(app: FastifyInstance, m: MigrationService): void {
  app.post<{ Params: NameParams }>("/v1/vms/:name/suspend", async (req): Promise<VmInfo> => {
    const name = parseVmName(req.params.name);
    parseInput(emptyBodySchema, req.body ?? {}, "body");
    return m.suspend(name);
  });
  // Validated in full by the service (migrateRequestSchema).
  app.post<{ Params: NameParams }>("/v1/vms/:name/migrate", async (req): Promise<MigrationReport> => m.migrate(parseVmName(req.params.name), (req.body ?? {}) as never));
  app.get("/v1/migrations", async () => ({ migrations: m.migrationsInProgress() }));
  app.post<{ Params: { id: string } }>("/v1/migrations/:id/cancel", async (req) => m.cancelMigration(parseInput(migrationIdParam, req.params.id, "id")));
  app.post("/v1/migrations/incoming", async (req): Promise<IncomingTicket> => m.prepareIncoming((req.body ?? {}) as never));
  app.post<{ Params: { id: string } }>("/v1/migrations/incoming/:id/commit", async (req): Promise<IncomingTicket> =>
    m.commitIncoming(parseInput(migrationIdParam, req.params.id, "id"), parseInput(commitSchema, req.body ?? {}, "body")),
  );
  app.delete<{ Params: { id: string } }>("/v1/migrations/incoming/:id", async (req, reply) => {
    await m.abortIncoming(parseInput(migrationIdParam, req.params.id, "id"));
    return reply.code(204).send();
  });
  app.post<{ Params: { id: string } }>("/v1/migrations/incoming/:id/fence", async (req): Promise<{ outcome: IncomingOutcome }> => ({
    outcome: await m.fenceIncoming(parseInput(migrationIdParam, req.params.id, "id")),
  }));
  // HA restart (the cluster manager): take over a VM of a failed host from the shared datastore.
  if (m.adopt !== undefined) {
    app.post<{ Params: NameParams }>("/v1/vms/:name/adopt", async (req): Promise<VmInfo> => {
      const name = parseVmName(req.params.name);
      const body = parseInput(adoptRequestSchema, req.body ?? {}, "body");
      return m.adopt!(name, body);
    });
  }
}
