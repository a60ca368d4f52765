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
