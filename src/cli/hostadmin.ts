/**
 * `hop host list|show|maintenance`: the hosts of a cluster, as the manager sees them. These are
 * added to the `host` command that host.ts creates (`hop host serve`); register after it.
 */
import type { Command } from "commander";
import { HopError } from "../common/errors.js";
import type { HostInfo } from "../cluster/api-types.js";
import { output, withManager, withManagerOptions, type HostOptions } from "./common.js";
import { formatAgo, formatMiB, keyValues, table } from "./format.js";
import { exitCodeFor, taskStarted } from "./task.js";

/** "connected", "connected, maintenance", "down, entering maintenance"... */
export function hostState(h: Pick<HostInfo, "connection" | "maintenance">): string {
  switch (h.maintenance) {
    case "in":
      return `${h.connection}, maintenance`;
    case "entering":
      return `${h.connection}, entering maintenance`;
    default:
      return h.connection;
  }
}

/** "12% of 4 cpus": CPU used on the host as a share of all its CPUs. */
export function hostCpu(h: Pick<HostInfo, "load" | "capacity">): string {
  const cpus = h.capacity.cpus;
  const used = h.load !== undefined ? `${Math.round(h.load.cpuPct / Math.max(1, cpus))}%` : "-";
  return `${used} of ${cpus} cpu${cpus === 1 ? "" : "s"}`;
}

/** "384/4096 MiB": memory reserved by the host's VMs / what it offers. */
export function hostMemory(h: Pick<HostInfo, "reservedMiB" | "capacity">): string {
  return `${Math.round(h.reservedMiB)}/${h.capacity.memoryMiB} MiB`;
}

export function hostTable(hosts: readonly HostInfo[], now: number = Date.now()): string {
  if (hosts.length === 0) return "no hosts have joined the cluster";
  return table(
    ["NAME", "STATE", "VMS", "MEM", "CPU", "LAST HEARTBEAT"],
    hosts.map((h) => [h.name, hostState(h), String(h.vms.length), hostMemory(h), hostCpu(h), formatAgo(h.lastHeartbeatAt, now)]),
  );
}

export function describeHost(h: HostInfo, now: number = Date.now()): string {
  const load = h.load;
  return keyValues([
    ["name", h.name],
    ["url", h.url],
    ["state", hostState(h)],
    ["memory", `${formatMiB(h.reservedMiB)} reserved of ${formatMiB(h.capacity.memoryMiB)}${load !== undefined ? `, ${formatMiB(load.rssMiB)} resident` : ""}`],
    ["cpu", hostCpu(h)],
    ["vms", h.vms.length > 0 ? `${h.vms.length}: ${h.vms.join(", ")}` : "none"],
    ["datastore", h.datastoreId],
    ["migration", h.migrationAddress !== undefined ? `${h.migrationAddress.host}:${h.migrationAddress.port}` : undefined],
    ["vxlan", h.vtep],
    ["version", h.version],
    ["joined", `${h.joinedAt} (${formatAgo(h.joinedAt, now)})`],
    ["last heartbeat", h.lastHeartbeatAt !== undefined ? `${h.lastHeartbeatAt} (${formatAgo(h.lastHeartbeatAt, now)})` : "never"],
  ]);
}

interface MaintenanceOptions extends HostOptions {
  enter?: boolean;
  exit?: boolean;
  wait?: boolean;
}

export function register(program: Command): void {
  // `hop host` is created by host.ts (serve); stand alone when it is not registered.
  const host = program.commands.find((c) => c.name() === "host") ?? program.command("host").description("host agents and the cluster's hosts");
  host.description("run a host agent (serve) and manage the cluster's hosts (list, show, maintenance)");

  withManagerOptions(host.command("list").alias("ls").description("list the hosts of the cluster")).action(async (opts: HostOptions) => {
    const hosts = await withManager(opts, (c) => c.hosts());
    output(opts, { hosts }, () => hostTable(hosts));
  });

  withManagerOptions(host.command("show").description("show one host of the cluster").argument("<name>")).action(async (name: string, opts: HostOptions) => {
    const h = await withManager(opts, (c) => c.host(name));
    output(opts, h, () => describeHost(h));
  });

  withManagerOptions(
    host
      .command("maintenance")
      .description("enter maintenance mode (the host's VMs are migrated away, nothing new is placed there) or exit it")
      .argument("<name>")
      .option("--enter", "enter maintenance mode")
      .option("--exit", "exit maintenance mode")
      .option("--wait", "answer when the task has ended (entering: all VMs moved away)"),
  ).action(async (name: string, opts: MaintenanceOptions) => {
    if ((opts.enter === true) === (opts.exit === true)) {
      throw new HopError("USAGE", "give exactly one of --enter and --exit", { status: 400 });
    }
    const task = await withManager(opts, (c) => c.maintenance(name, { enter: opts.enter === true, wait: opts.wait === true }));
    output(opts, task, () => taskStarted(task));
    exitCodeFor(task);
  });
}
