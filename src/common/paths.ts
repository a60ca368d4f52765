import { readFileSync } from "node:fs";
import { homedir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

/** Root of the installed package (the folder holding package.json). */
export const packageRoot: string = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");

/** Where built guest images and template states are cached (HOPVISOR_CACHE overrides). */
export function defaultCacheDir(): string {
  const fromEnv = process.env["HOPVISOR_CACHE"];
  if (fromEnv !== undefined && fromEnv !== "") return fromEnv;
  const xdg = process.env["XDG_CACHE_HOME"];
  return join(xdg !== undefined && xdg !== "" ? xdg : join(homedir(), ".cache"), "hopvisor");
}

let version: string | undefined;

/** The package's version (from package.json; "0.0.0" if unreadable). */
export function packageVersion(): string {
  if (version !== undefined) return version;
  try {
    version = (JSON.parse(readFileSync(join(packageRoot, "package.json"), "utf8")) as { version?: string }).version ?? "0.0.0";
  } catch {
    version = "0.0.0";
  }
  return version;
}
