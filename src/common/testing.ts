/** Assertions the tests share (not part of the public API). */
import assert from "node:assert/strict";
import { HopError } from "./errors.js";

/** Asserts that `p` (or calling it) fails with a HopError of `code` (and `status`, when given); returns the error. */
export async function expectCode(p: Promise<unknown> | (() => unknown), code: string | RegExp, status?: number): Promise<HopError> {
  try {
    await (typeof p === "function" ? p() : p);
  } catch (err) {
    assert.ok(err instanceof HopError, `expected a HopError, got ${String(err)}`);
    if (typeof code === "string") assert.equal(err.code, code, err.message);
    else assert.match(err.code, code, err.message);
    if (status !== undefined) assert.equal(err.status, status, err.message);
    return err;
  }
  assert.fail(`expected error ${String(code)}`);
}

/**
 * Polls `cond` every `everyMs` until it returns something other than undefined or false, and
 * resolves with that; fails the test after `ms`.
 */
export async function waitFor<T>(cond: () => T | Promise<T>, ms: number, what: string, everyMs = 20): Promise<Exclude<T, undefined | false>> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await cond();
    if (v !== undefined && v !== false) return v as Exclude<T, undefined | false>;
    if (Date.now() > deadline) assert.fail(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** Whether process `pid` exists (signal 0). */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
