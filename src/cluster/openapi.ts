/**
 * The OpenAPI 3.1 document of the manager API, built from the routes the server actually
 * registered (so it cannot drift from them) and the zod schemas that validate their input.
 */
import type { FastifyInstance } from "fastify";
import { z } from "zod";
import { execRequestSchema, shutdownRequestSchema } from "../host/api.js";
import { clusterMigrateSchema, clusterVmCreateSchema, drsQuerySchema, eventQuerySchema, maintenanceRequestSchema, startRequestSchema, taskQuerySchema, vmCreateSchema } from "./api-schemas.js";
import { heartbeatRequestSchema, joinRequestSchema } from "./protocol.js";

interface RouteDoc {
  summary: string;
  body?: z.ZodType;
  query?: z.ZodObject;
  /** Status of a success answer (default 200). */
  status?: number;
  websocket?: boolean;
}

/** Every route of the manager, "METHOD /path" with fastify's :params. */
export const ROUTE_DOCS: Record<string, RouteDoc> = {
  "GET /v1/health": { summary: "Manager health: id, version, counts" },
  "GET /v1/openapi.json": { summary: "This document" },
  "POST /v1/hosts/join": { summary: "A host agent joins (host agents only); answers its lease", body: joinRequestSchema },
  "POST /v1/hosts/:name/heartbeat": { summary: "A host agent's heartbeat with its load and VMs; renews its lease (410: join again)", body: heartbeatRequestSchema },
  "GET /v1/hosts": { summary: "Hosts with connection, maintenance, capacity, load and VMs" },
  "GET /v1/hosts/:name": { summary: "One host" },
  "POST /v1/hosts/:name/maintenance": { summary: "Enter (evacuating every running VM live) or exit maintenance mode; a task", body: maintenanceRequestSchema, status: 202 },
  "DELETE /v1/hosts/:name": { summary: "Remove a host that is down and owns no VMs", status: 204 },
  "GET /v1/vms": { summary: "Every VM with its host, generation, power intent and state" },
  "POST /v1/vms": { summary: "Create a VM (placed by the manager unless host is given; start: true starts it)", body: z.intersection(vmCreateSchema, clusterVmCreateSchema), status: 201 },
  "GET /v1/vms/:name": { summary: "One VM" },
  "POST /v1/vms/:name/start": { summary: "Power on (on its host, or on `host`, moving it there powered off)", body: startRequestSchema },
  "POST /v1/vms/:name/shutdown": { summary: "Graceful shutdown through the guest agent, then hard power-off", body: shutdownRequestSchema },
  "POST /v1/vms/:name/poweroff": { summary: "Hard power-off" },
  "POST /v1/vms/:name/pause": { summary: "Pause the guest" },
  "POST /v1/vms/:name/resume": { summary: "Resume a paused guest" },
  "POST /v1/vms/:name/suspend": { summary: "Suspend to the datastore" },
  "DELETE /v1/vms/:name": { summary: "Destroy the VM (force: even if running; deleteDisk: also its data disk)", status: 204 },
  "POST /v1/vms/:name/exec": { summary: "Run a command in the guest through its agent", body: execRequestSchema },
  "GET /v1/vms/:name/console": { summary: "Serial console (WebSocket); follows the VM across migrations", websocket: true },
  "POST /v1/vms/:name/migrate": { summary: "Live, quick or cold migration as a task; waits for the report unless wait: false", body: clusterMigrateSchema },
  "GET /v1/tasks": { summary: "Tasks, newest first", query: taskQuerySchema },
  "GET /v1/tasks/:id": { summary: "One task" },
  "POST /v1/tasks/:id/cancel": { summary: "Cancel a queued or running task" },
  "GET /v1/events": { summary: "Events (JSON, filtered); upgraded to a WebSocket, the live stream", query: eventQuerySchema },
  "GET /v1/networks": { summary: "Virtual networks" },
  "GET /v1/datastores": { summary: "Datastores and the hosts that share them" },
  "GET /v1/drs/recommendations": { summary: "Balancing recommendations (dry run: nothing moves)", query: drsQuerySchema },
  "POST /v1/drs/apply": { summary: "Apply the balancing recommendations (live migrations, a task)", query: drsQuerySchema, status: 202 },
};

/** Collects the routes as fastify registers them. Install before any route. */
export function catalogRoutes(app: FastifyInstance): { method: string; url: string }[] {
  const routes: { method: string; url: string }[] = [];
  app.addHook("onRoute", (r) => {
    for (const method of Array.isArray(r.method) ? r.method : [r.method]) {
      if (method === "HEAD") continue;
      routes.push({ method, url: r.url });
    }
  });
  return routes;
}

function jsonSchema(s: z.ZodType): unknown {
  return z.toJSONSchema(s, { io: "input", unrepresentable: "any" });
}

const errorBody = {
  type: "object",
  required: ["error"],
  properties: { error: { type: "object", required: ["code", "message"], properties: { code: { type: "string" }, message: { type: "string" } } } },
};

export function openApiDocument(routes: readonly { method: string; url: string }[], version: string): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const r of routes) {
    const key = `${r.method} ${r.url}`;
    const doc = ROUTE_DOCS[key] ?? { summary: "(undocumented)" };
    const path = r.url.replace(/:([A-Za-z]+)/g, "{$1}");
    const params = [...r.url.matchAll(/:([A-Za-z]+)/g)].map((m) => ({ name: m[1], in: "path", required: true, schema: { type: "string" } }));
    const query = doc.query === undefined ? [] : Object.keys(doc.query.shape).filter((k) => k !== "token").map((k) => ({ name: k, in: "query", required: false, schema: { type: "string" } }));
    const status = String(doc.status ?? 200);
    paths[path] ??= {};
    paths[path][r.method.toLowerCase()] = {
      summary: doc.summary,
      ...(params.length + query.length > 0 ? { parameters: [...params, ...query] } : {}),
      ...(doc.body !== undefined ? { requestBody: { required: true, content: { "application/json": { schema: jsonSchema(doc.body) } } } } : {}),
      responses: {
        [doc.websocket === true ? "101" : status]: { description: doc.websocket === true ? "WebSocket upgrade" : "success" },
        "4XX": { description: "bad input, unknown object or conflict", content: { "application/json": { schema: errorBody } } },
        "5XX": { description: "failure of a step (the error code names it)", content: { "application/json": { schema: errorBody } } },
      },
    };
  }
  return {
    openapi: "3.1.0",
    info: { title: "Hopvisor manager API", version },
    components: { securitySchemes: { bearer: { type: "http", scheme: "bearer" } } },
    security: [{ bearer: [] }],
    paths,
  };
}
