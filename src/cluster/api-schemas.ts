/** zod schemas of the manager API's request bodies and queries (validation and the OpenAPI document). */
import { z } from "zod";
import { vmCreateSchema } from "../vm/config.js";
import { migrationModeSchema } from "../host/migration.js";
import { hostNameSchema } from "./protocol.js";

const queryInt = (min: number, max: number) =>
  z
    .string()
    .regex(/^\d+$/, "must be a whole number")
    .transform(Number)
    .refine((n) => n >= min && n <= max, `must be between ${min} and ${max}`);

/** POST /v1/vms: the host agent's create body plus placement. */
export const clusterVmCreateSchema = z.object({
  host: hostNameSchema.optional(),
  start: z.boolean().optional(),
});
export { vmCreateSchema };

export const startRequestSchema = z.object({ host: hostNameSchema.optional() }).strict();

export const clusterMigrateSchema = z
  .object({
    to: hostNameSchema.optional(),
    mode: migrationModeSchema.optional(),
    downtimeTargetMs: z.number().int().min(1).max(60_000).optional(),
    bandwidth: z.number().int().min(1024 * 1024).optional(),
    lz4: z.boolean().optional(),
    wait: z.boolean().optional(),
  })
  .strict();

export const maintenanceRequestSchema = z.object({ enter: z.boolean(), wait: z.boolean().optional() }).strict();

const taskStates = ["queued", "running", "succeeded", "failed", "cancelled"] as const;

export const taskQuerySchema = z
  .object({
    state: z
      .string()
      .transform((s) => s.split(","))
      .pipe(z.array(z.enum(taskStates)))
      .optional(),
    kind: z.string().max(64).optional(),
    vm: z.string().max(64).optional(),
    host: z.string().max(64).optional(),
    parentId: z.string().max(64).optional(),
    limit: queryInt(1, 1000).optional(),
  })
  .strict();

export const eventQuerySchema = z
  .object({
    afterId: queryInt(0, Number.MAX_SAFE_INTEGER).optional(),
    type: z.string().max(64).optional(),
    typePrefix: z.string().max(64).optional(),
    vm: z.string().max(64).optional(),
    host: z.string().max(64).optional(),
    taskId: z.string().max(64).optional(),
    severity: z.enum(["info", "warning", "error"]).optional(),
    limit: queryInt(1, 1000).optional(),
    /** WebSocket upgrades carry the token in the query (browsers cannot set headers). */
    token: z.string().optional(),
  })
  .strict();

export const drsQuerySchema = z.object({ threshold: z.string().regex(/^0?\.\d+$|^1$/, "must be a number between 0 and 1").transform(Number).optional() }).strict();

