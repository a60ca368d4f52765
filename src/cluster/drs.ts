/**
 * Load balancing across hosts, in the manner of VMware DRS. Pure: given a snapshot of the hosts
 * and their VMs, recommend live migrations that even out the load; nothing is moved here.
 *
 * A host's load score is the larger of its CPU share and its memory share (0..1, above 1 when
 * overloaded). The cluster's imbalance is the spread (max - min) of the scores of the eligible
 * hosts. Moves are chosen greedily, one at a time, each the one that lowers the imbalance most.
 */
import type { DrsMove, DrsRecommendations } from "./api-types.js";
import type { HostCapacity } from "./types.js";

/** What DRS needs to know about a host. */
export interface DrsHost {
  name: string;
  /** May send and receive VMs (connected, not in maintenance). Other hosts are left out entirely. */
  eligible: boolean;
  capacity: HostCapacity;
  /** Memory reserved by the VMs placed on the host. */
  reservedMiB: number;
  /** CPU used on the host, percent of one core (200 = two cores busy). */
  cpuPct: number;
}

/** What DRS needs to know about a VM. */
export interface DrsVm {
  name: string;
  host: string;
  memoryMiB: number;
  /** CPU of the VM, percent of one core. */
  cpuPct: number;
  /** May be live-migrated (running, not pinned, no task in progress). */
  movable: boolean;
}

/** Default spread of load scores DRS tolerates. */
export const DEFAULT_DRS_THRESHOLD = 0.2;
/** Default number of moves recommended at once. */
export const DEFAULT_DRS_MAX_MOVES = 4;
/** A move must lower the imbalance by at least this much to be worth a migration. */
const MIN_GAIN = 0.01;

type Load = { capacity: HostCapacity; reservedMiB: number; cpuPct: number };

function cpuShare(h: Load): number {
  return h.capacity.cpus > 0 ? h.cpuPct / (100 * h.capacity.cpus) : 0;
}

function memShare(h: Load): number {
  return h.capacity.memoryMiB > 0 ? h.reservedMiB / h.capacity.memoryMiB : 0;
}

/**
 * Load score of a host: max of the CPU share (cpuPct / (100 * cpus)) and the memory share
 * (reservedMiB / capacity.memoryMiB). 0 is idle, 1 is full; a dimension with no capacity counts 0.
 */
export function loadScore(h: Load): number {
  return Math.max(cpuShare(h), memShare(h));
}

/** max - min of the scores (0 with fewer than two). */
function spread(scores: readonly number[]): number {
  return scores.length < 2 ? 0 : Math.max(...scores) - Math.min(...scores);
}

const round3 = (x: number): number => Math.round(x * 1000) / 1000;
const pct = (x: number): string => `${Math.round(x * 100)}%`;
const byName = (a: { name: string }, b: { name: string }): number => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);

/**
 * Recommend live migrations that lower the imbalance of the eligible hosts.
 *
 * While the imbalance exceeds `threshold` and fewer than `maxMoves` moves were chosen: try every
 * movable VM on the most loaded host against every other eligible host with room for its memory,
 * and take the move leaving the smallest imbalance (ties by VM name, then host name). Stop when the
 * best move gains less than 0.01. A VM is moved at most once per recommendation. Scores in the
 * result are rounded to 3 decimals.
 */
export function recommendMoves(
  hosts: readonly DrsHost[],
  vms: readonly DrsVm[],
  opts: { threshold?: number; maxMoves?: number } = {},
): DrsRecommendations {
  const threshold = opts.threshold ?? DEFAULT_DRS_THRESHOLD;
  const maxMoves = Math.max(0, Math.floor(opts.maxMoves ?? DEFAULT_DRS_MAX_MOVES));
  const state = hosts
    .filter((h) => h.eligible)
    .map((h) => ({ name: h.name, capacity: h.capacity, reservedMiB: h.reservedMiB, cpuPct: h.cpuPct }))
    .sort(byName);
  const placed = vms.filter((v) => v.movable).map((v) => ({ ...v })).sort(byName);
  const moved = new Set<string>();
  const imbalanceOf = (): number => spread(state.map(loadScore));

  const initial = imbalanceOf();
  const moves: DrsMove[] = [];
  while (moves.length < maxMoves) {
    const before = imbalanceOf();
    if (before <= threshold || state.length < 2) break;
    // The most loaded host; `state` is sorted by name, so ties go to the lower name.
    const from = state.reduce((a, b) => (loadScore(b) > loadScore(a) ? b : a));

    let best: { vm: (typeof placed)[number]; to: (typeof state)[number]; after: number } | undefined;
    for (const vm of placed) {
      if (vm.host !== from.name || moved.has(vm.name)) continue;
      for (const to of state) {
        if (to === from || to.capacity.memoryMiB - to.reservedMiB < vm.memoryMiB) continue;
        const after = tryMove(from, to, vm, imbalanceOf);
        if (best === undefined || after < best.after) best = { vm, to, after };
      }
    }
    if (best === undefined || before - best.after < MIN_GAIN) break;

    const { vm, to, after } = best;
    const dominant = cpuShare(from) >= memShare(from) ? "cpu" : "memory";
    const reason = `${from.name} at ${pct(loadScore(from))} vs ${to.name} at ${pct(loadScore(to))} (${dominant})`;
    apply(from, to, vm);
    vm.host = to.name;
    moved.add(vm.name);
    moves.push({
      vm: vm.name,
      from: from.name,
      to: to.name,
      imbalanceBefore: round3(before),
      imbalanceAfter: round3(after),
      reason,
    });
  }
  return { imbalance: round3(initial), threshold, moves };
}

/** Move a VM's load from one host to another (never below zero on the source). */
function apply(from: Load, to: Load, vm: DrsVm): void {
  from.reservedMiB = Math.max(0, from.reservedMiB - vm.memoryMiB);
  from.cpuPct = Math.max(0, from.cpuPct - vm.cpuPct);
  to.reservedMiB += vm.memoryMiB;
  to.cpuPct += vm.cpuPct;
}

/** Imbalance after moving `vm` from `from` to `to`; the hosts are left as they were. */
function tryMove(from: Load, to: Load, vm: DrsVm, imbalanceOf: () => number): number {
  const saved = [from.reservedMiB, from.cpuPct, to.reservedMiB, to.cpuPct] as const;
  apply(from, to, vm);
  const after = imbalanceOf();
  [from.reservedMiB, from.cpuPct, to.reservedMiB, to.cpuPct] = saved;
  return after;
}
