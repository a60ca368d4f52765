/** Kernel command line: serial console, fast and quiet boot, plus the hop.* keys the init reads. */
export const BASE_CMDLINE = "console=ttyS0 tsc=reliable mitigations=off random.trust_cpu=on quiet";

export function kernelCmdline(params: { hostname?: string; ip?: string; gw?: string; mac?: string; mountDisk?: boolean }): string {
  const parts = [BASE_CMDLINE];
  if (params.hostname !== undefined) parts.push(`hop.hostname=${params.hostname}`);
  if (params.ip !== undefined) parts.push(`hop.ip=${params.ip}`);
  if (params.gw !== undefined) parts.push(`hop.gw=${params.gw}`);
  if (params.mac !== undefined) parts.push(`hop.mac=${params.mac}`);
  if (params.mountDisk === true) parts.push("hop.disk=mount");
  return parts.join(" ");
}
