/**
 * The pre-copy convergence decision, as a pure function of what the source measured after a
 * round (in the spirit of Xen's rounds, vMotion's switchover goal and "stun during page send",
 * and QEMU's auto-converge):
 *
 *   1. converged: expected downtime (remaining dirty bytes / bandwidth + fixed switchover
 *      overhead) <= target                                              -> stop-and-copy
 *   2. out of budget: rounds done >= maxRounds, or sent + remaining > maxTotalFactor x RAM
 *                                                                       -> stop-and-copy
 *   3. not converging: the guest dirties faster than the link sends, or the remaining set did
 *      not shrink by 10% in each of the last two rounds -> raise the throttle one step
 *      (20, 40, 60, 80, 95 % of time stunned), after each step had a round to take effect;
 *      at the top step, two more rounds without shrinking         -> stop-and-copy (no-progress)
 *   4. otherwise                                                       -> another round
 *
 * The throttle never goes down during a migration, and no round or throttle is ever returned
 * once maxRounds rounds are done.
 */

export const THROTTLE_STEPS: readonly number[] = [0, 20, 40, 60, 80, 95];
export const MAX_THROTTLE = 95;

export const POLICY_DEFAULTS = {
  maxRounds: 30,
  maxTotalFactor: 3,
  /** A round "shrinks" the remaining set when it leaves less than this fraction of the previous one. */
  shrinkFactor: 0.9,
} as const;

export interface PolicyInput {
  /** Rounds completed so far (round 0, the full copy, counts). */
  roundsDone: number;
  /** Page bytes sent in all rounds so far. */
  bytesSentTotal: number;
  ramBytes: number;
  lastRound: {
    bytesSent: number;
    durationMs: number;
    /** Bytes dirtied while the round ran (they make up the next round). */
    dirtyBytes: number;
  };
  /** Measured link throughput; 0 or less: derived from lastRound. */
  bandwidthBytesPerMs: number;
  /** Measured guest dirty rate; 0 or less: derived from lastRound. */
  dirtyRateBytesPerMs: number;
  /** Bytes that a stop-and-copy now would have to send. */
  remainingDirtyBytes: number;
  /** Remaining dirty bytes at the end of earlier rounds, oldest first (the current value excluded). */
  remainingHistory?: readonly number[];
  downtimeTargetMs: number;
  /** Fixed cost of the switchover beyond sending pages: save state, send it, restore, resume (ms). */
  switchoverOverheadMs?: number;
  maxRounds?: number;
  maxTotalFactor?: number;
  /** Current throttle: percent of time the guest is stunned (one of THROTTLE_STEPS). */
  throttleLevel: number;
  /** Rounds completed since the throttle level last changed (default: as many as are done). */
  roundsAtThrottleLevel?: number;
}

export type StopReason = "converged" | "max-rounds" | "max-bytes" | "no-progress";
export type ThrottleReason = "dirty-rate-exceeds-bandwidth" | "not-shrinking";

export type PolicyDecision =
  | { action: "round"; expectedDowntimeMs: number }
  | { action: "throttle"; level: number; reason: ThrottleReason; expectedDowntimeMs: number }
  | { action: "stop-and-copy"; reason: StopReason; expectedDowntimeMs: number };

function finiteNonNegative(name: string, v: number): void {
  if (!Number.isFinite(v) || v < 0) throw new RangeError(`policy input ${name} must be a finite number >= 0, got ${v}`);
}

/** The next throttle step strictly above `level`, or undefined at the top. */
export function nextThrottleStep(level: number): number | undefined {
  return THROTTLE_STEPS.find((s) => s > level);
}

export function decideNextStep(input: PolicyInput): PolicyDecision {
  for (const key of ["roundsDone", "bytesSentTotal", "ramBytes", "remainingDirtyBytes", "downtimeTargetMs", "throttleLevel"] as const) {
    finiteNonNegative(key, input[key]);
  }
  finiteNonNegative("lastRound.bytesSent", input.lastRound.bytesSent);
  finiteNonNegative("lastRound.durationMs", input.lastRound.durationMs);
  finiteNonNegative("lastRound.dirtyBytes", input.lastRound.dirtyBytes);
  const maxRounds = input.maxRounds ?? POLICY_DEFAULTS.maxRounds;
  const maxTotalFactor = input.maxTotalFactor ?? POLICY_DEFAULTS.maxTotalFactor;
  const overhead = input.switchoverOverheadMs ?? 0;
  const roundDuration = Math.max(input.lastRound.durationMs, 1e-3);

  const bandwidth = input.bandwidthBytesPerMs > 0 ? input.bandwidthBytesPerMs : input.lastRound.bytesSent / roundDuration;
  const dirtyRate = input.dirtyRateBytesPerMs > 0 ? input.dirtyRateBytesPerMs : input.lastRound.dirtyBytes / roundDuration;
  const remaining = input.remainingDirtyBytes;
  const expectedDowntimeMs = remaining === 0 ? overhead : bandwidth > 0 ? remaining / bandwidth + overhead : Number.POSITIVE_INFINITY;

  const stop = (reason: StopReason): PolicyDecision => ({ action: "stop-and-copy", reason, expectedDowntimeMs });

  if (input.roundsDone >= 1 && expectedDowntimeMs <= input.downtimeTargetMs) return stop("converged");
  if (input.roundsDone >= maxRounds) return stop("max-rounds");
  if (input.roundsDone >= 1 && input.bytesSentTotal + remaining > maxTotalFactor * input.ramBytes) return stop("max-bytes");
  if (input.roundsDone < 1) return { action: "round", expectedDowntimeMs };

  const history = input.remainingHistory ?? [];
  const h1 = history[history.length - 1];
  const h2 = history[history.length - 2];
  const shrink = POLICY_DEFAULTS.shrinkFactor;
  const notShrinking = h1 !== undefined && h2 !== undefined && remaining > shrink * h1 && h1 > shrink * h2;
  const rateExceeds = bandwidth > 0 && dirtyRate >= bandwidth;
  const roundsAtLevel = input.roundsAtThrottleLevel ?? input.roundsDone;

  if (rateExceeds || notShrinking) {
    const next = nextThrottleStep(input.throttleLevel);
    if (next !== undefined) {
      // Give each step a round to show its effect before raising it again.
      if (roundsAtLevel >= 1) return { action: "throttle", level: next, reason: rateExceeds ? "dirty-rate-exceeds-bandwidth" : "not-shrinking", expectedDowntimeMs };
    } else if (notShrinking && roundsAtLevel >= 2) {
      return stop("no-progress");
    }
  }
  return { action: "round", expectedDowntimeMs };
}
