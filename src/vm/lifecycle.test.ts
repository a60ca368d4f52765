import assert from "node:assert/strict";
import { test } from "node:test";
import { InvalidTransitionError, nextState, type VmAction, type VmState } from "./lifecycle.js";

void test("the lifecycle accepts the documented paths", () => {
  let s: VmState = "defined";
  for (const [action, want] of [
    ["start", "starting"],
    ["started", "running"],
    ["pause", "paused"],
    ["resume", "running"],
    ["shutdown", "stopping"],
    ["stopped", "stopped"],
    ["start", "starting"],
    ["started", "running"],
    ["crash", "crashed"],
    ["start", "starting"],
  ] as [VmAction, VmState][]) {
    s = nextState("vm", s, action);
    assert.equal(s, want);
  }
});

void test("invalid transitions name the VM, the state and the action", () => {
  const bad: [VmState, VmAction][] = [
    ["running", "start"],
    ["running", "resume"],
    ["paused", "pause"],
    ["defined", "pause"],
    ["stopped", "shutdown"],
    ["running", "destroy"],
    ["paused", "shutdown"],
  ];
  for (const [from, action] of bad) {
    assert.throws(
      () => nextState("web1", from, action),
      (e: unknown) => e instanceof InvalidTransitionError && e.code === "VM_INVALID_TRANSITION" && e.status === 409 && e.message.includes("web1") && e.message.includes(from),
    );
  }
});
