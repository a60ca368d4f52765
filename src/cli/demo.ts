/**
 * `hop demo`: builds the guest image if needed, starts two host agents on loopback joined by a
 * virtual network (VXLAN between their own loopback addresses), starts a real Linux VM on the
 * first one from the template, shows its serial console, talks to the TCP service inside it,
 * then moves it back and forth (live, then quick) while a client keeps talking to it. As root
 * the client is a real TCP client on this machine reaching the guest by IP through the first
 * agent's Linux gateway (and ping runs alongside); otherwise it is the guest's own kvc, run
 * through the guest agent of whichever host has the VM.
 */
import { randomBytes, randomInt } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Command } from "commander";
import { ensureImage } from "../image/index.js";
import type WebSocket from "ws";
import { startAgent, type AgentProcess } from "../host/agents.js";
import { HostClient, waitOpen } from "../host/client.js";
import { KvdProbe, Pinger, type KvdProbeStats } from "../host/probes.js";
import { freeSubnet, isRoot } from "../net/index.js";
import { progressReporter } from "./image.js";

function table(rows: string[][]): string {
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length))) ?? [];
  return rows.map((r, n) => r.map((c, i) => c.padEnd(widths[i] ?? 0)).join("  ") + (n === 0 ? "\n" + widths.map((w) => "-".repeat(w)).join("  ") : "")).join("\n");
}

export async function runDemo(opts: { keep?: boolean } = {}): Promise<void> {
  const say = (s: string): void => void process.stdout.write(`${s}\n`);
  say("== Hopvisor demo ==");
  const progress = progressReporter(process.stdout.isTTY, process.stdout);
  const image = await ensureImage({ onProgress: (p) => progress.update(p) }).finally(() => progress.stop());
  say(`guest image: kernel ${image.kernelVersion}, ${image.dir}`);

  const dir = await mkdtemp(join(tmpdir(), "hop-demo-"));
  const token = randomBytes(32).toString("hex");
  const agents: AgentProcess[] = [];
  const root = isRoot();
  try {
    // The virtual network: a subnet no route of this machine uses; each agent has its own
    // loopback address as its VXLAN underlay. As root, host-a also gives this machine a way in.
    const subnet = await freeSubnet().catch(() => "10.99.0.0/24");
    const network = `demo:${randomInt(1000, 1 << 20)}:${subnet}`;
    const base = `127.${randomInt(64, 250)}.${randomInt(1, 250)}`;
    const underlay = { a: `${base}.1`, b: `${base}.2` };
    // host-b first, so host-a can be told where it is; host-a's address goes to host-b through a URL in each migrate call.
    const datastore = join(dir, "datastore");
    const common = { datastore, token, networks: [network] };
    const agentB = await startAgent({ ...common, name: "host-b", underlay: underlay.b, vxlanRemotes: [underlay.a] });
    agents.push(agentB);
    const agentA = await startAgent({ ...common, name: "host-a", underlay: underlay.a, vxlanRemotes: [underlay.b], peers: [`host-b=${agentB.url}`], ...(root ? { hostAccess: ["demo"] } : {}) });
    agents.push(agentA);
    for (const x of [agentA, agentB]) say(`host agent ${x.name} on ${x.url}, VXLAN endpoint ${x.vtep ?? "-"}`);
    const a = new HostClient(agentA.url, token);
    const b = new HostClient(agentB.url, token);
    const access = (await a.networks()).networks.find((n) => n.name === "demo")?.hostAccess;
    say(`virtual network demo: ${subnet}${access !== undefined ? `, reachable from this machine through a Linux gateway (${access.address} in namespace ${access.namespace})` : " (not root: no Linux gateway, this machine cannot reach the guests by IP)"}`);

    await a.create({ name: "demo1", memoryMiB: 128, network: "demo", diskMiB: 32 });
    say("starting VM demo1 on host-a (the first start of this hardware profile boots a template once)...");
    const console: string[] = [];
    const info = await a.start("demo1");
    say(`demo1 is ${info.state} (started from ${info.startedFrom ?? "?"} in ${info.startMs ?? "?"} ms, pid ${info.pid ?? "?"})`);

    const ws = a.console("demo1");
    ws.on("message", (data: Buffer, isBinary: boolean) => {
      if (isBinary) console.push(data.toString("utf8"));
    });
    await waitOpen(ws);
    await a.exec("demo1", `echo "hello from $(hostname), $(uname -sr), $(cat /proc/meminfo | head -1 | tr -s ' ')" > /dev/ttyS0`);
    await a.exec("demo1", "hb -i 100 -n 5 > /dev/ttyS0");
    await new Promise((r) => setTimeout(r, 300));
    ws.close();
    const lines = console.join("").split("\n").filter((l) => l.trim() !== "").slice(-10);
    say("\n-- demo1 serial console (last lines) --");
    for (const l of lines) say(`  | ${l.replace(/\r/g, "")}`);

    say("\n-- the TCP service in the guest (kvd on port 7000), asked by a client in the guest --");
    const rows: string[][] = [["request", "reply", "ms"]];
    for (const req of ["PING", "SET owner demo", "INCR visits", "INCR visits", "INCR visits", "GET owner", "STATS"]) {
      const t0 = performance.now();
      const r = await a.exec("demo1", `kvc 127.0.0.1 7000 ${req}`);
      rows.push([req, r.stdout.trim() || `(exit ${r.exitCode}) ${r.stderr.trim()}`, (performance.now() - t0).toFixed(1)]);
    }
    say(table(rows));

    const disk = await a.exec("demo1", "echo written-at-$(date +%s) > /data/demo.txt && sync && df -h /data | tail -1");
    say(`\ndata disk: ${disk.stdout.trim()}`);
    say(`guest network: ${(await a.exec("demo1", "ip -4 -o addr show eth0")).stdout.trim()}`);

    const guestIp = info.config.ip?.split("/")[0] ?? "";
    const where = await migrationTour(say, { a: { client: a, url: agentA.url }, b: { client: b, url: agentB.url } }, access !== undefined ? guestIp : undefined);

    if (opts.keep !== true) {
      say("\nshutting demo1 down through its guest agent...");
      const off = await where.shutdown("demo1", { timeoutMs: 20_000 });
      say(`demo1 is ${off.state}`);
    }
    say("demo done.");
  } finally {
    await Promise.all(agents.map((x) => x.stop()));
    await rm(dir, { recursive: true, force: true });
  }
}

interface Side {
  client: HostClient;
  url: string;
}

/** The client's view of the guest while it moves: reply times and counter values. */
interface TourClient {
  label: string;
  times: number[];
  values: number[];
  errors(): number;
  notes(): string[];
  stop(): Promise<void>;
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
  };
}

/** Not root: the guest's own kvc, run through the guest agent of whichever host has the VM, INCR every 20 ms. */
function execClient(hosts: { a: Side; b: Side }, here: () => "a" | "b", other: (h: "a" | "b") => void): TourClient {
  const times: number[] = [];
  const values: number[] = [];
  let failures = 0;
  let running = true;
  const loop = (async () => {
    while (running) {
      try {
        const r = await hosts[here()].client.exec("demo1", "kvc 127.0.0.1 7000 INCR clicks", { timeoutMs: 10_000 });
        const m = /VALUE (\d+)/.exec(r.stdout);
        if (m?.[1] !== undefined) {
          times.push(performance.now());
          values.push(Number(m[1]));
        }
      } catch {
        // The VM moved under the request: ask the other host.
        failures++;
        other(here());
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  return {
    label: "the guest's kvc through the guest agent, INCR every 20 ms (not root: this machine has no route to the guest)",
    times,
    values,
    errors: () => 0,
    notes: () => [`${failures} request(s) re-sent to the new host after a move`],
    stop: async () => {
      running = false;
      await loop;
    },
  };
}

/**
 * Moves demo1 back and forth (three live migrations, then one quick migration) while a client
 * keeps asking the VM's TCP service and the guest prints a heartbeat every 10 ms on its serial
 * console; then prints what the client saw next to what the hosts measured. Returns the client
 * of the host the VM ends on.
 */
async function migrationTour(say: (s: string) => void, hosts: { a: Side; b: Side }, guestIp: string | undefined): Promise<HostClient> {
  say("\n-- moving demo1 while a client talks to it --");
  let here: "a" | "b" = "a";
  const other = (h: "a" | "b"): "a" | "b" => (h === "a" ? "b" : "a");
  // Heartbeats from the consoles of both hosts (a host's console stream opens once the VM is there).
  const beats: { seq: number; at: number }[] = [];
  const sockets: WebSocket[] = [];
  const watchConsole = (side: Side): void => {
    const ws = side.client.console("demo1");
    let partial = "";
    ws.on("message", (data: Buffer, isBinary: boolean) => {
      if (!isBinary) return;
      const now = performance.now();
      const lines = (partial + data.toString("latin1")).split("\n");
      partial = lines.pop() ?? "";
      for (const l of lines) {
        const m = /HB (\d+)/.exec(l);
        if (m?.[1] !== undefined) beats.push({ seq: Number(m[1]), at: now });
      }
    });
    ws.on("error", () => undefined);
    sockets.push(ws);
  };
  for (const side of [hosts.a, hosts.b]) {
    const ev = side.client.events();
    ev.on("message", (data: Buffer) => {
      const e = JSON.parse(data.toString("utf8")) as { type: string; vm?: string; state?: string };
      if (e.type === "vm.state" && e.vm === "demo1" && e.state === "incoming") watchConsole(side);
    });
    ev.on("error", () => undefined);
    sockets.push(ev);
    await waitOpen(ev);
  }
  watchConsole(hosts.a);
  // The console's scrollback holds the earlier `hb -n 5` run: count only the new heartbeats.
  await new Promise((r) => setTimeout(r, 300));
  beats.length = 0;
  await hosts.a.client.exec("demo1", "hb -i 10 > /dev/ttyS0 2>&1 &");

  const client = guestIp !== undefined ? await tcpClient(guestIp) : execClient(hosts, () => here, (h) => (here = other(h)));
  const ping = guestIp !== undefined ? new Pinger(guestIp, 10) : undefined;
  say(`client: ${client.label}${ping !== undefined ? "; ping every 10 ms alongside" : ""}`);
  await new Promise((r) => setTimeout(r, 1500));

  const rows: string[][] = [["move", "mode", "total ms", "pause on hosts ms", "heartbeat silence ms", "client: longest gap ms", "replies", "errors", "counter", ...(ping !== undefined ? ["pings lost"] : [])]];
  const moves: { to: "a" | "b"; mode: "live" | "quick" }[] = [
    { to: "b", mode: "live" },
    { to: "a", mode: "live" },
    { to: "b", mode: "live" },
    { to: "a", mode: "quick" },
  ];
  for (const move of moves) {
    const from = other(move.to);
    const t0 = performance.now();
    const errors0 = client.errors();
    const seq0 = ping?.seqAt(t0);
    const report = await hosts[from].client.migrate("demo1", { to: hosts[move.to].url, mode: move.mode });
    here = move.to;
    const t1 = performance.now();
    await new Promise((r) => setTimeout(r, 1000));
    const window = beats.filter((x) => x.at >= t0 - 100);
    let silence = 0;
    for (let i = 1; i < window.length; i++) silence = Math.max(silence, window[i]!.at - window[i - 1]!.at);
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
      `host-${from} -> host-${move.to}`,
      move.mode,
      report.totalMs.toFixed(0),
      report.downtimeMs.toFixed(1),
      silence.toFixed(0),
      gap.toFixed(0),
      String(values.length),
      String(client.errors() - errors0),
      values.length > 0 ? `${values[0]}..${values[values.length - 1]}${inOrder ? "" : " (gap!)"}` : "-",
      ...(lost !== undefined ? [String(lost)] : []),
    ]);
  }
  await client.stop();
  await ping?.stop();
  const seqs = beats.map((x) => x.seq);
  const holes = seqs.filter((v, i) => i > 0 && v !== seqs[i - 1]! + 1).length;
  for (const ws of sockets) ws.close();
  say(table(rows));
  say(`heartbeats: ${beats.length} received, ${holes === 0 ? "sequence continuous (no beat lost or repeated)" : `${holes} breaks in the sequence`}`);
  const vals = client.values.filter(Number.isFinite);
  say(`client: ${vals.length} replies, counter ${vals[0] ?? "-"}..${vals[vals.length - 1] ?? "-"}; ${client.notes().join("; ")}`);
  say(`guest clock after the moves: ${(await hosts[here].client.exec("demo1", "date -u +%H:%M:%S")).stdout.trim()} (host: ${new Date().toISOString().slice(11, 19)})`);
  return hosts[here].client;
}

export function register(program: Command): void {
  program
    .command("demo")
    .description("build the guest image if needed, start two host agents on loopback, run a real Linux VM and talk to it")
    .action(async () => {
      await runDemo();
    });
}
