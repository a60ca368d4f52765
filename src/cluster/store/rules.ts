/** Rules both stores follow, in one place so that they cannot drift apart. */
import { HopError } from "../../common/errors.js";

const DEFAULT_LIMIT = 100;
const MAX_LIMIT = 1000;

/** A list's size: 100 when not given, clamped to 0..1000. */
export function limitOf(limit: number | undefined): number {
  if (limit === undefined || Number.isNaN(limit)) return DEFAULT_LIMIT;
  return Math.min(MAX_LIMIT, Math.max(0, Math.floor(limit)));
}

/**
 * `row` with `patch` applied: keys holding undefined are ignored, and so is the row's identity
 * key should a caller slip it in.
 */
export function merge<T extends object>(row: T, patch: object, identity: keyof T): T {
  const out = { ...row } as Record<string, unknown>;
  for (const [key, value] of Object.entries(patch)) {
    if (value !== undefined && key !== identity) out[key] = value;
  }
  return out as T;
}

export function notFound(what: string, id: string): HopError {
  return new HopError("STORE_NOT_FOUND", `${what} ${id} not found`, { status: 404 });
}
