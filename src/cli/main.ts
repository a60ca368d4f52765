/**
 * The `hop` CLI. Each command group lives in its own module exporting `register(program)`;
 * to add one, import it here and append it to `commandGroups`.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Command, CommanderError } from "commander";
import { HopError, errorMessage } from "../common/errors.js";
import { packageRoot } from "../common/paths.js";
import * as host from "./host.js";
import * as image from "./image.js";
import * as vm from "./vm.js";
import * as demo from "./demo.js";

export interface CommandGroup {
  register(program: Command): void;
}

const commandGroups: CommandGroup[] = [host, vm, image, demo];

function version(): string {
  try {
    return (JSON.parse(readFileSync(join(packageRoot, "package.json"), "utf8")) as { version?: string }).version ?? "0.0.0";
  } catch {
    return "0.0.0";
  }
}

export function buildProgram(groups: readonly CommandGroup[] = commandGroups): Command {
  const program = new Command("hop")
    .description("Hopvisor: run v86 virtual machines on host agents")
    .version(version())
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

const code = await main(process.argv);
if (code !== undefined) process.exitCode = code;
