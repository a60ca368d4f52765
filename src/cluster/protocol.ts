/**
 * Host agent <-> manager protocol: a host joins, then heartbeats; each answer renews the host's
 * lease. Both directions use the cluster token (Bearer), like every other API.
 *
 *   POST /v1/hosts/join                 JoinRequest      -> JoinResponse
 *   POST /v1/hosts/:name/heartbeat      HeartbeatRequest -> HeartbeatResponse
 *        (410 HOST_NOT_JOINED: the manager does not know the host any more; join again)
 *
 * The lease (fencing): the host counts its lease from the moment it *sent* the request that the
 * manager answered, so it always expires on the host before the manager's grace period ends
 * (the manager counts from when it received the request, and grace > lease). A host whose lease
 * expires powers its VMs off itself; only after the grace period does the manager restart them
 * elsewhere, bumping each VM's generation on the shared datastore. A host that comes back
 * releases (forgets, without touching their files) every VM the manager lists in `release`, and
 * never starts a VM whose datastore config names another owner or a newer generation.
 *
 * Manager -> host: the manager drives the host agent's own API (HostClient), plus
 *   POST /v1/vms/:name/adopt  AdoptRequest -> VmInfo
 * which takes over a VM of a failed host from the shared datastore (HA restart).
 */
import { z } from "zod";
import { vmNameSchema } from "../vm/config.js";

export const hostNameSchema = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/, "host name must be 1-63 characters of letters, digits, '.', '_' and '-'");

/** One VM as a host reports it. */
export const vmReportSchema = z
  .object({
    name: vmNameSchema,
    uuid: z.string().min(1).max(128),
    state: z.string().min(1).max(32),
    generation: z.number().int().min(0),
    memoryMiB: z.number().int().min(1),
    /** CPU of the VM process since the last report, percent of one core. */
    cpuPct: z.number().min(0).optional(),
    rssMiB: z.number().min(0).optional(),
    /** The VM's datastore config (as in vm.json). */
    config: z.record(z.string(), z.unknown()),
  })
  .strict();
export type VmReport = z.infer<typeof vmReportSchema>;

export const joinRequestSchema = z
  .object({
    name: hostNameSchema,
    /** The host agent's API URL, as the manager should reach it. */
    url: z.url(),
    version: z.string().min(1).max(64),
    datastoreId: z.string().min(1).max(200),
    capacity: z.object({ cpus: z.number().int().min(1).max(4096), memoryMiB: z.number().int().min(64) }).strict(),
    migrationAddress: z.object({ host: z.string().min(1), port: z.number().int().min(1).max(65535) }).strict().optional(),
    vtep: z.string().min(1).max(100).optional(),
    vms: z.array(vmReportSchema).max(10_000),
  })
  .strict();
export type JoinRequest = z.infer<typeof joinRequestSchema>;

export const heartbeatRequestSchema = z
  .object({
    /** Increases by one per heartbeat of this host agent process. */
    seq: z.number().int().min(0),
    load: z
      .object({
        cpuPct: z.number().min(0),
        memUsedMiB: z.number().min(0),
        rssMiB: z.number().min(0),
        vmCount: z.number().int().min(0),
      })
      .strict(),
    vms: z.array(vmReportSchema).max(10_000),
  })
  .strict();
export type HeartbeatRequest = z.infer<typeof heartbeatRequestSchema>;

export interface LeaseGrant {
  /** How long the lease lasts, counted by the host from when it sent the request. */
  leaseMs: number;
  /** How often the host should heartbeat. */
  heartbeatMs: number;
  /** VMs the host must forget: the manager knows them owned by another host or a newer generation. */
  release: string[];
}

export interface JoinResponse extends LeaseGrant {
  /** The manager's id (changes only with a new database). */
  managerId: string;
}

export type HeartbeatResponse = LeaseGrant;

/** Body of POST /v1/vms/:name/adopt on a host agent. */
export const adoptRequestSchema = z
  .object({
    /** The owner the VM's datastore config must still name. */
    fromHost: hostNameSchema,
    /** The generation it must still carry; the adopted VM gets generation + 1. */
    generation: z.number().int().min(0),
    /** Start it after adopting (HA restart). Default true. */
    start: z.boolean().default(true),
  })
  .strict();
export type AdoptRequest = z.input<typeof adoptRequestSchema>;

/** Defaults, milliseconds. grace must exceed lease + heartbeat so a host always fences itself first. */
export const DEFAULT_HEARTBEAT_MS = 1_000;
export const DEFAULT_LEASE_MS = 5_000;
export const DEFAULT_GRACE_MS = 8_000;
