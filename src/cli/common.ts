/** Shared pieces of the `hop` commands: host connection options, output and errors. */
import { readFile } from "node:fs/promises";
import { homedir } from "node:os";
import { join } from "node:path";
import { InvalidArgumentError, type Command } from "commander";
import { HopError } from "../common/errors.js";
import { HostClient } from "../host/client.js";

export const DEFAULT_HOST_URL = "http://127.0.0.1:7401";

/** Options every command that talks to a host agent takes. */
export interface HostOptions {
  host?: string;
  token?: string;
  json?: boolean;
}

/** Where the CLI keeps its settings: $HOP_CONFIG_DIR, else $XDG_CONFIG_HOME/hopvisor, else ~/.config/hopvisor. */
export function configDir(): string {
  const fromEnv = process.env["HOP_CONFIG_DIR"];
  if (fromEnv !== undefined && fromEnv !== "") return fromEnv;
  const xdg = process.env["XDG_CONFIG_HOME"];
  return join(xdg !== undefined && xdg !== "" ? xdg : join(homedir(), ".config"), "hopvisor");
}

/** Adds --host, --token and --json to a command. */
export function withHostOptions(cmd: Command): Command {
  return cmd
    .option("--host <url>", `host agent URL (default: $HOP_HOST or ${DEFAULT_HOST_URL})`)
    .option("--token <token>", "host agent token (default: $HOP_TOKEN, else <config dir>/token)")
    .option("--json", "print machine-readable JSON");
}

/** Adds --json only (commands that do not talk to a host agent). */
export function withJsonOption(cmd: Command): Command {
  return cmd.option("--json", "print machine-readable JSON");
}

export function hostUrl(opts: HostOptions): string {
  const env = process.env["HOP_HOST"];
  return opts.host ?? (env !== undefined && env !== "" ? env : DEFAULT_HOST_URL);
}

export async function resolveToken(opts: HostOptions): Promise<string> {
  if (opts.token !== undefined && opts.token !== "") return opts.token;
  const env = process.env["HOP_TOKEN"];
  if (env !== undefined && env !== "") return env;
  const file = join(configDir(), "token");
  try {
    const token = (await readFile(file, "utf8")).trim();
    if (token !== "") return token;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") {
      throw new HopError("TOKEN_UNREADABLE", `cannot read the token file ${file}: ${(err as Error).message}`, { cause: err });
    }
  }
  throw new HopError(
    "TOKEN_MISSING",
    `no host agent token: pass --token, set HOP_TOKEN, or write it to ${file} (a host agent started without --token writes its token to <datastore>/host-token)`,
  );
}

export async function connect(opts: HostOptions): Promise<HostClient> {
  return new HostClient(hostUrl(opts), await resolveToken(opts));
}

/** Prints `value` as JSON (--json) or runs `human` to print text. */
export function output(opts: { json?: boolean }, value: unknown, human: () => string | undefined): void {
  if (opts.json === true) {
    process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
    return;
  }
  const text = human();
  if (text !== undefined && text !== "") process.stdout.write(`${text}\n`);
}

/** A commander argument parser for an integer in [min, max]. */
export function intOption(min: number, max: number): (value: string) => number {
  return (value: string) => {
    if (!/^-?\d+$/.test(value.trim())) throw new InvalidArgumentError("must be a whole number");
    const n = Number(value);
    if (n < min || n > max) throw new InvalidArgumentError(`must be between ${min} and ${max}`);
    return n;
  };
}
