import { open, rm, stat } from "node:fs/promises";
import { HopError } from "./errors.js";

/**
 * Runs `fn` holding an exclusive lock file (O_EXCL create). Waits while another process holds
 * it; a lock older than `staleMs` (its holder died) is taken over.
 */
export async function withFileLock<T>(path: string, fn: () => Promise<T>, opts: { timeoutMs?: number; staleMs?: number } = {}): Promise<T> {
  const timeoutMs = opts.timeoutMs ?? 15 * 60_000;
  const staleMs = opts.staleMs ?? 10 * 60_000;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const fh = await open(path, "wx");
      await fh.write(`${process.pid}\n`);
      await fh.close();
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      const info = await stat(path).catch(() => undefined);
      if (info !== undefined && Date.now() - info.mtimeMs > staleMs) {
        await rm(path, { force: true });
        continue;
      }
      if (Date.now() > deadline) throw new HopError("LOCK_TIMEOUT", `timed out waiting for lock ${path}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  try {
    return await fn();
  } finally {
    await rm(path, { force: true });
  }
}
