import { pino, type Logger } from "pino";

export type { Logger };

/** Structured logger. HOP_LOG_LEVEL sets the level (default: info; "silent" in tests). */
export function createLogger(name: string, bindings: Record<string, unknown> = {}): Logger {
  const level = process.env["HOP_LOG_LEVEL"] ?? (process.env["NODE_TEST_CONTEXT"] !== undefined ? "silent" : "info");
  return pino({ name, level, base: { pid: process.pid, ...bindings } }, pino.destination(2));
}
