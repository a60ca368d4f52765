/** What the foreground servers (`hop host serve`, `hop manager serve`) share: their token, and running until a signal. */
import { readFile } from "node:fs/promises";
import { HopError } from "../common/errors.js";
import type { Logger } from "../common/log.js";
import { generateToken } from "../host/auth.js";
import { writeFileAtomic } from "./common.js";

/** The trimmed token in `file`, or undefined when the file is missing or empty. */
export async function readTokenFile(file: string): Promise<string | undefined> {
  const text = (await readFile(file, "utf8").catch(() => "")).trim();
  return text === "" ? undefined : text;
}

/** Generates a token and writes it to `file` (mode 0600). */
export async function createTokenFile(file: string): Promise<string> {
  const token = generateToken();
  await writeFileAtomic(file, `${token}\n`, 0o600);
  return token;
}

/**
 * The token a server runs with: --token, --token-file, or `defaultFile` (generated when absent).
 * `label` names it in notes ("token", "cluster token"); shorter than `minLength` is refused.
 */
export async function serveToken(opts: { token?: string; tokenFile?: string }, defaultFile: string, label: string, minLength = 1): Promise<{ token: string; note?: string }> {
  const check = (token: string, where: string): string => {
    if (token === "") throw new HopError("TOKEN_EMPTY", `${where} is empty`);
    if (token.length < minLength) throw new HopError("TOKEN_TOO_SHORT", `${where} must be at least ${minLength} characters`);
    return token;
  };
  if (opts.token !== undefined) return { token: check(opts.token.trim(), "--token") };
  if (opts.tokenFile !== undefined) {
    let text: string;
    try {
      text = await readFile(opts.tokenFile, "utf8");
    } catch (err) {
      throw new HopError("TOKEN_UNREADABLE", `cannot read the token file ${opts.tokenFile}: ${(err as Error).message}`, { cause: err });
    }
    return { token: check(text.trim(), `the token file ${opts.tokenFile}`) };
  }
  const existing = await readTokenFile(defaultFile);
  if (existing !== undefined) return { token: check(existing, `the token file ${defaultFile}`), note: `using the ${label} in ${defaultFile}` };
  return { token: await createTokenFile(defaultFile), note: `generated a ${label} and wrote it to ${defaultFile}` };
}

/**
 * Runs until SIGINT or SIGTERM, then `stop()` (a second signal exits at once with 130), and
 * exits the process: what the server started (VM processes, log streams) is gone by then, so
 * stray handles must not keep it alive.
 */
export async function runUntilSignal(log: Logger, what: string, stop: () => Promise<void>): Promise<never> {
  await new Promise<void>((done) => {
    let stopping = false;
    const onSignal = (signal: NodeJS.Signals): void => {
      if (stopping) {
        log.warn({ signal }, "second signal: exiting without a clean shutdown");
        process.exit(130);
      }
      stopping = true;
      log.info({ signal }, `stopping the ${what}`);
      stop().then(
        () => {
          log.info(`${what} stopped`);
          done();
        },
        (err: unknown) => {
          log.error({ err }, `${what} shutdown failed`);
          process.exitCode = 1;
          done();
        },
      );
    };
    process.on("SIGINT", onSignal);
    process.on("SIGTERM", onSignal);
  });
  process.exit(process.exitCode ?? 0);
}
