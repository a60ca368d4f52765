/**
 * `hop vm …`: manage VMs, on one host agent or across a cluster through its manager (which
 * mirrors the host agent's VM routes and adds placement: `create --on`, `start --on`).
 */
import type { Command } from "commander";
import type WebSocket from "ws";
import type { RawData } from "ws";
import { HopError } from "../common/errors.js";
import { waitOpen } from "../host/client.js";
import type { VmInfo } from "../host/types.js";
import type { ClusterVm } from "../cluster/api-types.js";
import { MAX_MEMORY_MIB, MIN_MEMORY_MIB, type VmCreateRequest } from "../vm/config.js";
import { connect, connectAny, intOption, output, requireManager, withHostOptions, type HostOptions } from "./common.js";
import { formatMs, keyValues, table } from "./format.js";
import { register as registerMigrate } from "./migrate.js";

/** Ctrl-] (as in telnet and virsh console) detaches from a console. */
const DETACH_BYTE = 0x1d;

/** A VM as a host agent (VmInfo) or the manager (ClusterVm) reports it. */
type AnyVm = VmInfo | ClusterVm;

function isClusterVm(info: AnyVm): info is ClusterVm {
  return typeof (info as Partial<ClusterVm>).generation === "number" && typeof (info as Partial<ClusterVm>).host === "string";
}

function memoryText(info: AnyVm): string {
  return `${info.config.memoryMiB} MiB`;
}

function describeVm(info: AnyVm): string {
  const c = info.config;
  const cl = isClusterVm(info) ? info : undefined;
  const host = info as Partial<VmInfo>;
  return keyValues([
    ["name", info.name],
    ["uuid", info.uuid],
    ["host", cl?.host],
    ["state", cl !== undefined && cl.desiredPower !== undefined ? `${info.state} (wanted: ${cl.desiredPower})` : info.state],
    ["generation", cl !== undefined ? String(cl.generation) : undefined],
    ["cpu", cl?.cpuPct !== undefined ? `${cl.cpuPct.toFixed(0)}%` : undefined],
    ["rss", cl?.rssMiB !== undefined ? `${cl.rssMiB.toFixed(0)} MiB` : undefined],
    ["memory", memoryText(info)],
    ["mac", c.mac],
    ["network", c.network],
    ["ip", c.ip !== undefined ? `${c.ip}${c.gw !== undefined ? ` (gateway ${c.gw})` : ""}` : undefined],
    ["disk", c.disk !== undefined ? `${c.disk.path} (${c.disk.sizeMiB} MiB)` : undefined],
    ["boot", c.boot === "cold" ? "cold (boots the kernel)" : "template (restores the template state)"],
    ["pid", host.pid !== undefined ? String(host.pid) : undefined],
    ["last start", host.startMs !== undefined ? `${formatMs(host.startMs)}${host.startedFrom !== undefined ? ` from ${host.startedFrom}` : ""}` : undefined],
    ["created", c.createdAt],
    ["last error", host.lastError],
    ["updated", cl?.updatedAt],
  ]);
}

function diskText(v: AnyVm): string {
  return v.config.disk !== undefined ? `${v.config.disk.sizeMiB} MiB` : "-";
}

export function vmTable(vms: VmInfo[]): string {
  if (vms.length === 0) return "no VMs on this host";
  return table(
    ["NAME", "STATE", "MEMORY", "IP", "DISK", "PID"],
    vms.map((v) => [v.name, v.state, memoryText(v), v.config.ip ?? "-", diskText(v), v.pid !== undefined ? String(v.pid) : "-"]),
  );
}

/** The VMs of a cluster, with the host that owns each. */
export function clusterVmTable(vms: ClusterVm[]): string {
  if (vms.length === 0) return "no VMs in the cluster";
  return table(
    ["NAME", "HOST", "STATE", "MEMORY", "IP", "DISK", "CPU"],
    vms.map((v) => [v.name, v.host, v.state, memoryText(v), v.config.ip ?? "-", diskText(v), v.cpuPct !== undefined ? `${v.cpuPct.toFixed(0)}%` : "-"]),
  );
}

function stateLine(info: AnyVm): string {
  const on = isClusterVm(info) ? ` on ${info.host}` : "";
  const h = info as Partial<VmInfo>;
  if (info.state === "running" && h.startMs !== undefined) {
    return `${info.name} running${on} (started${h.startedFrom !== undefined ? ` from ${h.startedFrom}` : ""} in ${formatMs(h.startMs)})`;
  }
  return `${info.name} ${info.state}${on}`;
}

function rawToBuffer(data: RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

/** A guest exit code as a process exit code (0-255; anything else is reported as 1). */
function processExitCode(code: number): number {
  return Number.isInteger(code) && code >= 0 && code <= 255 ? code : 1;
}

interface CreateOptions extends HostOptions {
  memory?: number;
  mac?: string;
  ip?: string;
  gw?: string;
  network?: string;
  disk?: number;
  coldBoot?: boolean;
  on?: string;
  start?: boolean;
}

export function register(program: Command): void {
  const vm = program.command("vm").description("manage the VMs of a host agent, or of a cluster through its manager");

  withHostOptions(
    vm
      .command("create")
      .description("define a VM (and create its data disk)")
      .argument("<name>", "VM name (a-z, 0-9, '-')")
      .option("--memory <MiB>", `memory in MiB (${MIN_MEMORY_MIB}-${MAX_MEMORY_MIB}, multiple of 4; default 128)`, intOption(1, 1 << 20))
      .option("--mac <mac>", "MAC address (default: random, 02:68:6f:…)")
      .option("--network <name>", "connect the NIC to this virtual network (the address comes from its pool)")
      .option("--ip <addr/prefix>", "static IPv4 address with prefix, e.g. 10.10.0.5/24 (with --network: the address to ask the pool for)")
      .option("--gw <addr>", "default gateway (with --network: the network's gateway unless given)")
      .option("--disk <MiB>", "create a data disk of this size (mounted on /data)", intOption(1, 1 << 20))
      .option("--cold-boot", "boot the kernel on every start instead of restoring the template state")
      .option("--on <host>", "cluster: create it on this host (default: the manager places it)")
      .option("--start", "start it once created"),
  ).action(async (name: string, opts: CreateOptions) => {
    const target = await connectAny(opts);
    const req: VmCreateRequest = {
      name,
      ...(opts.memory !== undefined ? { memoryMiB: opts.memory } : {}),
      ...(opts.mac !== undefined ? { mac: opts.mac } : {}),
      ...(opts.ip !== undefined ? { ip: opts.ip } : {}),
      ...(opts.gw !== undefined ? { gw: opts.gw } : {}),
      ...(opts.network !== undefined ? { network: opts.network } : {}),
      ...(opts.disk !== undefined ? { diskMiB: opts.disk } : {}),
      ...(opts.coldBoot === true ? { boot: "cold" as const } : {}),
    };
    let info: AnyVm;
    if (target.kind === "manager") {
      info = await target.client.create({ ...req, ...(opts.on !== undefined ? { host: opts.on } : {}), ...(opts.start === true ? { start: true } : {}) });
    } else {
      if (opts.on !== undefined) {
        throw new HopError("NOT_A_MANAGER", `--on needs a cluster manager, but ${target.client.baseUrl} is a host agent (pass --host <manager URL>, or leave --on out to create the VM on this host)`, { status: 400 });
      }
      info = await target.client.create(req);
      if (opts.start === true) info = await target.client.start(name);
    }
    const created = info;
    output(opts, created, () => {
      const c = created.config;
      const extra = [memoryText(created), `mac ${c.mac}`, ...(c.network !== undefined ? [`network ${c.network}`] : []), ...(c.ip !== undefined ? [`ip ${c.ip}`] : []), ...(c.disk !== undefined ? [`disk ${c.disk.sizeMiB} MiB`] : []), `${c.boot} boot`];
      const where = isClusterVm(created) ? ` on ${created.host}` : "";
      return `created ${created.name}${where} (${extra.join(", ")})${opts.start === true ? `\n${stateLine(created)}` : ""}`;
    });
  });

  registerMigrate(vm);

  withHostOptions(vm.command("list").alias("ls").description("list the VMs (of the cluster, with their hosts, when talking to a manager)")).action(async (opts: HostOptions) => {
    const target = await connectAny(opts);
    if (target.kind === "manager") {
      const vms = await target.client.list();
      output(opts, { vms }, () => clusterVmTable(vms));
    } else {
      const vms = await target.client.list();
      output(opts, { vms }, () => vmTable(vms));
    }
  });

  withHostOptions(vm.command("show").description("show one VM").argument("<name>")).action(async (name: string, opts: HostOptions) => {
    const info: AnyVm = await (await connect(opts)).get(name);
    output(opts, info, () => describeVm(info));
  });

  withHostOptions(
    vm
      .command("start")
      .description("start a VM (from the template state unless it was created with --cold-boot)")
      .argument("<name>")
      .option("--on <host>", "cluster: start it on this host"),
  ).action(async (name: string, opts: HostOptions & { on?: string }) => {
    const info: AnyVm = opts.on !== undefined ? await (await requireManager(opts, "--on")).start(name, { host: opts.on }) : await (await connect(opts)).start(name);
    output(opts, info, () => stateLine(info));
  });

  const simple: { cmd: "pause" | "resume" | "poweroff"; help: string }[] = [
    { cmd: "pause", help: "pause a running VM" },
    { cmd: "resume", help: "resume a paused VM" },
    { cmd: "poweroff", help: "power a VM off hard" },
  ];
  for (const { cmd, help } of simple) {
    withHostOptions(vm.command(cmd).description(help).argument("<name>")).action(async (name: string, opts: HostOptions) => {
      const info: AnyVm = await (await connect(opts))[cmd](name);
      output(opts, info, () => stateLine(info));
    });
  }

  withHostOptions(
    vm
      .command("stop")
      .description("shut a VM down through its guest agent (hard power-off after --timeout)")
      .argument("<name>")
      .option("--timeout <ms>", "how long the guest gets before a hard power-off", intOption(1, 600_000))
      .option("--force", "power off hard right away"),
  ).action(async (name: string, opts: HostOptions & { timeout?: number; force?: boolean }) => {
    const client = await connect(opts);
    const info: AnyVm = opts.force === true ? await client.poweroff(name) : await client.shutdown(name, opts.timeout !== undefined ? { timeoutMs: opts.timeout } : {});
    output(opts, info, () => stateLine(info));
  });

  withHostOptions(
    vm
      .command("destroy")
      .alias("rm")
      .description("remove a VM definition (its data disk is kept unless --delete-disk)")
      .argument("<name>")
      .option("--force", "power the VM off first if it is on")
      .option("--delete-disk", "delete its data disk too"),
  ).action(async (name: string, opts: HostOptions & { force?: boolean; deleteDisk?: boolean }) => {
    await (await connect(opts)).destroy(name, { force: opts.force === true, deleteDisk: opts.deleteDisk === true });
    output(opts, { name, destroyed: true, deletedDisk: opts.deleteDisk === true }, () => `destroyed ${name}${opts.deleteDisk === true ? " and its data disk" : ""}`);
  });

  withHostOptions(
    vm
      .command("exec")
      .description("run a shell command in the guest; exits with its exit code (hop vm exec NAME -- CMD...)")
      .argument("<name>")
      .argument("<command...>", "command and arguments, joined with spaces and run by the guest's shell")
      .option("--timeout <ms>", "how long the command may run (default: the host's, 60 s)", intOption(1, 600_000)),
  ).action(async (name: string, command: string[], opts: HostOptions & { timeout?: number }) => {
    const client = await connect(opts);
    const result = await client.exec(name, command.join(" "), opts.timeout !== undefined ? { timeoutMs: opts.timeout } : {});
    if (opts.json === true) {
      output(opts, result, () => undefined);
    } else {
      process.stdout.write(result.stdout);
      process.stderr.write(result.stderr);
    }
    process.exitCode = processExitCode(result.exitCode);
  });

  withHostOptions(
    vm
      .command("console")
      .description("attach to a VM's serial console (Ctrl-] detaches); without a terminal, stream its output")
      .argument("<name>"),
  ).action(async (name: string, opts: HostOptions) => {
    const client = await connect(opts);
    await attachConsole(name, client.console(name));
  });
}

/**
 * Streams console output to stdout and, on a terminal, keystrokes to the VM until detach or
 * close. Listeners go on before the socket opens: the scrollback can arrive in the same packet
 * as the upgrade response.
 */
async function attachConsole(name: string, ws: WebSocket): Promise<void> {
  const stdin = process.stdin;
  const tty = stdin.isTTY;

  ws.on("message", (data: RawData, isBinary: boolean) => {
    if (isBinary) {
      process.stdout.write(rawToBuffer(data));
      return;
    }
    // Text frames carry API errors (e.g. typing into a stopped VM).
    const text = rawToBuffer(data).toString("utf8");
    let message = text;
    try {
      const body = JSON.parse(text) as { error?: { code?: string; message?: string } };
      if (body.error?.message !== undefined) message = `${body.error.message} (${body.error.code ?? "ERROR"})`;
    } catch {
      // show the text as it is
    }
    process.stderr.write(`${tty ? "\r\n" : ""}[hop] ${message}${tty ? "\r\n" : "\n"}`);
  });
  const closed = new Promise<{ code: number; reason: string }>((resolve) =>
    ws.once("close", (code: number, reason: Buffer) => resolve({ code, reason: reason.toString("utf8") })),
  );

  await waitOpen(ws);

  let detached = false;
  let killTimer: NodeJS.Timeout | undefined;
  const detach = (): void => {
    if (detached) return;
    detached = true;
    ws.close(1000, "client detached");
    killTimer = setTimeout(() => ws.terminate(), 2_000);
  };
  const onKey = (chunk: Buffer): void => {
    const at = chunk.indexOf(DETACH_BYTE);
    const data = at >= 0 ? chunk.subarray(0, at) : chunk;
    if (data.length > 0 && ws.readyState === ws.OPEN) ws.send(data, { binary: true });
    if (at >= 0) detach();
  };
  process.on("SIGINT", detach);
  process.on("SIGTERM", detach);
  if (tty) {
    process.stderr.write(`[hop] attached to the console of ${name}; press Ctrl-] to detach\r\n`);
    stdin.setRawMode(true);
    stdin.on("data", onKey);
    stdin.resume();
  }

  const { code, reason } = await closed;
  clearTimeout(killTimer);
  process.off("SIGINT", detach);
  process.off("SIGTERM", detach);
  if (tty) {
    stdin.off("data", onKey);
    stdin.setRawMode(false);
    stdin.pause();
  }

  if (code === 4404) throw new HopError("VM_NOT_FOUND", reason !== "" ? reason : `no VM named '${name}' on this host`);
  if (code === 4400) throw new HopError("BAD_REQUEST", reason !== "" ? reason : "bad console request");
  if (code >= 4000) throw new HopError("CONSOLE_CLOSED", `the host agent closed the console: ${reason !== "" ? reason : String(code)}`);
  if (tty || !detached) {
    process.stderr.write(`${tty ? "\r\n" : ""}[hop] ${detached ? "detached" : `console closed${reason !== "" ? `: ${reason}` : ""}`}\n`);
  }
}
