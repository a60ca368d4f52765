import assert from "node:assert/strict";
import { test } from "node:test";
import { ConsoleLines } from "./consolelines.js";

function feed(c: ConsoleLines, s: string): void {
  for (const b of Buffer.from(s, "latin1")) c.push(b);
}

void test("console lines: every line is seen once, whatever came before it", () => {
  const lines: string[] = [];
  const c = new ConsoleLines((l) => lines.push(l));
  feed(c, "HB 1\nsome kernel line\nHB 2\n[   12.000000] reboot: Power down\n");
  assert.deepEqual(lines, ["HB 1", "some kernel line", "HB 2", "[   12.000000] reboot: Power down"]);
});

void test("console lines: a line longer than the limit is cut there and the rest goes on", () => {
  const lines: string[] = [];
  const c = new ConsoleLines((l) => lines.push(l), 8);
  feed(c, "0123456789ab\nHOPVISOR-READY\n");
  assert.deepEqual(lines, ["01234567", "89ab", "HOPVISOR", "-READY"]);
  lines.length = 0;
  const d = new ConsoleLines((l) => lines.push(l));
  feed(d, `${"x".repeat(450)}\nHOPVISOR-READY\n`);
  assert.deepEqual(lines.slice(-1), ["HOPVISOR-READY"]);
});
