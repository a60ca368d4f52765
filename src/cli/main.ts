/**
 * The `hop` CLI. Each command group lives in its own module exporting `register(program)`;
 * to add one, import it here and append it to `commandGroups`.
 *
 * Run as the program (bin/hop.js or this file), it parses process.argv; imported by anything
 * else (tests), it only provides buildProgram / main.
 */
import { realpathSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Command, CommanderError } from "commander";
import { HopError, errorMessage } from "../common/errors.js";
import { packageRoot, packageVersion } from "../common/paths.js";
import * as host from "./host.js";
import * as hostadmin from "./hostadmin.js";
import * as image from "./image.js";
import * as vm from "./vm.js";
import * as demo from "./demo.js";
import * as manager from "./manager.js";
import * as cluster from "./cluster.js";
import * as task from "./task.js";

export interface CommandGroup {
  register(program: Command): void;
}

/** hostadmin adds list/show/maintenance to the `host` command of host.ts: keep it after host. */
const commandGroups: CommandGroup[] = [host, hostadmin, vm, image, demo, manager, cluster, task];

export function buildProgram(groups: readonly CommandGroup[] = commandGroups): Command {
  const program = new Command("hop")
    .description("Hopvisor: run v86 virtual machines on host agents, alone or as a cluster under a manager")
    .version(packageVersion())
    .exitOverride()
    .showHelpAfterError("(add --help for usage)");
  for (const g of groups) g.register(program);
  return program;
}

/** --json given (before any "--", after which arguments belong to the guest command). */
function jsonRequested(argv: readonly string[]): boolean {
  const end = argv.indexOf("--");
  return (end === -1 ? argv : argv.slice(0, end)).includes("--json");
}

/**
 * Reports a failed command: `error: <message> (<code>)` on stderr, plus the API-style JSON
 * error body on stdout with --json. Returns the exit code: 2 for usage errors, else 1.
 */
export function reportError(err: unknown, json: boolean): number {
  if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : 2; // commander already printed it
  const code = err instanceof HopError ? err.code : "INTERNAL";
  const message = errorMessage(err);
  if (json) process.stdout.write(`${JSON.stringify({ error: { code, message } }, null, 2)}\n`);
  process.stderr.write(`error: ${message} (${code})\n`);
  if (!(err instanceof HopError) && err instanceof Error && process.env["HOP_DEBUG"] !== undefined) process.stderr.write(`${err.stack ?? ""}\n`);
  return 1;
}

export async function main(argv: readonly string[]): Promise<number | undefined> {
  const program = buildProgram();
  try {
    await program.parseAsync([...argv]);
    return undefined;
  } catch (err) {
    return reportError(err, jsonRequested(argv));
  }
}

/** Whether this process was started to run the CLI (node bin/hop.js, or node on this file). */
function isEntryPoint(): boolean {
  const entry = process.argv[1];
  if (entry === undefined) return false;
  let path: string;
  try {
    path = realpathSync(entry);
  } catch {
    return false;
  }
  return path === realpathSync(join(packageRoot, "bin", "hop.js")) || path === fileURLToPath(import.meta.url);
}

if (isEntryPoint()) {
  const code = await main(process.argv);
  if (code !== undefined) process.exitCode = code;
}
