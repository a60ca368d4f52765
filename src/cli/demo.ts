/**
 * `hop demo`: builds the guest image if needed and runs a small cluster on this machine: a
 * cluster manager (in this process, its inventory in a temporary SQLite file) and two host
 * agents on loopback that join it, linked by a virtual network (VXLAN between their own
 * loopback addresses). Everything then goes through the manager, as an operator would: it
 * creates and starts a real Linux VM on host-a, shows its serial console (the manager's console
 * follows the VM), talks to the TCP service inside it, then moves it back and forth (three live
 * migrations, then a quick one, each a task of the manager) while a client keeps talking to it.
 * As root the client is a real TCP client on this machine reaching the guest by IP through
 * host-a's Linux gateway (and ping runs alongside); otherwise it is the guest's own kvc, run
 * through the manager's exec. It ends with the manager's task list and stops everything it
 * started (also on failure and Ctrl-C).
 */
import { spawn, type ChildProcess, type SpawnOptions } from "node:child_process";
import { randomBytes, randomInt } from "node:crypto";
import { mkdtemp, readFile, readdir, rm } from "node:fs/promises";
import { constants as osConstants, tmpdir } from "node:os";
import { join } from "node:path";
import type { Command } from "commander";
import { pino } from "pino";
import type WebSocket from "ws";
import type { RawData } from "ws";
import { serveManager, type ManagerHandle } from "../cluster/index.js";
import { ManagerClient, parseClusterEvent, waitOpen } from "../cluster/client.js";
import type { HostInfo, TaskRow } from "../cluster/api-types.js";
import { HopError, errorMessage } from "../common/errors.js";
import { startAgent, type AgentProcess } from "../host/agents.js";
import { HostClient } from "../host/client.js";
import { KvdProbe, Pinger, type KvdProbeStats } from "../host/probes.js";
import { ensureImage } from "../image/index.js";
import { freeSubnet, isRoot } from "../net/index.js";
import { formatMs } from "./format.js";
import { hostTable } from "./hostadmin.js";
import { progressReporter } from "./image.js";

const VM = "demo1";
const HOSTS = ["host-a", "host-b"] as const;
/** Memory each host offers to the cluster's VMs (the manager's admission control). */
const HOST_CAPACITY_MIB = 1024;
/** How long the hosts may take to join the manager. */
const JOIN_TIMEOUT_MS = 60_000;

type Say = (s: string) => void;

/** Columns with a rule under the header; the last column is not padded. */
function table(rows: string[][]): string {
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length))) ?? [];
  const line = (r: readonly string[]): string => r.map((c, i) => c.padEnd(widths[i] ?? 0)).join("  ").trimEnd();
  return rows.map((r, n) => line(r) + (n === 0 ? `\n${line(widths.map((w) => "-".repeat(w)))}` : "")).join("\n");
}

/** Time between moves (the client's view is taken over the first second of it). */
const MOVE_SPACING_MS = 2500;

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** The first 8 characters of a task id (enough to tell the demo's tasks apart). */
function shortId(id: string): string {
  return id.slice(0, 8);
}

function taskMs(t: TaskRow): number | undefined {
  if (t.endedAt === undefined) return undefined;
  return Date.parse(t.endedAt) - Date.parse(t.startedAt ?? t.createdAt);
}

/**
 * What the demo started, so that it can all be stopped whatever happens: the host agents (each
 * in its own process group), the manager, and the probes and sockets of the tour.
 */
class Resources {
  readonly agents: AgentProcess[] = [];
  manager: ManagerHandle | undefined;
  /** The manager runs in this process; its log goes to stderr (warnings only unless HOP_LOG_LEVEL says otherwise). */
  readonly managerLog = pino({ name: "manager", level: process.env["HOP_LOG_LEVEL"] ?? "warn" }, pino.destination(2));
  /** Agents and the manager being started (torn down once they are up). */
  private readonly starting: Promise<unknown>[] = [];
  private readonly closers: (() => unknown)[] = [];
  private tornDown = false;

  /** Starts something the teardown must stop; `register` records it once it is up. */
  start<T>(p: Promise<T>, register: (t: T) => void): Promise<T> {
    const registered = p.then((t) => {
      register(t);
      return t;
    });
    this.starting.push(registered.catch(() => undefined));
    return registered;
  }

  /** Registers `close` for the teardown; after the teardown, closes at once and throws INTERRUPTED. */
  own(close: () => unknown): void {
    if (!this.tornDown) {
      this.closers.push(close);
      return;
    }
    try {
      void Promise.resolve(close()).catch(() => undefined);
    } catch {
      // already closed
    }
    throw new HopError("INTERRUPTED", "the demo is stopping");
  }

  get stopping(): boolean {
    return this.tornDown;
  }

  /** SIGKILL to every agent's process group (a second Ctrl-C). */
  killAgents(): void {
    for (const a of this.agents) killGroup(a, "SIGKILL");
  }

  /**
   * Closes the probes and sockets, stops the agents (their VMs with them), then the manager.
   * Never throws. `quiet`: the teardown interrupts work in flight, so the manager's complaints
   * about hosts going away are not news.
   */
  async teardown(quiet: boolean): Promise<string[]> {
    this.tornDown = true;
    if (quiet && process.env["HOP_LOG_LEVEL"] === undefined) this.managerLog.level = "silent";
    const notes: string[] = [];
    for (const close of this.closers.splice(0).reverse()) {
      try {
        await close();
      } catch {
        // best effort: the socket or probe is gone either way
      }
    }
    await Promise.all(this.starting);
    const stopped = await Promise.all(this.agents.map((a) => stopAgent(a)));
    for (const n of stopped) if (n !== undefined) notes.push(n);
    try {
      await this.manager?.close();
    } catch (err) {
      notes.push(`closing the manager failed: ${errorMessage(err)}`);
    }
    return notes;
  }
}

function killGroup(a: AgentProcess, signal: NodeJS.Signals): boolean {
  const pid = a.proc.pid;
  if (pid === undefined) return false;
  try {
    process.kill(-pid, signal);
    return true;
  } catch {
    return false; // the group is empty
  }
}

/** Live processes of process group `pgid` ("pid command"), from /proc. */
async function groupMembers(pgid: number): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir("/proc").catch(() => [] as string[])) {
    if (!/^\d+$/.test(entry)) continue;
    const stat = await readFile(`/proc/${entry}/stat`, "utf8").catch(() => "");
    const close = stat.lastIndexOf(")");
    // "pid (comm) state ppid pgrp ..."
    const [state, , pgrp] = stat.slice(close + 2).split(" ");
    if (Number(pgrp) !== pgid || state === "Z" || state === "X") continue;
    const cmd = (await readFile(`/proc/${entry}/cmdline`, "utf8").catch(() => "")).split("\0").join(" ").trim();
    out.push(`${entry} ${cmd.slice(0, 120) || stat.slice(stat.indexOf("(") + 1, close)}`);
  }
  return out;
}

/** SIGTERM (the agent stops its VMs), SIGKILL after 20 s; then whatever is left in its process group. */
async function stopAgent(a: AgentProcess): Promise<string | undefined> {
  const exitText = (): string => (a.proc.signalCode !== null ? `killed by ${a.proc.signalCode}` : `exit code ${a.proc.exitCode ?? "?"}`);
  const gone = a.proc.exitCode !== null || a.proc.signalCode !== null;
  let how = gone ? `host agent ${a.name} had exited already (${exitText()})` : undefined;
  if (!gone) {
    await a.stop(20_000).catch(() => undefined);
    if (a.proc.signalCode === "SIGKILL") how = `host agent ${a.name} had to be killed`;
  }
  const pid = a.proc.pid;
  if (pid === undefined) return how;
  // Its VM processes may still be exiting: give them a moment, then kill what remains.
  let left = await groupMembers(pid);
  for (let i = 0; i < 20 && left.length > 0; i++) {
    await sleep(100);
    left = await groupMembers(pid);
  }
  if (left.length === 0) return how;
  killGroup(a, "SIGKILL");
  return `${how ?? `host agent ${a.name} stopped`}; killed ${left.length} process(es) it left behind: ${left.join("; ")}`;
}

/** The demo was stopped by a signal (after stopping everything it had started). */
export class DemoInterrupted extends HopError {
  constructor(readonly signal: NodeJS.Signals) {
    super("INTERRUPTED", `interrupted (${signal}); the demo stopped everything it had started`);
  }
}

export async function runDemo(opts: { keep?: boolean } = {}): Promise<void> {
  const say: Say = (s) => void process.stdout.write(`${s}\n`);
  say("== Hopvisor demo ==");
  const progress = progressReporter(process.stdout.isTTY, process.stdout);
  const image = await ensureImage({ onProgress: (p) => progress.update(p) }).finally(() => progress.stop());
  say(`guest image: kernel ${image.kernelVersion}, ${image.dir}`);

  const dir = await mkdtemp(join(tmpdir(), "hop-demo-"));
  const res = new Resources();
  // Ctrl-C (or SIGTERM): stop the demo where it is and tear everything down; a second one kills the agents.
  let interrupted: NodeJS.Signals | undefined;
  let interrupt: (err: Error) => void = () => undefined;
  const interruption = new Promise<never>((_, reject) => (interrupt = reject));
  interruption.catch(() => undefined);
  const onSignal = (signal: NodeJS.Signals): void => {
    if (interrupted === undefined) {
      interrupted = signal;
      process.stderr.write(`\n${signal}: stopping the demo (again to kill the host agents at once)...\n`);
      interrupt(new DemoInterrupted(signal));
      return;
    }
    process.stderr.write(`${signal}: killing the host agents\n`);
    res.killAgents();
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  const t0 = performance.now();
  let failed = true;
  try {
    // Once the teardown has begun, whatever the interrupted steps still print is not news.
    const body = demo((s) => void (res.stopping ? undefined : say(s)), dir, res);
    body.catch(() => undefined); // after an interruption its remaining steps fail: the teardown reports
    await Promise.race([body, interruption]);
    failed = false;
  } finally {
    say(`\nstopping the host agents and the manager${failed ? ` (after ${interrupted !== undefined ? "the interruption" : "the failure"})` : ""}...`);
    const t1 = performance.now();
    const notes = await res.teardown(failed);
    for (const n of notes) say(`  ${n}`);
    say(`stopped ${res.agents.map((a) => a.name).sort().join(", ") || "no host agent"}${res.manager !== undefined ? " and the manager" : ""} in ${formatMs(performance.now() - t1)}`);
    if (opts.keep === true) say(`kept ${dir} (manager.db: the manager's inventory, tasks and events; datastore: the VM's disk)`);
    else await rm(dir, { recursive: true, force: true });
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    if (!failed) say(`demo done in ${formatMs(performance.now() - t0)}.`);
  }
}

async function demo(say: Say, dir: string, res: Resources): Promise<void> {
  const token = randomBytes(32).toString("hex");
  const root = isRoot();

  const manager = await res.start(serveManager({ listen: "127.0.0.1:0", db: join(dir, "manager.db"), token, log: res.managerLog }), (m) => (res.manager = m));
  say(`cluster manager on ${manager.url} (id ${manager.managerId}, inventory in ${join(dir, "manager.db")})`);
  const mc = new ManagerClient(manager.url, token);

  // The virtual network: a subnet no route of this machine uses; each agent has its own
  // loopback address as its VXLAN underlay. As root, host-a also gives this machine a way in.
  const subnet = await freeSubnet().catch(() => "10.99.0.0/24");
  const network = `demo:${randomInt(1000, 1 << 20)}:${subnet}`;
  const base = `127.${randomInt(64, 250)}.${randomInt(1, 250)}`;
  const underlay = { "host-a": `${base}.1`, "host-b": `${base}.2` };
  // Each agent in its own process group (Ctrl-C reaches only the demo, which stops them in order);
  // their logs go to our stderr until the teardown starts.
  const spawnAgent = (argv: readonly string[], o: SpawnOptions): ChildProcess => {
    const p = spawn(argv[0]!, argv.slice(1), o);
    p.stderr?.on("data", (d: Buffer) => {
      if (!res.stopping) process.stderr.write(d);
    });
    return p;
  };
  const common = {
    datastore: join(dir, "datastore"),
    token,
    networks: [network],
    manager: manager.url,
    capacityMiB: HOST_CAPACITY_MIB,
    detached: true,
    inheritStderr: false,
    spawn: spawnAgent,
  };
  const started = await Promise.allSettled(
    HOSTS.map((name) => {
      const other = name === "host-a" ? "host-b" : "host-a";
      const access = root && name === "host-a" ? { hostAccess: ["demo"] } : {};
      return res.start(startAgent({ ...common, name, underlay: underlay[name], vxlanRemotes: [underlay[other]], ...access }), (a) => res.agents.push(a));
    }),
  );
  for (const s of started) if (s.status === "rejected") throw s.reason;
  const agentA = res.agents.find((a) => a.name === "host-a")!;
  for (const name of HOSTS) {
    const x = res.agents.find((a) => a.name === name)!;
    say(`host agent ${x.name} on ${x.url} (pid ${x.proc.pid ?? "?"}), VXLAN endpoint ${x.vtep ?? "-"}, joining the manager`);
  }

  const tj = performance.now();
  const hosts = await waitForHosts(mc, res);
  say(`both hosts joined the manager in ${formatMs(performance.now() - tj)}:\n`);
  say(hostTable(hosts));
  const hostUrl = new Map(hosts.map((h) => [h.name, h.url]));

  // Host access is the agent's own business (the manager does not know about Linux gateways): ask host-a.
  const access = (await new HostClient(agentA.url, token).networks()).networks.find((n) => n.name === "demo")?.hostAccess;
  say(`\nvirtual network demo: ${subnet}${access !== undefined ? `, reachable from this machine through a Linux gateway (${access.address} in namespace ${access.namespace})` : " (not root: no Linux gateway, this machine cannot reach the guests by IP)"}`);

  say(`\ncreating and starting VM ${VM} on host-a through the manager (the first start of this hardware profile boots a template once)...`);
  const tc = performance.now();
  const vm = await mc.create({ name: VM, memoryMiB: 128, network: "demo", diskMiB: 32, host: "host-a", start: true });
  const createMs = performance.now() - tc;
  const tasks = (await mc.tasks({ vm: VM })).reverse();
  const info = await new HostClient(hostUrl.get(vm.host) ?? agentA.url, token).get(VM).catch(() => undefined);
  say(`${VM} is ${vm.state} on ${vm.host} after ${formatMs(createMs)} (tasks ${tasks.map((t) => `${t.kind} ${shortId(t.id)}`).join(", ")})`);
  if (info !== undefined) say(`${vm.host} started it from ${info.startedFrom ?? "?"} in ${info.startMs ?? "?"} ms, VM process pid ${info.pid ?? "?"}`);

  const consoleText: string[] = [];
  const ws = mc.console(VM);
  res.own(() => ws.terminate());
  ws.on("message", (data: RawData, isBinary: boolean) => {
    if (isBinary) consoleText.push(rawText(data, "utf8"));
  });
  ws.on("error", () => undefined);
  await waitOpen(ws);
  await mc.exec(VM, `echo "hello from $(hostname), $(uname -sr), $(cat /proc/meminfo | head -1 | tr -s ' ')" > /dev/ttyS0`);
  await mc.exec(VM, "hb -i 100 -n 5 > /dev/ttyS0");
  await sleep(300);
  ws.close();
  const lines = consoleText.join("").split("\n").filter((l) => l.trim() !== "").slice(-10);
  say(`\n-- ${VM} serial console through the manager (last lines) --`);
  for (const l of lines) say(`  | ${l.replace(/\r/g, "")}`);

  say("\n-- the TCP service in the guest (kvd on port 7000), asked by a client in the guest (exec through the manager) --");
  const rows: string[][] = [["request", "reply", "ms"]];
  for (const req of ["PING", "SET owner demo", "INCR visits", "INCR visits", "INCR visits", "GET owner", "STATS"]) {
    const t = performance.now();
    const r = await mc.exec(VM, `kvc 127.0.0.1 7000 ${req}`);
    rows.push([req, r.stdout.trim() || `(exit ${r.exitCode}) ${r.stderr.trim()}`, (performance.now() - t).toFixed(1)]);
  }
  say(table(rows));

  const disk = await mc.exec(VM, "echo written-at-$(date +%s) > /data/demo.txt && sync && df -h /data | tail -1");
  say(`\ndata disk: ${disk.stdout.trim()}`);
  say(`guest network: ${(await mc.exec(VM, "ip -4 -o addr show eth0")).stdout.trim().replace(/\\\s+/g, " ")}`);

  const guestIp = vm.config.ip?.split("/")[0] ?? "";
  await migrationTour(say, mc, { token, hostUrl, res }, access !== undefined && guestIp !== "" ? guestIp : undefined);

  say(`\nshutting ${VM} down through the manager (its guest agent powers it off)...`);
  const off = await mc.shutdown(VM, { timeoutMs: 20_000 });
  say(`${VM} is ${off.state}`);

  say("\n-- the manager's tasks --");
  const all = (await mc.tasks({ limit: 1000 })).reverse();
  say(
    table([
      ["task", "kind", "vm", "detail", "state", "duration"],
      ...all.map((t) => {
        const ms = taskMs(t);
        return [shortId(t.id), t.kind, t.vm ?? "-", taskDetail(t), t.state + (t.error !== undefined ? ` (${t.error.code})` : ""), ms !== undefined ? formatMs(ms) : "-"];
      }),
    ]),
  );
  const counts = await countEvents(mc);
  const total = [...counts.values()].reduce((a, b) => a + b, 0);
  const byType = [...counts.entries()].sort((x, y) => y[1] - x[1] || x[0].localeCompare(y[0]));
  say(`\nthe manager recorded ${total} events: ${byType.map(([type, n]) => `${n} ${type}`).join(", ")}`);
}

/** Polls the manager until both hosts are connected (fails if an agent exits or after JOIN_TIMEOUT_MS). */
async function waitForHosts(mc: ManagerClient, res: Resources): Promise<HostInfo[]> {
  const deadline = performance.now() + JOIN_TIMEOUT_MS;
  let hosts: HostInfo[] = [];
  for (;;) {
    if (res.stopping) throw new HopError("INTERRUPTED", "the demo is stopping");
    const dead = res.agents.find((a) => a.proc.exitCode !== null || a.proc.signalCode !== null);
    if (dead !== undefined) throw new HopError("AGENT_FAILED", `host agent ${dead.name} exited while joining the manager: ${dead.stderr().slice(-2000)}`);
    let lastError = "";
    try {
      hosts = await mc.hosts();
    } catch (err) {
      lastError = errorMessage(err);
    }
    const missing = HOSTS.filter((n) => !hosts.some((h) => h.name === n && h.connection === "connected"));
    if (missing.length === 0) return hosts.filter((h) => (HOSTS as readonly string[]).includes(h.name));
    if (performance.now() > deadline) {
      throw new HopError("DEMO_JOIN_TIMEOUT", `not connected to the manager after ${JOIN_TIMEOUT_MS / 1000} s: ${missing.join(", ")}${lastError !== "" ? ` (last error: ${lastError})` : ""}`);
    }
    await sleep(100);
  }
}

function taskDetail(t: TaskRow): string {
  const p = t.params;
  const s = (v: unknown): string => (typeof v === "string" ? v : "?");
  if (t.kind === "vm.migrate") return `${s(p["from"])} -> ${s(p["to"])}, ${s(p["mode"])}`;
  if (t.kind === "vm.create") return `on ${s(p["host"])}${p["start"] === true ? ", then start" : ""}`;
  return t.host !== undefined ? `on ${t.host}` : "-";
}

/** The number of events the manager stored, by type. */
async function countEvents(mc: ManagerClient): Promise<Map<string, number>> {
  const counts = new Map<string, number>();
  let after = 0;
  for (;;) {
    const page = await mc.listEvents({ afterId: after, limit: 1000 });
    for (const e of page) counts.set(e.type, (counts.get(e.type) ?? 0) + 1);
    const last = page[page.length - 1];
    if (page.length < 1000 || last === undefined) return counts;
    after = last.id;
  }
}

function rawText(data: RawData, encoding: BufferEncoding): string {
  const buf = Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data);
  return buf.toString(encoding);
}

/** The client's view of the guest while it moves: reply times and counter values. */
interface TourClient {
  label: string;
  times: number[];
  values: number[];
  errors(): number;
  notes(): string[];
  /** Stops sending and waits for the answers still due. */
  stop(): Promise<void>;
  /** Stops at once (teardown). */
  close(): void;
}

/**
 * The real client (root): a TCP connection from this machine to kvd in the guest, through the
 * Linux gateway, an INCR every 5 ms with every reply checked.
 */
async function tcpClient(ip: string): Promise<TourClient> {
  const probe = await KvdProbe.connect({ host: ip, mode: "incr", key: "clicks", intervalMs: 5 });
  probe.start();
  let final: KvdProbeStats | undefined;
  return {
    label: `a TCP client on this machine (connected to ${ip}:7000 through the Linux gateway), INCR every 5 ms`,
    times: probe.replyTimes,
    values: probe.replyValues,
    errors: () => probe.stats().errors,
    notes: () => {
      const st = final ?? probe.stats();
      return [`one TCP connection for the whole tour: ${st.closed ? "it broke" : "open throughout"}, ${st.replies} of ${st.sent} requests answered, ${st.errors} errors${st.errorMessages.length > 0 ? ` (${st.errorMessages.slice(0, 3).join("; ")})` : ""}`];
    },
    stop: async () => {
      final = await probe.stop();
      probe.close();
    },
    close: () => probe.close(),
  };
}

/** Not root: the guest's own kvc, run through the manager's exec (it goes to whichever host has the VM), INCR every 20 ms. */
function execClient(mc: ManagerClient): TourClient {
  const times: number[] = [];
  const values: number[] = [];
  let failures = 0;
  let running = true;
  const loop = (async () => {
    while (running) {
      try {
        const r = await mc.exec(VM, "kvc 127.0.0.1 7000 INCR clicks", { timeoutMs: 10_000 });
        const m = /VALUE (\d+)/.exec(r.stdout);
        if (m?.[1] !== undefined) {
          times.push(performance.now());
          values.push(Number(m[1]));
        }
      } catch {
        // The VM moved under the request (the manager still named the old host): ask again.
        failures++;
      }
      await sleep(20);
    }
  })();
  return {
    label: "the guest's kvc through the manager's exec, INCR every 20 ms (not root: this machine has no route to the guest)",
    times,
    values,
    errors: () => 0,
    notes: () => {
      // An INCR whose exec was cut off may have run in the guest all the same: its value never came back.
      const first = values[0];
      const last = values[values.length - 1];
      const unseen = first !== undefined && last !== undefined ? last - first + 1 - values.length : 0;
      return [`${failures} exec request(s) cut off by a move and sent again${unseen > 0 ? `; ${unseen} of them had incremented the counter before the move cut their reply off (the counter's gaps)` : ""}`];
    },
    stop: async () => {
      running = false;
      await loop;
    },
    close: () => {
      running = false;
    },
  };
}

/** Heartbeat lines ("HB <seq>") arriving on a console socket, with their arrival times. */
function heartbeats(ws: WebSocket, into: { seq: number; at: number }[]): void {
  let partial = "";
  ws.on("message", (data: RawData, isBinary: boolean) => {
    if (!isBinary) return;
    const now = performance.now();
    const lines = (partial + rawText(data, "latin1")).split("\n");
    partial = lines.pop() ?? "";
    for (const l of lines) {
      const m = /HB (\d+)/.exec(l);
      if (m?.[1] !== undefined) into.push({ seq: Number(m[1]), at: now });
    }
  });
  ws.on("error", () => undefined);
}

/** The longest time between two heartbeats that arrived after `from`. */
function longestSilence(beats: readonly { at: number }[], from: number): number {
  const window = beats.filter((x) => x.at >= from);
  let silence = 0;
  for (let i = 1; i < window.length; i++) silence = Math.max(silence, window[i]!.at - window[i - 1]!.at);
  return silence;
}

/**
 * Breaks in a heartbeat sequence (a beat lost or repeated). Beats read from two hosts' consoles
 * can arrive out of order around a switchover (two connections): they are taken in sequence order.
 */
function sequenceBreaks(beats: readonly { seq: number }[]): number {
  const seqs = beats.map((b) => b.seq).sort((a, b) => a - b);
  return seqs.filter((v, i) => i > 0 && v !== seqs[i - 1]! + 1).length;
}

/**
 * Moves demo1 back and forth through the manager (three live migrations, then one quick
 * migration) while a client keeps asking the VM's TCP service and the guest prints a heartbeat
 * every 10 ms on its serial console; then prints what the client saw next to what the hosts
 * measured. The heartbeats are read twice: on the manager's console, which follows the VM (it
 * re-attaches to the new host after a move), and straight from the console of the host the VM
 * is arriving on (opened when the manager reports the VM incoming there), which shows how long
 * the guest itself was silent.
 */
async function migrationTour(say: Say, mc: ManagerClient, ctx: { token: string; hostUrl: Map<string, string>; res: Resources }, guestIp: string | undefined): Promise<void> {
  say(`\n-- moving ${VM} through the manager while a client talks to it --`);
  const { res } = ctx;
  const viaManager: { seq: number; at: number }[] = [];
  const atHost: { seq: number; at: number }[] = [];
  const watchHost = (host: string): void => {
    const url = ctx.hostUrl.get(host);
    if (url === undefined) return;
    const ws = new HostClient(url, ctx.token).console(VM);
    res.own(() => ws.terminate());
    heartbeats(ws, atHost);
  };
  const events = mc.events();
  res.own(() => events.terminate());
  events.on("message", (data: RawData) => {
    const e = parseClusterEvent(data);
    if (e.type === "vm.state" && e.vm === VM && e.host !== undefined && (e.data as { state?: string } | undefined)?.state === "incoming") watchHost(e.host);
  });
  events.on("error", () => undefined);
  await waitOpen(events);
  const mws = mc.console(VM);
  res.own(() => mws.terminate());
  heartbeats(mws, viaManager);
  await waitOpen(mws);
  watchHost("host-a");
  // The consoles' scrollback holds the earlier `hb -n 5` run: count only the new heartbeats.
  await sleep(300);
  viaManager.length = 0;
  atHost.length = 0;
  await mc.exec(VM, "hb -i 10 > /dev/ttyS0 2>&1 &");

  const client = guestIp !== undefined ? await tcpClient(guestIp) : execClient(mc);
  res.own(() => client.close());
  let ping: Pinger | undefined;
  if (guestIp !== undefined) {
    const p = new Pinger(guestIp, 10);
    res.own(() => p.stop());
    ping = p;
  }
  say(`client: ${client.label}${ping !== undefined ? "; ping every 10 ms alongside" : ""}`);
  say("console: the heartbeats are read on the manager's console (it follows the VM) and on the console of the host the VM is arriving on");
  if (ping === undefined) say("(an exec that a move cuts off is logged as an error by the host and the manager; the client sends it again)");
  // Between moves, a host that took the VM in warms its next spare VM process (~1 s at a low priority).
  await sleep(MOVE_SPACING_MS);

  const rows: string[][] = [
    ["move", "mode", "task", "total ms", "pause ms (hosts)", "heartbeat silence ms (host / manager)", "client: longest gap ms", "replies", "errors", "counter", ...(ping !== undefined ? ["pings lost"] : [])],
  ];
  const moves: { from: string; to: string; mode: "live" | "quick" }[] = [
    { from: "host-a", to: "host-b", mode: "live" },
    { from: "host-b", to: "host-a", mode: "live" },
    { from: "host-a", to: "host-b", mode: "live" },
    { from: "host-b", to: "host-a", mode: "quick" },
  ];
  for (const move of moves) {
    const t0 = performance.now();
    const errors0 = client.errors();
    const seq0 = ping?.seqAt(t0);
    const { taskId, report } = await mc.migrate(VM, { to: move.to, mode: move.mode });
    const t1 = performance.now();
    say(`  ${move.from} -> ${move.to} (${move.mode}): task ${shortId(taskId)}, migration ${formatMs(report.totalMs)}, VM paused ${report.downtimeMs.toFixed(1)} ms; the manager answered after ${formatMs(t1 - t0)}`);
    await sleep(MOVE_SPACING_MS);
    // What the client saw from the request to 1 s after the VM ran on the target.
    let gap = 0;
    let prev = t0;
    const values: number[] = [];
    for (let i = 0; i < client.times.length; i++) {
      const t = client.times[i]!;
      if (t < t0 || t > t1 + 1000) continue;
      gap = Math.max(gap, t - prev);
      prev = t;
      values.push(client.values[i]!);
    }
    const inOrder = values.every((v, i) => i === 0 || v === values[i - 1]! + 1);
    const lost = ping !== undefined && seq0 !== undefined ? ping.lost(seq0, ping.seqAt(t1 + 1000) ?? seq0).length : undefined;
    rows.push([
      `${move.from} -> ${move.to}`,
      move.mode,
      shortId(taskId),
      report.totalMs.toFixed(0),
      report.downtimeMs.toFixed(1),
      `${longestSilence(atHost, t0 - 100).toFixed(0)} / ${longestSilence(viaManager, t0 - 100).toFixed(0)}`,
      gap.toFixed(0),
      String(values.length),
      String(client.errors() - errors0),
      values.length > 0 ? `${values[0]}..${values[values.length - 1]}${inOrder ? "" : " (gap!)"}` : "-",
      ...(lost !== undefined ? [String(lost)] : []),
    ]);
  }
  await client.stop();
  await ping?.stop();
  say("");
  say(table(rows));
  const seqText = (beats: readonly { seq: number }[]): string => {
    const holes = sequenceBreaks(beats);
    return `${beats.length} received, ${holes === 0 ? "sequence continuous (no beat lost or repeated)" : `${holes} breaks in the sequence`}`;
  };
  say(`heartbeats on the manager's console: ${seqText(viaManager)}`);
  say(`heartbeats on the hosts' consoles: ${seqText(atHost)}`);
  const vals = client.values.filter(Number.isFinite);
  say(`client: ${vals.length} replies, counter ${vals[0] ?? "-"}..${vals[vals.length - 1] ?? "-"}; ${client.notes().join("; ")}`);
  const where = await mc.get(VM);
  say(`${VM} is ${where.state} on ${where.host} (generation ${where.generation}); guest clock: ${(await mc.exec(VM, "date -u +%H:%M:%S")).stdout.trim()} (host: ${new Date().toISOString().slice(11, 19)})`);
}

export function register(program: Command): void {
  program
    .command("demo")
    .description("build the guest image if needed, start a cluster manager and two host agents on loopback, run a real Linux VM through the manager and move it between the hosts")
    .option("--keep", "keep the demo's temporary directory (the manager's database, the datastore) instead of removing it")
    .action(async (opts: { keep?: boolean }) => {
      try {
        await runDemo(opts.keep === true ? { keep: true } : {});
      } catch (err) {
        if (!(err instanceof DemoInterrupted)) throw err;
        process.stderr.write(`${err.message}\n`);
        process.exitCode = 128 + (osConstants.signals[err.signal] ?? 2);
      }
    });
}
