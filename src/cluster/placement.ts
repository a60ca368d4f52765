/**
 * Initial placement of VMs on hosts (creation, HA restarts, evacuation for maintenance).
 * Pure: takes a snapshot of the hosts and answers where VMs should go; nothing is changed.
 *
 * Admission control: a VM is only placed on a host whose unreserved memory holds all of the
 * VM's configured memory; memory is never overcommitted.
 */
import type { HostCapacity, HostConnection, HostMaintenance } from "./types.js";

/** What placement needs to know about a host. */
export interface PlacementHost {
  name: string;
  connection: HostConnection;
  maintenance: HostMaintenance;
  capacity: HostCapacity;
  /** Memory already reserved by the VMs placed on the host. */
  reservedMiB: number;
  /** CPU used on the host, percent of one core. */
  cpuPct: number;
}

/** Why a VM could not be placed. */
export type PlacementErrorCode = "NO_HOST_AVAILABLE" | "INSUFFICIENT_CAPACITY";

export type PlacementResult = { ok: true; host: string } | { ok: false; code: PlacementErrorCode; message: string };

export interface PlacementPlan {
  /** Where each placed VM goes, in the order they were placed (largest memory first). */
  assignments: { vm: string; host: string }[];
  /** VMs that fit nowhere, with the reason. */
  unplaced: { vm: string; code: PlacementErrorCode; message: string }[];
}

/** A host may receive VMs: connected, not in (or entering) maintenance, not excluded. */
function isEligible(h: PlacementHost, exclude: readonly string[]): boolean {
  return h.connection === "connected" && h.maintenance === "none" && !exclude.includes(h.name);
}

function freeMiB(h: PlacementHost): number {
  return h.capacity.memoryMiB - h.reservedMiB;
}

/** CPU use as a share of the host's cores (0 for a host that reports no cores). */
function cpuShare(h: PlacementHost): number {
  return h.capacity.cpus > 0 ? h.cpuPct / (100 * h.capacity.cpus) : 0;
}

/** Fraction of the host's memory still free after placing `needMiB` on it. */
function freeFractionAfter(h: PlacementHost, needMiB: number): number {
  return h.capacity.memoryMiB > 0 ? (freeMiB(h) - needMiB) / h.capacity.memoryMiB : 0;
}

/**
 * Choose the host for a VM needing `need.memoryMiB`.
 *
 * Among eligible hosts with enough unreserved memory, the one left with the largest free-memory
 * fraction wins; ties go to the lower CPU share (cpuPct / cpus), then to the lower name.
 *
 * @returns the host, or NO_HOST_AVAILABLE when no host is eligible at all, or
 *   INSUFFICIENT_CAPACITY when eligible hosts exist but none has enough free memory.
 */
export function chooseHost(
  hosts: readonly PlacementHost[],
  need: { memoryMiB: number; exclude?: readonly string[] },
): PlacementResult {
  const eligible = hosts.filter((h) => isEligible(h, need.exclude ?? []));
  if (eligible.length === 0) {
    return { ok: false, code: "NO_HOST_AVAILABLE", message: "no connected host outside maintenance is available" };
  }
  let best: PlacementHost | undefined;
  for (const h of eligible) {
    if (freeMiB(h) < need.memoryMiB) continue;
    if (best === undefined || better(h, best, need.memoryMiB)) best = h;
  }
  if (best !== undefined) return { ok: true, host: best.name };

  let most = eligible[0] as PlacementHost;
  for (const h of eligible) {
    if (freeMiB(h) > freeMiB(most) || (freeMiB(h) === freeMiB(most) && h.name < most.name)) most = h;
  }
  return {
    ok: false,
    code: "INSUFFICIENT_CAPACITY",
    message: `no connected host has ${need.memoryMiB} MiB free (most free: ${Math.max(0, freeMiB(most))} MiB on ${most.name})`,
  };
}

/** Whether host `a` is a better target than `b` for `needMiB` (both fit). */
function better(a: PlacementHost, b: PlacementHost, needMiB: number): boolean {
  const fa = freeFractionAfter(a, needMiB);
  const fb = freeFractionAfter(b, needMiB);
  if (fa !== fb) return fa > fb;
  const ca = cpuShare(a);
  const cb = cpuShare(b);
  if (ca !== cb) return ca < cb;
  return a.name < b.name;
}

/**
 * Place several VMs at once (host evacuation, HA restart of a failed host's VMs).
 *
 * VMs are placed largest memory first (ties by name), each with {@link chooseHost} on the hosts
 * as updated by the placements before it, so the plan never overcommits a host.
 */
export function planPlacements(
  hosts: readonly PlacementHost[],
  vms: readonly { name: string; memoryMiB: number }[],
  opts: { exclude?: readonly string[] } = {},
): PlacementPlan {
  const state = hosts.map((h) => ({ ...h }));
  const order = [...vms].sort((a, b) => b.memoryMiB - a.memoryMiB || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const plan: PlacementPlan = { assignments: [], unplaced: [] };
  for (const vm of order) {
    const r = chooseHost(state, { memoryMiB: vm.memoryMiB, exclude: opts.exclude ?? [] });
    if (!r.ok) {
      plan.unplaced.push({ vm: vm.name, code: r.code, message: r.message });
      continue;
    }
    plan.assignments.push({ vm: vm.name, host: r.host });
    const target = state.find((h) => h.name === r.host);
    if (target !== undefined) target.reservedMiB += vm.memoryMiB;
  }
  return plan;
}
