import assert from "node:assert/strict";
import { test } from "node:test";
import { decideNextStep, MAX_THROTTLE, nextThrottleStep, THROTTLE_STEPS, type PolicyDecision, type PolicyInput } from "./policy.js";
import { randInt, seededRandom } from "./testing.js";

const MiB = 1024 * 1024;
const RAM = 1024 * MiB;

/** A mid-migration input: 1 GB/s link (1 MiB/ms), a 300 ms target, nothing unusual. */
function input(over: Partial<PolicyInput> = {}): PolicyInput {
  return {
    roundsDone: 3,
    bytesSentTotal: 1500 * MiB,
    ramBytes: RAM,
    lastRound: { bytesSent: 10 * MiB, durationMs: 10, dirtyBytes: 2 * MiB },
    bandwidthBytesPerMs: MiB,
    dirtyRateBytesPerMs: 0.2 * MiB,
    remainingDirtyBytes: 400 * MiB,
    remainingHistory: [800 * MiB, 600 * MiB],
    downtimeTargetMs: 300,
    throttleLevel: 0,
    roundsAtThrottleLevel: 3,
    ...over,
  };
}

function summary(d: PolicyDecision): string {
  if (d.action === "round") return "round";
  if (d.action === "throttle") return `throttle ${d.level} ${d.reason}`;
  return `stop ${d.reason}`;
}

void test("policy decisions, table", () => {
  const cases: [string, Partial<PolicyInput>, string][] = [
    ["first round always runs", { roundsDone: 0, remainingDirtyBytes: RAM, bytesSentTotal: 0, remainingHistory: [] }, "round"],
    ["converged: 200 ms of pages left", { remainingDirtyBytes: 200 * MiB }, "stop converged"],
    ["converged exactly at the target", { remainingDirtyBytes: 300 * MiB }, "stop converged"],
    ["just over the target, still shrinking", { remainingDirtyBytes: 301 * MiB, remainingHistory: [800 * MiB, 600 * MiB] }, "round"],
    ["the fixed switchover cost counts", { remainingDirtyBytes: 250 * MiB, switchoverOverheadMs: 60 }, "round"],
    ["nothing left", { remainingDirtyBytes: 0, bandwidthBytesPerMs: 0, lastRound: { bytesSent: 0, durationMs: 0, dirtyBytes: 0 } }, "stop converged"],
    ["max rounds", { roundsDone: 30 }, "stop max-rounds"],
    ["max rounds, custom", { roundsDone: 5, maxRounds: 5 }, "stop max-rounds"],
    ["converged wins over max rounds", { roundsDone: 30, remainingDirtyBytes: MiB }, "stop converged"],
    ["3x RAM would be exceeded", { bytesSentTotal: 3 * RAM - 100 * MiB, remainingDirtyBytes: 400 * MiB }, "stop max-bytes"],
    ["2x factor", { bytesSentTotal: 2 * RAM - 300 * MiB, maxTotalFactor: 2 }, "stop max-bytes"],
    ["dirty rate beats the link", { dirtyRateBytesPerMs: 1.5 * MiB }, "throttle 20 dirty-rate-exceeds-bandwidth"],
    ["dirty rate equal to the link", { dirtyRateBytesPerMs: MiB }, "throttle 20 dirty-rate-exceeds-bandwidth"],
    ["next step up from 40", { dirtyRateBytesPerMs: 2 * MiB, throttleLevel: 40 }, "throttle 60 dirty-rate-exceeds-bandwidth"],
    ["step just changed: wait a round", { dirtyRateBytesPerMs: 2 * MiB, throttleLevel: 40, roundsAtThrottleLevel: 0 }, "round"],
    ["not shrinking over two rounds", { remainingDirtyBytes: 590 * MiB, remainingHistory: [600 * MiB, 610 * MiB] }, "throttle 20 not-shrinking"],
    ["one round without shrinking is not enough", { remainingDirtyBytes: 590 * MiB, remainingHistory: [900 * MiB, 610 * MiB] }, "round"],
    ["no history, no stall", { remainingDirtyBytes: 590 * MiB, remainingHistory: [] }, "round"],
    ["at 95%, shrinking: keep going", { dirtyRateBytesPerMs: 2 * MiB, throttleLevel: 95 }, "round"],
    ["at 95%, stalled, only one round at 95%", { throttleLevel: 95, roundsAtThrottleLevel: 1, remainingDirtyBytes: 600 * MiB, remainingHistory: [600 * MiB, 600 * MiB] }, "round"],
    ["at 95%, stalled for two rounds", { throttleLevel: 95, roundsAtThrottleLevel: 2, remainingDirtyBytes: 600 * MiB, remainingHistory: [600 * MiB, 600 * MiB] }, "stop no-progress"],
    ["bandwidth unknown: derived from the last round", { bandwidthBytesPerMs: 0, lastRound: { bytesSent: 20 * MiB, durationMs: 10, dirtyBytes: 0 }, remainingDirtyBytes: 500 * MiB }, "stop converged"],
    ["dirty rate unknown: derived from the last round", { dirtyRateBytesPerMs: 0, lastRound: { bytesSent: 10 * MiB, durationMs: 10, dirtyBytes: 20 * MiB } }, "throttle 20 dirty-rate-exceeds-bandwidth"],
    ["nothing measured yet", { bandwidthBytesPerMs: 0, dirtyRateBytesPerMs: 0, lastRound: { bytesSent: 0, durationMs: 0, dirtyBytes: 0 } }, "round"],
  ];
  for (const [name, over, want] of cases) {
    assert.equal(summary(decideNextStep(input(over))), want, name);
  }
  const d = decideNextStep(input({ remainingDirtyBytes: 100 * MiB, switchoverOverheadMs: 20 }));
  assert.equal(d.action, "stop-and-copy");
  assert.equal(d.expectedDowntimeMs, 120);
});

void test("policy rejects nonsense input", () => {
  for (const over of [{ remainingDirtyBytes: -1 }, { ramBytes: Number.NaN }, { downtimeTargetMs: Number.POSITIVE_INFINITY }, { lastRound: { bytesSent: 1, durationMs: -5, dirtyBytes: 0 } }] as Partial<PolicyInput>[]) {
    assert.throws(() => decideNextStep(input(over)), RangeError, JSON.stringify(over));
  }
});

void test("throttle steps", () => {
  assert.deepEqual(THROTTLE_STEPS, [0, 20, 40, 60, 80, 95]);
  assert.equal(nextThrottleStep(0), 20);
  assert.equal(nextThrottleStep(30), 40);
  assert.equal(nextThrottleStep(80), 95);
  assert.equal(nextThrottleStep(MAX_THROTTLE), undefined);
});

void test("policy properties over random inputs and whole simulated migrations", () => {
  const rand = seededRandom(99);
  // Single decisions.
  for (let i = 0; i < 20_000; i++) {
    const maxRounds = 1 + randInt(rand, 40);
    const inp = input({
      roundsDone: randInt(rand, 45),
      maxRounds,
      bytesSentTotal: rand() * 5 * RAM,
      remainingDirtyBytes: rand() < 0.1 ? 0 : rand() * RAM,
      remainingHistory: Array.from({ length: randInt(rand, 4) }, () => rand() * RAM),
      bandwidthBytesPerMs: rand() < 0.1 ? 0 : rand() * 2 * MiB,
      dirtyRateBytesPerMs: rand() < 0.1 ? 0 : rand() * 2 * MiB,
      lastRound: { bytesSent: rand() * RAM, durationMs: rand() * 1000, dirtyBytes: rand() * RAM },
      downtimeTargetMs: rand() * 500,
      throttleLevel: THROTTLE_STEPS[randInt(rand, THROTTLE_STEPS.length)]!,
      roundsAtThrottleLevel: randInt(rand, 4),
      switchoverOverheadMs: rand() * 50,
    });
    const d = decideNextStep(inp);
    const ctx = JSON.stringify(inp);
    if (inp.roundsDone >= maxRounds) assert.equal(d.action, "stop-and-copy", `never another round beyond maxRounds: ${ctx}`);
    if (d.action === "throttle") {
      assert.ok(d.level > inp.throttleLevel, `throttle only goes up: ${ctx}`);
      assert.ok(THROTTLE_STEPS.includes(d.level), ctx);
      assert.ok(d.level <= MAX_THROTTLE, ctx);
    }
    if (d.action === "stop-and-copy" && d.reason === "converged") assert.ok(d.expectedDowntimeMs <= inp.downtimeTargetMs, ctx);
    if (d.action !== "stop-and-copy") {
      assert.ok(d.expectedDowntimeMs > inp.downtimeTargetMs || inp.roundsDone === 0, `a round while already converged: ${ctx}`);
    }
    // Pure: the same input gives the same answer.
    assert.deepEqual(decideNextStep(inp), d);
  }
  // Whole migrations against a model guest: every one ends, within maxRounds, throttle monotonic.
  const outcomes: Record<string, number> = {};
  for (let sim = 0; sim < 2000; sim++) {
    const bandwidth = (0.05 + rand() * 2) * MiB; // bytes per ms
    const baseDirtyRate = rand() * 3 * MiB;
    const workingSet = rand() * RAM;
    const maxRounds = 1 + randInt(rand, 35);
    let level = 0;
    let roundsAtLevel = 0;
    let sent = 0;
    let remaining = RAM;
    const history: number[] = [];
    let rounds = 0;
    for (;;) {
      // Run a round: send `remaining`, the guest dirties meanwhile (bounded by its working set).
      const duration = remaining / bandwidth;
      const rate = baseDirtyRate * (1 - level / 100);
      const dirtied = Math.min(workingSet, rate * duration);
      sent += remaining;
      history.push(remaining);
      remaining = dirtied;
      rounds++;
      roundsAtLevel++;
      const d = decideNextStep({
        roundsDone: rounds,
        bytesSentTotal: sent,
        ramBytes: RAM,
        lastRound: { bytesSent: history[history.length - 1]!, durationMs: duration, dirtyBytes: dirtied },
        bandwidthBytesPerMs: bandwidth,
        dirtyRateBytesPerMs: rate,
        remainingDirtyBytes: remaining,
        remainingHistory: history.slice(-2),
        downtimeTargetMs: 100,
        maxRounds,
        throttleLevel: level,
        roundsAtThrottleLevel: roundsAtLevel,
      });
      assert.ok(rounds <= maxRounds, `sim ${sim}: round ${rounds} beyond maxRounds ${maxRounds}`);
      assert.ok(sent <= 3 * RAM, `sim ${sim}: pre-copy sent ${sent / RAM}x RAM`);
      if (d.action === "stop-and-copy") {
        outcomes[d.reason] = (outcomes[d.reason] ?? 0) + 1;
        break;
      }
      if (d.action === "throttle") {
        assert.ok(d.level > level);
        level = d.level;
        roundsAtLevel = 0;
      }
    }
  }
  // The model reaches every kind of ending.
  for (const reason of ["converged", "max-rounds", "max-bytes", "no-progress"]) assert.ok((outcomes[reason] ?? 0) > 0, `${reason}: ${JSON.stringify(outcomes)}`);
});
