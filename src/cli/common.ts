/**
 * Shared pieces of the `hop` commands: connection options, output and errors.
 *
 * Which server a command talks to: --host, else $HOP_HOST, else the current cluster context
 * (`<config dir>/context.json`, written by `hop cluster up`), else DEFAULT_HOST_URL. The token:
 * --token, else $HOP_TOKEN, else the context's token, else `<config dir>/token`.
 */
import { randomBytes } from "node:crypto";
import { chmod, mkdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import { InvalidArgumentError, type Command } from "commander";
import { HopError } from "../common/errors.js";
import { ManagerClient } from "../cluster/client.js";
import { ApiError, HostClient, apiCall, normalizeBaseUrl } from "../host/client.js";

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
    .option("--host <url>", `host agent or manager URL (default: $HOP_HOST, else the cluster context, else ${DEFAULT_HOST_URL})`)
    .option("--token <token>", "API token (default: $HOP_TOKEN, else the cluster context's, else <config dir>/token)")
    .option("--json", "print machine-readable JSON");
}

/** Adds --host, --token and --json to a command that talks to the cluster manager. */
export function withManagerOptions(cmd: Command): Command {
  return cmd
    .option("--host <url>", "cluster manager URL (default: $HOP_HOST, else the cluster context from `hop cluster up`)")
    .option("--token <token>", "cluster token (default: $HOP_TOKEN, else the cluster context's, else <config dir>/token)")
    .option("--json", "print machine-readable JSON");
}

/** Adds --json only (commands that do not talk to a host agent). */
export function withJsonOption(cmd: Command): Command {
  return cmd.option("--json", "print machine-readable JSON");
}

/** The current cluster: where `hop cluster up` left the manager's URL and the cluster token. */
export interface ClusterContext {
  url: string;
  token: string;
  /** The directory of a cluster started by `hop cluster up` (so `cluster down` finds it). */
  dir?: string;
}

export function contextFile(): string {
  return join(configDir(), "context.json");
}

/** The current cluster context, or undefined when there is none (a broken file is an error). */
export async function readContext(): Promise<ClusterContext | undefined> {
  const file = contextFile();
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new HopError("CONTEXT_UNREADABLE", `cannot read the cluster context ${file}: ${(err as Error).message}`, { cause: err });
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (err) {
    throw new HopError("CONTEXT_INVALID", `the cluster context ${file} is not JSON (remove it or run \`hop cluster up\` again)`, { cause: err });
  }
  const ctx = v as Partial<ClusterContext> | null;
  if (typeof ctx?.url !== "string" || typeof ctx.token !== "string" || ctx.url === "") {
    throw new HopError("CONTEXT_INVALID", `the cluster context ${file} must be {"url": ..., "token": ...}`);
  }
  return { url: ctx.url, token: ctx.token, ...(typeof ctx.dir === "string" && ctx.dir !== "" ? { dir: ctx.dir } : {}) };
}

/** Writes a file atomically (temporary file + rename) with the given mode. */
export async function writeFileAtomic(file: string, data: string, mode = 0o644): Promise<void> {
  await mkdir(dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`;
  try {
    await writeFile(tmp, data, { mode });
    await chmod(tmp, mode);
    await rename(tmp, file);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

/** Makes `ctx` the current cluster context (mode 0600: it holds the token). */
export async function writeContext(ctx: ClusterContext): Promise<void> {
  await writeFileAtomic(contextFile(), `${JSON.stringify(ctx, null, 2)}\n`, 0o600);
}

/** Removes the cluster context; with `onlyUrl`, only when it points at that URL. Returns whether it was removed. */
export async function clearContext(onlyUrl?: string): Promise<boolean> {
  const ctx = await readContext().catch(() => undefined);
  if (ctx === undefined) return false;
  if (onlyUrl !== undefined && ctx.url !== onlyUrl) return false;
  await rm(contextFile(), { force: true });
  return true;
}

function envValue(name: string): string | undefined {
  const v = process.env[name];
  return v !== undefined && v !== "" ? v : undefined;
}

/** Where a command's requests go and where that choice came from. */
export interface Target {
  url: string;
  token: string;
  urlFrom: "option" | "env" | "context" | "default";
}

/** The server URL: --host, $HOP_HOST, the cluster context, the default. */
export async function hostUrl(opts: HostOptions): Promise<string> {
  return (await targetUrl(opts)).url;
}

async function targetUrl(opts: HostOptions): Promise<{ url: string; urlFrom: Target["urlFrom"] }> {
  if (opts.host !== undefined && opts.host !== "") return { url: opts.host, urlFrom: "option" };
  const env = envValue("HOP_HOST");
  if (env !== undefined) return { url: env, urlFrom: "env" };
  const ctx = await readContext();
  if (ctx !== undefined) return { url: ctx.url, urlFrom: "context" };
  return { url: DEFAULT_HOST_URL, urlFrom: "default" };
}

/** The token: --token, $HOP_TOKEN, the cluster context's, <config dir>/token. */
export async function resolveToken(opts: HostOptions): Promise<string> {
  if (opts.token !== undefined && opts.token !== "") return opts.token;
  const env = envValue("HOP_TOKEN");
  if (env !== undefined) return env;
  const ctx = await readContext();
  if (ctx !== undefined && ctx.token !== "") return ctx.token;
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
    `no host agent token: pass --token, set HOP_TOKEN, or write it to ${file} (a host agent started without --token writes its token to <datastore>/host-token; \`hop cluster up\` sets a cluster context)`,
  );
}

/** URL and token of the server a command talks to. */
export async function resolveTarget(opts: HostOptions): Promise<Target> {
  const { url, urlFrom } = await targetUrl(opts);
  return { url, urlFrom, token: await resolveToken(opts) };
}

/** A client of a host agent (the manager mirrors the VM routes, so it works against a manager too). */
export async function connect(opts: HostOptions): Promise<HostClient> {
  const t = await resolveTarget(opts);
  return new HostClient(t.url, t.token);
}

/** A client of the cluster manager. */
export async function connectManager(opts: HostOptions): Promise<ManagerClient> {
  const t = await resolveTarget(opts);
  return new ManagerClient(t.url, t.token);
}

/** Asks GET /v1/health whether the server at `target` is a cluster manager (host agents answer without role "manager"). */
export async function isManager(target: { url: string; token: string }): Promise<boolean> {
  const ep = { baseUrl: normalizeBaseUrl(target.url), token: target.token, label: "server", codePrefix: "HOST" };
  const health = await apiCall<{ role?: unknown } | undefined>(ep, "GET", "/v1/health");
  return health?.role === "manager";
}

/**
 * Runs `fn` with a client of the cluster manager. A host agent (or anything else) answers the
 * manager's routes with "no route": that becomes NOT_A_MANAGER naming the URL.
 */
export async function withManager<T>(opts: HostOptions, fn: (client: ManagerClient) => Promise<T>): Promise<T> {
  const client = await connectManager(opts);
  try {
    return await fn(client);
  } catch (err) {
    if (err instanceof ApiError && err.status === 404 && /^no route /.test(err.message)) {
      throw new HopError("NOT_A_MANAGER", `${client.baseUrl} is not a cluster manager (${err.message}); pass --host <manager URL> or run \`hop cluster up\``, { status: 400, cause: err });
    }
    throw err;
  }
}

/** A client of whatever the target is: the cluster manager or a host agent. */
export type AnyClient = { kind: "manager"; client: ManagerClient } | { kind: "host"; client: HostClient };

export async function connectAny(opts: HostOptions): Promise<AnyClient> {
  const t = await resolveTarget(opts);
  return (await isManager(t)) ? { kind: "manager", client: new ManagerClient(t.url, t.token) } : { kind: "host", client: new HostClient(t.url, t.token) };
}

/** A client of the cluster manager; a clear error when the target is a host agent. */
export async function requireManager(opts: HostOptions, what: string): Promise<ManagerClient> {
  const c = await connectAny(opts);
  if (c.kind === "host") {
    throw new HopError("NOT_A_MANAGER", `${what} needs a cluster manager, but ${c.client.baseUrl} is a host agent (pass --host <manager URL> or run \`hop cluster up\`)`, { status: 400 });
  }
  return c.client;
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
