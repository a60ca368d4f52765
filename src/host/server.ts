import type { AddressInfo } from "node:net";
import websocket from "@fastify/websocket";
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from "fastify";
import type { WebSocket } from "ws";
import { HopError } from "../common/errors.js";
import { createLogger, type Logger } from "../common/log.js";
import { BODY_LIMIT, WS_CLOSE, registerApi } from "./api.js";
import { authHook, redactUrl } from "./auth.js";
import type { MigrationService, Supervisor } from "./types.js";
import type { NetworkService } from "./network.js";

export interface HostServerOptions {
  supervisor: Supervisor;
  /** Suspend and migration routes (absent: not served). */
  migrations?: MigrationService;
  /** Virtual network routes (absent: not served). */
  networks?: NetworkService;
  /** Bearer token every request must carry. */
  token: string;
  log?: Logger;
}

/** How long open WebSockets get to close cleanly when the server stops. */
const WS_CLOSE_GRACE_MS = 1_000;
/** How long in-flight HTTP requests get to finish when the server stops. */
const REQUEST_GRACE_MS = 5_000;

/** Closes every WebSocket (1001 going away), waits briefly, then cuts the stragglers. */
async function closeWebSockets(this: FastifyInstance): Promise<void> {
  const wss = this.websocketServer;
  const clients = [...wss.clients];
  for (const c of clients) c.close(WS_CLOSE.goingAway, "host agent is shutting down");
  const closed = (c: WebSocket): Promise<void> =>
    c.readyState === c.CLOSED ? Promise.resolve() : new Promise((resolve) => c.once("close", () => resolve()));
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    Promise.all(clients.map(closed)),
    new Promise<void>((resolve) => {
      timer = setTimeout(resolve, WS_CLOSE_GRACE_MS);
    }),
  ]);
  clearTimeout(timer);
  for (const c of wss.clients) c.terminate();
  await new Promise<void>((resolve) => wss.close(() => resolve()));
}

/**
 * A fastify instance with our API conventions: bearer token, JSON errors, WebSockets, clean close.
 * `publicRoutes`: route patterns (as registered, e.g. "/" or "/assets/*") served to GET/HEAD without
 * a token — the web client's login page and static assets only; an API route (/v1/...) is refused.
 */
export async function createApiApp(opts: { token: string; log: FastifyBaseLogger; role: string; register: (app: FastifyInstance) => void; publicRoutes?: readonly string[] }): Promise<FastifyInstance> {
  const publicRoutes = new Set(opts.publicRoutes ?? []);
  for (const r of publicRoutes) {
    // Neither an API route nor a pattern whose first segment could match one ("/*", "/:x").
    if (!r.startsWith("/") || /^\/(v\d+(\/|$)|[*:])/.test(r)) throw new HopError("BAD_PUBLIC_ROUTE", `'${r}' cannot be served without a token (API routes always need one)`);
  }
  const app = Fastify({
    loggerInstance: opts.log,
    // fastify's own per-request info lines are off; the onResponse hook below logs at debug.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: BODY_LIMIT,
    // Requests that arrive while closing get our JSON error (below) rather than fastify's.
    return503OnClosing: false,
  });
  await app.register(websocket, { options: { maxPayload: BODY_LIMIT }, preClose: closeWebSockets });
  let closing = false;
  app.addHook("preClose", async () => {
    closing = true;
  });
  app.addHook("onRequest", async () => {
    if (closing) throw new HopError("HOST_SHUTTING_DOWN", `the ${opts.role} is shutting down`, { status: 503 });
  });
  const auth = authHook(opts.token);
  app.addHook("onRequest", async (req, reply) => {
    // Matched by the route pattern, not the raw URL, so no path trick reaches an API route unchecked.
    const route = req.routeOptions.url;
    if (route !== undefined && publicRoutes.has(route) && (req.method === "GET" || req.method === "HEAD")) return;
    await auth(req, reply);
  });
  app.addHook("onResponse", async (req, reply) => {
    req.log.debug({ method: req.method, url: redactUrl(req.url), status: reply.statusCode, ms: Math.round(reply.elapsedTime) }, "request");
  });
  opts.register(app);
  await app.ready();
  return app;
}

/** A ready (not yet listening) fastify instance serving the host agent API for `supervisor`. */
export async function createHostServer(opts: HostServerOptions): Promise<FastifyInstance> {
  // Typed as fastify's base logger so the instance is a plain FastifyInstance.
  const log: FastifyBaseLogger = opts.log ?? createLogger("api", { host: opts.supervisor.hostName });
  return createApiApp({ token: opts.token, log, role: "host agent", register: (app) => registerApi(app, opts.supervisor, opts.migrations, opts.networks) });
}

/** Parses "HOST:PORT", ":PORT" (all interfaces) or "[V6]:PORT". */
export function parseListen(listen: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(listen.trim());
  const port = Number(m?.[3]);
  if (m === null || !Number.isInteger(port) || port > 65535) {
    throw new HopError("BAD_LISTEN_ADDRESS", `listen address '${listen}' must be HOST:PORT or :PORT (e.g. 127.0.0.1:7401)`, { status: 400 });
  }
  const host = m[1] ?? m[2] ?? "";
  return { host: host === "" ? "0.0.0.0" : host, port };
}

/** The URL clients use for a bound address (a wildcard address is reached through loopback). */
function urlFor(addr: AddressInfo): string {
  let host = addr.address;
  if (host === "0.0.0.0") host = "127.0.0.1";
  else if (host === "::") host = "::1";
  return `http://${host.includes(":") ? `[${host}]` : host}:${addr.port}`;
}

export interface HostServerHandle {
  url: string;
  app: FastifyInstance;
  /** Closes WebSockets and the HTTP server. The caller closes the supervisor. */
  close(): Promise<void>;
}

/** Creates the API server and listens on `listen`. */
export async function serveHost(opts: HostServerOptions & { listen: string }): Promise<HostServerHandle> {
  return listenApp(await createHostServer(opts), opts.listen);
}

/** Listens on `listen` ("HOST:PORT"); close() gives in-flight requests a grace period, then cuts them. */
export async function listenApp(app: FastifyInstance, listen: string): Promise<HostServerHandle> {
  const { host, port } = parseListen(listen);
  try {
    await app.listen({ host, port });
  } catch (err) {
    await app.close();
    const code = (err as NodeJS.ErrnoException).code;
    throw new HopError("LISTEN_FAILED", `cannot listen on ${listen}: ${code ?? (err as Error).message}`, { cause: err });
  }
  const addr = app.server.address();
  const url = addr !== null && typeof addr === "object" ? urlFor(addr) : `http://${host}:${port}`;
  let closing: Promise<void> | undefined;
  const close = async (): Promise<void> => {
    // In-flight requests (an exec may run for minutes) get a grace period, then are cut.
    const timer = setTimeout(() => app.server.closeAllConnections(), REQUEST_GRACE_MS);
    try {
      await app.close();
    } finally {
      clearTimeout(timer);
    }
  };
  return { url, app, close: () => (closing ??= close()) };
}
