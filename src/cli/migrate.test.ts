import assert from "node:assert/strict";
import { test } from "node:test";
import type { MigrationReport } from "../migration/index.js";
import { formatReport, parseBandwidth } from "./migrate.js";

void test("--bandwidth takes bytes per second with decimal units", () => {
  assert.equal(parseBandwidth("125M"), 125_000_000);
  assert.equal(parseBandwidth("1g"), 1_000_000_000);
  assert.equal(parseBandwidth("1.5G"), 1_500_000_000);
  assert.equal(parseBandwidth("500k"), 500_000);
  assert.equal(parseBandwidth("100MB/s"), 100_000_000);
  assert.equal(parseBandwidth("4096"), 4096);
  for (const bad of ["", "fast", "-1M", "1T", "1 Gbit"]) assert.throws(() => parseBandwidth(bad), /bandwidth/, bad);
});

void test("the report names every part of the pause and every round", () => {
  const r: MigrationReport = {
    migrationId: "m-1",
    vm: "web1",
    mode: "live",
    from: "host-a",
    to: "host-b",
    ok: true,
    totalMs: 612.5,
    downtimeMs: 24.3,
    downtime: { stopMs: 0.5, finalCopyMs: 11.2, stateSaveMs: 2.4, transferMs: 5.1, restoreMs: 5, resumeMs: 0.1 },
    bytes: 50_800_000,
    pages: 32_800,
    rounds: [
      { round: 0, pages: 32_768, bytes: 49_500_000, durationMs: 190, bandwidthBytesPerSec: 260_000_000, dirtyBytesPerSec: 500_000, remainingPages: 30, expectedDowntimeMs: 10.5, throttle: 0, decision: "stop-and-copy (converged)" },
      { round: 1, pages: 40, bytes: 164_000, durationMs: 11, bandwidthBytesPerSec: 15_000_000, dirtyBytesPerSec: 0, remainingPages: 0, expectedDowntimeMs: 0, throttle: 0, decision: "final (guest paused)" },
    ],
    stopReason: "converged",
    throttleMax: 0,
    stunnedMs: 0,
  };
  const text = formatReport(r);
  assert.match(text, /web1: host-a -> host-b \(live\)/);
  assert.match(text, /stop 0\.5 \+ state save 2\.4 \+ final copy 11\.2 \+ transfer 5\.1 \+ resume 0\.1 ms \(restore 5 ms, during the final copy\)/);
  const quick = formatReport({ ...r, mode: "quick", rounds: [] });
  assert.match(quick, /stop 0\.5 \+ final copy 11\.2 \+ state save 2\.4 \+ transfer 5\.1 \+ restore 5 \+ resume 0\.1 ms/);
  assert.match(text, /50\.8 MB, 32800 pages, 2 rounds \(stopped: converged\)/);
  assert.match(text, /final \(guest paused\)/);
  assert.match(text, /throttle:\s+none/);
  assert.match(text, /pause:\s+24\.3 ms/);
});
