import { z } from "zod";

/** Memory limits: v86 places the initrd at 64 MiB, so a guest needs more than that. */
export const MIN_MEMORY_MIB = 96;
export const MAX_MEMORY_MIB = 2048;

export const vmNameSchema = z
  .string()
  .regex(/^[a-z0-9][a-z0-9-]{0,62}$/, "name must be 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit");

export const macSchema = z.string().regex(/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/, "mac must look like 52:54:00:12:34:56 (lower case)");

export const ipv4CidrSchema = z
  .string()
  .regex(/^(\d{1,3}\.){3}\d{1,3}\/\d{1,2}$/, "ip must be an IPv4 address with a prefix, like 10.10.0.5/24");

export const ipv4Schema = z.string().regex(/^(\d{1,3}\.){3}\d{1,3}$/, "must be an IPv4 address");

export const memorySchema = z
  .number()
  .int("memoryMiB must be a whole number")
  .min(MIN_MEMORY_MIB, `memoryMiB must be at least ${MIN_MEMORY_MIB}`)
  .max(MAX_MEMORY_MIB, `memoryMiB must be at most ${MAX_MEMORY_MIB}`)
  .refine((v) => v % 4 === 0, "memoryMiB must be a multiple of 4");

export const diskSpecSchema = z.object({
  /** Image file, relative to the host's datastore (or absolute inside it). */
  path: z.string().min(1),
  sizeMiB: z.number().int().min(4).max(65536),
});

/** What a user asks for when creating a VM. */
export const vmCreateSchema = z
  .object({
    name: vmNameSchema,
    memoryMiB: memorySchema.default(128),
    mac: macSchema.optional(),
    /**
     * Without `network`: a static address with prefix. With it: the address to ask the network's
     * address pool for ("10.10.0.5" or with the network's prefix); absent, the pool picks one.
     */
    ip: z.string().regex(/^(\d{1,3}\.){3}\d{1,3}(\/\d{1,2})?$/, "ip must be an IPv4 address with a prefix, like 10.10.0.5/24").optional(),
    gw: ipv4Schema.optional(),
    /** The virtual network the NIC is a port of (its address comes from the network's pool). */
    network: z.string().regex(/^[a-z0-9][a-z0-9_-]{0,31}$/, "network must be a network name").optional(),
    /** Size of a data disk to create on the datastore (MiB); absent: no data disk. */
    diskMiB: z.number().int().min(4).max(65536).optional(),
    /** Start from the cached template state (fast) or boot the kernel (slow). */
    boot: z.enum(["template", "cold"]).default("template"),
  })
  .strict()
  .superRefine((v, ctx) => {
    if (v.ip !== undefined && v.network === undefined && !ipv4CidrSchema.safeParse(v.ip).success) {
      ctx.addIssue({ code: "custom", path: ["ip"], message: "ip must be an IPv4 address with a prefix, like 10.10.0.5/24" });
    }
  });
export type VmCreateRequest = z.input<typeof vmCreateSchema>;

/** The persistent definition of a VM, as stored on the datastore. */
export interface VmConfig {
  name: string;
  uuid: string;
  memoryMiB: number;
  mac: string;
  ip?: string;
  gw?: string;
  /** The virtual network of the NIC (absent: the NIC is connected to nothing). ip/gw then come from the network's address pool. */
  network?: string;
  disk?: { path: string; sizeMiB: number };
  boot: "template" | "cold";
  createdAt: string;
  /** The host that owns (runs) the VM; a shared datastore holds VMs of several hosts. */
  host?: string;
  /** Bumped on every change of owner, so a stale owner can be recognised. */
  generation?: number;
}

/** A locally administered, unicast MAC derived from random bytes (52:54:00 is QEMU's prefix; we use 02:68:6f = "ho"). */
export function randomMac(random: (n: number) => Buffer): string {
  const b = random(3);
  return ["02", "68", "6f", ...[...b].map((x) => x.toString(16).padStart(2, "0"))].join(":");
}
