/** Test mode (verifyRam): what both hosts hash to show that a VM arrived byte for byte. */
import { createHash } from "node:crypto";
import type { Migratable } from "./vm.js";

/** sha256 over guest RAM, then over each device-memory region (those that travel beside RAM), in order. */
export function memorySha256(vm: Pick<Migratable, "ram" | "deviceMemory">): string {
  const h = createHash("sha256").update(vm.ram());
  for (const region of vm.deviceMemory?.regions() ?? []) h.update(region);
  return h.digest("hex");
}
