/** What a migration reports while it runs and when it ends (shared by the VM process, the host agent, the API and the CLI). */

export type MigrationMode = "live" | "quick" | "cold";

export interface LiveMigrationOptions {
  /** The switchover pause to aim for (ms). Default 50. */
  downtimeTargetMs?: number;
  /** Limit on page traffic, bytes per second (0 or absent: unlimited). */
  bandwidthBytesPerSec?: number;
  /** LZ4 for pages that are neither zero nor a small delta (costs CPU; pays on slow links). Default false. */
  lz4?: boolean;
  /** Test mode: hash guest RAM at the pause on both sides (adds the hashing time to the pause). */
  verifyRam?: boolean;
  maxRounds?: number;
}

export interface RoundReport {
  round: number;
  pages: number;
  bytes: number;
  durationMs: number;
  /** Page bytes per second actually sent in this round. */
  bandwidthBytesPerSec: number;
  /** Bytes dirtied per second while the round ran. */
  dirtyBytesPerSec: number;
  /** Pages found dirty after the round (what the next round, or the stop-and-copy, has to send). */
  remainingPages: number;
  expectedDowntimeMs: number;
  /** Percent of time the guest was stunned during the round. */
  throttle: number;
  decision: string;
}

export interface MigrationProgress {
  migrationId: string;
  vm: string;
  mode: MigrationMode;
  phase: "prepare" | "precopy" | "stop-and-copy" | "switchover" | "done" | "failed";
  round?: RoundReport;
  message?: string;
}

/**
 * Where the pause went (ms). Only the phases the mode has are non-zero. Live: the phases add
 * up in the order stop, state save, final copy, transfer, resume; the target's restore runs
 * during the final copy and is not part of the sum.
 */
export interface DowntimeBreakdown {
  stopMs: number;
  finalCopyMs: number;
  stateSaveMs: number;
  transferMs: number;
  restoreMs: number;
  resumeMs: number;
}

export interface MigrationReport {
  migrationId: string;
  vm: string;
  mode: MigrationMode;
  from: string;
  to: string;
  ok: true;
  totalMs: number;
  /** Source pause to the target's acknowledgement that the guest runs, measured on the source host. */
  downtimeMs: number;
  downtime: DowntimeBreakdown;
  bytes: number;
  pages: number;
  rounds: RoundReport[];
  stopReason?: string;
  /** Live: how dirty pages were found: the engine's dirty log, or comparing all of RAM against a shadow copy. */
  dirtyTracking?: "log" | "compare";
  /** Live: which DELTA encoder ran: in wasm on the engine's memory, or the JS fallback. */
  deltaEncoder?: "wasm" | "js";
  /** Live: where round 0 (zero check, shadow copy, RAW entries) ran: in wasm on the engine's memory, or the JS fallback. */
  firstPass?: "wasm" | "js";
  throttleMax: number;
  stunnedMs: number;
  /** Test mode: sha256 of guest RAM at the pause on the source and after the restore on the target. */
  ramSha256?: { source: string; target: string };
}

/** What the target's VM process measured of the switchover. */
export interface TargetSwitchover {
  restoreMs: number;
  resumeMs: number;
  stateBytes: number;
  ramSha256?: string;
}
