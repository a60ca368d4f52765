import type { z } from "zod";
import { HopError } from "./errors.js";

export class BadRequestError extends HopError {
  constructor(message: string) {
    super("BAD_REQUEST", message, { status: 400 });
  }
}

/** One line per zod issue: "path: message" (the given label when the path is empty). */
export function formatIssues(issues: readonly z.core.$ZodIssue[], label: string): string {
  return issues
    .map((i) => {
      const path = i.path.map((p) => String(p)).join(".");
      return `${path === "" ? label : path}: ${i.message}`;
    })
    .join("; ");
}

/** Parses `value` with `schema` or throws BAD_REQUEST (400) listing every issue. */
export function parseInput<S extends z.ZodType>(schema: S, value: unknown, label: string): z.output<S> {
  const r = schema.safeParse(value);
  if (!r.success) throw new BadRequestError(formatIssues(r.error.issues, label));
  return r.data;
}
