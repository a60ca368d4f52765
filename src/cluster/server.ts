/**
 * The manager's HTTP + WebSocket API (v1; routes listed in api-types.ts and served as an
 * OpenAPI document at /v1/openapi.json). Every route delegates to the Manager; input is
 * validated with the schemas in api-schemas.ts; errors are the same JSON bodies as on hosts.
 */
import type { FastifyInstance } from "fastify";
import type { RawData, WebSocket } from "ws";
import { errorMessage } from "../common/errors.js";
import { parseInput } from "../common/validation.js";
import { closeReason, destroyQuerySchema, execRequestSchema, installJsonHandling, parseVmName, rawToBuffer, sendTo, shutdownRequestSchema, toErrorResponse, WS_CLOSE } from "../host/api.js";
import { waitOpen } from "../host/client.js";
import { clusterMigrateSchema, drsQuerySchema, eventQuerySchema, maintenanceRequestSchema, startRequestSchema, taskQuerySchema } from "./api-schemas.js";
import type { ClusterMigrateResult } from "./api-types.js";
import { hostNameSchema } from "./protocol.js";
import type { Manager } from "./manager.js";
import { applyDrs, drsRecommendations, enterMaintenance, exitMaintenance, type DrsSettings } from "./maintenance.js";
import { catalogRoutes, openApiDocument } from "./openapi.js";
import type { TaskFilter } from "./store/index.js";

interface NameParams {
  name: string;
}

function hostParam(v: unknown): string {
  return parseInput(hostNameSchema, v, "name");
}

/** Drops keys whose value is undefined (exactOptionalPropertyTypes). */
function defined<T extends Record<string, unknown>>(o: T): { [K in keyof T]: Exclude<T[K], undefined> } {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as { [K in keyof T]: Exclude<T[K], undefined> };
}

export function registerManagerApi(app: FastifyInstance, m: Manager, drs: DrsSettings): void {
  const routes = catalogRoutes(app);
  installJsonHandling(app);

  app.get("/v1/health", async () => m.health());
  app.get("/v1/openapi.json", async () => openApiDocument(routes, m.opts.version));

  // ---- hosts ----
  app.post("/v1/hosts/join", async (req) => m.join(req.body));
  app.post<{ Params: NameParams }>("/v1/hosts/:name/heartbeat", async (req) => m.heartbeat(hostParam(req.params.name), req.body));
  app.get("/v1/hosts", async () => ({ hosts: await m.listHosts() }));
  app.get<{ Params: NameParams }>("/v1/hosts/:name", async (req) => m.getHost(hostParam(req.params.name)));
  app.post<{ Params: NameParams }>("/v1/hosts/:name/maintenance", async (req, reply) => {
    const name = hostParam(req.params.name);
    const body = parseInput(maintenanceRequestSchema, req.body, "body");
    if (!body.enter) return exitMaintenance(m, name);
    const task = await enterMaintenance(m, name, body.wait === true);
    return reply.code(body.wait === true ? 200 : 202).send(task);
  });
  app.delete<{ Params: NameParams }>("/v1/hosts/:name", async (req, reply) => {
    await m.removeHost(hostParam(req.params.name));
    return reply.code(204).send();
  });

  // ---- VMs ----
  app.get("/v1/vms", async () => ({ vms: await m.listVms() }));
  app.post("/v1/vms", async (req, reply) => reply.code(201).send(await m.createVm(req.body)));
  app.get<{ Params: NameParams }>("/v1/vms/:name", async (req) => m.getVm(parseVmName(req.params.name)));
  app.post<{ Params: NameParams }>("/v1/vms/:name/start", async (req) => {
    const body = parseInput(startRequestSchema, req.body ?? {}, "body");
    return m.startVm(parseVmName(req.params.name), defined({ host: body.host }));
  });
  app.post<{ Params: NameParams }>("/v1/vms/:name/shutdown", async (req) => {
    const body = parseInput(shutdownRequestSchema, req.body ?? {}, "body");
    return m.shutdownVm(parseVmName(req.params.name), body.timeoutMs);
  });
  app.post<{ Params: NameParams }>("/v1/vms/:name/poweroff", async (req) => m.poweroffVm(parseVmName(req.params.name)));
  app.post<{ Params: NameParams }>("/v1/vms/:name/pause", async (req) => m.pauseVm(parseVmName(req.params.name)));
  app.post<{ Params: NameParams }>("/v1/vms/:name/resume", async (req) => m.resumeVm(parseVmName(req.params.name)));
  app.post<{ Params: NameParams }>("/v1/vms/:name/suspend", async (req) => m.suspendVm(parseVmName(req.params.name)));
  app.delete<{ Params: NameParams }>("/v1/vms/:name", async (req, reply) => {
    const q = parseInput(destroyQuerySchema, req.query ?? {}, "query");
    await m.destroyVm(parseVmName(req.params.name), defined({ force: q.force, deleteDisk: q.deleteDisk }));
    return reply.code(204).send();
  });
  app.post<{ Params: NameParams }>("/v1/vms/:name/exec", async (req) => {
    const body = parseInput(execRequestSchema, req.body, "body");
    return m.execVm(parseVmName(req.params.name), body.command, body.timeoutMs);
  });
  app.post<{ Params: NameParams }>("/v1/vms/:name/migrate", async (req, reply) => {
    const body = parseInput(clusterMigrateSchema, req.body ?? {}, "body");
    const r = await m.migrateVm(parseVmName(req.params.name), defined(body));
    if (r.report === undefined) return reply.code(202).send(r.task);
    return { taskId: r.task.id, report: r.report } satisfies ClusterMigrateResult;
  });
  app.get<{ Params: NameParams }>("/v1/vms/:name/console", { websocket: true }, (socket, req) => {
    proxyConsole(m, socket, req.params.name, req.log);
  });

  // ---- tasks and events ----
  app.get("/v1/tasks", async (req) => {
    const q = parseInput(taskQuerySchema, req.query ?? {}, "query");
    return { tasks: await m.listTasks(defined(q) as TaskFilter) };
  });
  app.get<{ Params: { id: string } }>("/v1/tasks/:id", async (req) => m.getTask(req.params.id));
  app.post<{ Params: { id: string } }>("/v1/tasks/:id/cancel", async (req) => m.tasks.cancel(req.params.id));

  app.route({
    method: "GET",
    url: "/v1/events",
    handler: async (req) => {
      const q = parseInput(eventQuerySchema, req.query ?? {}, "query");
      const { token: _token, ...filter } = q;
      return { events: await m.listEvents(defined(filter)) };
    },
    wsHandler: (socket, req) => {
      req.log.debug("events client connected");
      const off = m.onEvent((ev) => sendTo(socket, JSON.stringify(ev), false));
      socket.on("close", () => off());
    },
  });

  // ---- inventory extras ----
  app.get("/v1/networks", async () => ({ networks: await m.store.listNetworks() }));
  app.get("/v1/datastores", async () => ({ datastores: await m.store.listDatastores() }));
  app.get("/v1/drs/recommendations", async (req) => {
    const q = parseInput(drsQuerySchema, req.query ?? {}, "query");
    return drsRecommendations(m, q.threshold ?? drs.threshold);
  });
  app.post("/v1/drs/apply", async (req, reply) => {
    const q = parseInput(drsQuerySchema, req.query ?? {}, "query");
    return reply.code(202).send(await applyDrs(m, q.threshold ?? drs.threshold));
  });
}

/**
 * The serial console of a VM through the manager: a WebSocket to the owning host's console,
 * re-attached to the new owner when the VM migrates, so the operator's terminal stays open.
 */
function proxyConsole(m: Manager, socket: WebSocket, rawName: string, log: { debug: (o: object, msg: string) => void }): void {
  let name: string;
  try {
    name = parseVmName(rawName);
  } catch (err) {
    socket.close(WS_CLOSE.badRequest, closeReason(errorMessage(err)));
    return;
  }
  let upstream: WebSocket | undefined;
  let upstreamHost: string | undefined;
  let attaching = false;
  let retry: NodeJS.Timeout | undefined;
  let closed = false;
  const pending: Buffer[] = [];
  const schedule = (ms: number): void => {
    if (retry !== undefined || closed) return;
    retry = setTimeout(() => {
      retry = undefined;
      void attach();
    }, ms);
    retry.unref();
  };

  /** Attaches to the console on the VM's current host, unless already there. One attach at a time. */
  const attach = async (): Promise<void> => {
    if (closed || attaching) return;
    attaching = true;
    try {
      let row;
      try {
        row = await m.getVm(name);
      } catch (err) {
        const { status, body } = toErrorResponse(err);
        socket.close(status === 404 ? WS_CLOSE.notFound : WS_CLOSE.internal, closeReason(body.error.message));
        return;
      }
      if (upstream !== undefined && upstreamHost === row.host) return;
      const client = m.registry.client(row.host);
      if (client === undefined) {
        schedule(1_000);
        return;
      }
      const old = upstream;
      upstream = undefined;
      old?.terminate();
      const ws = client.console(name);
      upstream = ws;
      upstreamHost = row.host;
      ws.on("message", (data: RawData, isBinary: boolean) => sendTo(socket, isBinary ? rawToBuffer(data) : rawToBuffer(data).toString("utf8"), isBinary));
      ws.on("error", () => undefined);
      ws.on("close", () => {
        if (upstream !== ws) return;
        // The VM left that host (migration) or the host went away: follow the VM.
        log.debug({ vm: name, from: upstreamHost }, "console upstream closed; re-attaching");
        upstream = undefined;
        upstreamHost = undefined;
        schedule(300);
      });
      try {
        await waitOpen(ws);
        for (const b of pending.splice(0)) ws.send(b);
      } catch {
        // The close handler above retries.
      }
    } finally {
      attaching = false;
    }
  };

  // Re-attach promptly when the VM moves.
  const off = m.onEvent((ev) => {
    if (ev.vm !== name) return;
    if (ev.type === "vm.migrated" || ev.type === "ha.restarted" || ev.type === "vm.moved" || ev.type === "vm.adopted") {
      void attach();
      schedule(500);
    }
    if (ev.type === "vm.destroyed") socket.close(WS_CLOSE.normal, closeReason(`VM '${name}' was destroyed`));
  });
  socket.on("message", (data: RawData) => {
    const b = rawToBuffer(data);
    if (upstream !== undefined && upstream.readyState === upstream.OPEN) upstream.send(b);
    else if (pending.length < 64) pending.push(b);
  });
  socket.on("close", () => {
    closed = true;
    off();
    if (retry !== undefined) clearTimeout(retry);
    upstream?.terminate();
  });
  void attach();
}
