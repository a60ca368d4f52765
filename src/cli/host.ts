/** `hop host serve`: run a host agent (supervisor + HTTP/WS API) in the foreground. */
import { mkdir } from "node:fs/promises";
import { hostname } from "node:os";
import { join, resolve } from "node:path";
import { Option, type Command } from "commander";
import { HopError } from "../common/errors.js";
import { createLogger } from "../common/log.js";
import { parseListen, serveHost } from "../host/server.js";
import { runUntilSignal, serveToken } from "./serve.js";
import { intOption } from "./common.js";

interface ServeOptions {
  name: string;
  listen: string;
  datastore: string;
  token?: string;
  tokenFile?: string;
  migrationListen: string;
  peer: string[];
  underlay?: string;
  vxlanRemote: string[];
  network: string[];
  hostAccess: string[];
  manager?: string;
  advertise?: string;
  capacityMib?: number;
  cpus?: number;
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

/** --peer NAME=URL, repeated. */
function parsePeers(values: string[]): Map<string, string> {
  const peers = new Map<string, string>();
  for (const v of values) {
    const m = /^([A-Za-z0-9][A-Za-z0-9._-]*)=(https?:\/\/.+)$/.exec(v.trim());
    if (m === null) throw new HopError("BAD_PEER", `--peer '${v}' must be NAME=URL, e.g. hostB=http://127.0.0.1:7402`);
    peers.set(m[1]!, m[2]!);
  }
  return peers;
}

export function register(program: Command): void {
  const host = program.command("host").description("run a host agent");

  host
    .command("serve")
    .description("run a host agent in the foreground (SIGINT/SIGTERM stop its VMs and exit)")
    .requiredOption("--datastore <dir>", "directory holding the VM definitions and disks")
    .option("--name <name>", "host name", hostname())
    .option("--listen <addr>", "address to listen on: HOST:PORT or :PORT (all interfaces)", "127.0.0.1:7401")
    .addOption(new Option("--token <token>", "bearer token clients must send (default: <datastore>/host-token, generated if absent)").conflicts("tokenFile"))
    .option("--token-file <file>", "read the token from this file")
    .option("--migration-listen <addr>", "where to accept live migrations: HOST:PORT (port 0: any free port)", "127.0.0.1:0")
    .option("--peer <name=url>", "another host agent of the cluster (repeatable); VMs can migrate to it by name", collect, [] as string[])
    .option("--underlay <addr[:port]>", "this host's address for the VXLAN overlay between hosts (UDP port default 4789, the same on every host)")
    .option("--vxlan-remote <addr[:port]>", "another host's underlay address (repeatable): virtual networks span these hosts", collect, [] as string[])
    .option("--network <name:vni:subnet[:gateway]>", "carry a virtual network, e.g. net1:100:10.10.0.0/24 (repeatable; defined in the datastore if new)", collect, [] as string[])
    .option("--host-access <network>", "let programs on this machine reach the network's guests by IP through a Linux gateway (root; repeatable)", collect, [] as string[])
    .option("--manager <url>", "join this cluster manager (needs --token or --token-file: the cluster token, used in both directions); without its lease the host runs no VM")
    .option("--advertise <url>", "the URL the manager uses to reach this host agent (default: the listen URL)")
    .option("--capacity-mib <n>", "memory offered to the cluster's VMs, MiB (default: 80% of this machine's)", intOption(64, 64 * 1024 * 1024))
    .option("--cpus <n>", "CPUs offered to the cluster (default: this machine's)", intOption(1, 4096))
    .action(async (opts: ServeOptions) => {
      const name = opts.name.trim();
      if (name === "") throw new HopError("BAD_HOST_NAME", "--name must not be empty");
      if (opts.manager !== undefined && opts.token === undefined && opts.tokenFile === undefined) {
        throw new HopError("MANAGER_NEEDS_TOKEN", "--manager needs the cluster token: give --token or --token-file");
      }
      const datastore = resolve(opts.datastore);
      await mkdir(datastore, { recursive: true });
      const { token, note } = await serveToken(opts, join(datastore, "host-token"), "token");
      if (note !== undefined) process.stderr.write(`${note}\n`);

      const log = createLogger("host", { host: name });
      // Loaded here so that the other commands do not pull in the emulator and image builder.
      const { LocalSupervisor } = await import("../host/supervisor.js");
      const { httpPeerResolver } = await import("../host/client.js");
      const { parseNetworkArg } = await import("../host/network.js");
      const networks = opts.network.map(parseNetworkArg);
      const supervisor = new LocalSupervisor({
        hostName: name,
        datastore,
        log,
        token,
        migrationListen: parseListen(opts.migrationListen),
        peers: httpPeerResolver(token, parsePeers(opts.peer)),
        network: {
          ...(opts.underlay !== undefined ? { underlay: opts.underlay } : {}),
          remotes: opts.vxlanRemote,
          networks,
          hostAccess: opts.hostAccess,
        },
      });
      try {
        await supervisor.init();
      } catch (err) {
        await supervisor.close().catch(() => undefined);
        throw err;
      }
      let server;
      try {
        server = await serveHost({ supervisor, migrations: supervisor, networks: supervisor, token, listen: opts.listen, log });
      } catch (err) {
        await supervisor.close();
        throw err;
      }
      const vtep = supervisor.net.vtepEndpoint;
      if (vtep !== undefined) process.stdout.write(`host ${name} vxlan endpoint ${vtep}\n`);
      process.stdout.write(`host ${name} listening on ${server.url}\n`);

      let link: import("../host/managerlink.js").ManagerLink | undefined;
      if (opts.manager !== undefined) {
        const { ManagerLink } = await import("../host/managerlink.js");
        try {
          link = new ManagerLink({
            supervisor,
            managerUrl: opts.manager,
            token,
            hostName: name,
            agentUrl: opts.advertise ?? server.url,
            ...(opts.capacityMib !== undefined || opts.cpus !== undefined
              ? { capacity: { ...(opts.cpus !== undefined ? { cpus: opts.cpus } : {}), ...(opts.capacityMib !== undefined ? { memoryMiB: opts.capacityMib } : {}) } }
              : {}),
            log,
          });
        } catch (err) {
          await server.close();
          await supervisor.close();
          throw err;
        }
        link.start();
        process.stdout.write(`host ${name} joining the cluster manager at ${link.managerUrl}\n`);
      }
      const managerLink = link;

      const srv = server;
      await runUntilSignal(log, "host agent", async () => {
        try {
          await managerLink?.stop();
        } catch (err) {
          log.error({ err }, "stopping the manager link failed");
        }
        try {
          await srv.close();
        } catch (err) {
          log.error({ err }, "closing the API server failed");
        }
        await supervisor.close();
      });
    });
}
