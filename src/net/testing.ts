/**
 * Stand-ins for guests, used by the tests (and handy when wiring): a recording port, and a
 * responder that answers ARP and ICMP echo for one IP the way a guest's kernel would.
 */
import { ArpOp, arpFrame, EtherType, IcmpType, icmpEchoFrame, IpProtocol, normalizeMac, parseArp, parseEthernet, parseIcmpEcho, parseIpv4 } from "./frames.js";
import type { VirtualSwitch } from "./switch.js";

/** A settable clock for ageing tests. */
export class FakeClock {
  t = 1_000_000;
  readonly now = (): number => this.t;
  advance(ms: number): void {
    this.t += ms;
  }
}

/** A port that records what it is given (a JS callback standing in for a VM process). */
export class RecordingPort {
  readonly frames: Buffer[] = [];
  private waiters: { pred: (f: Buffer) => boolean; resolve: (f: Buffer) => void }[] = [];
  constructor(
    readonly sw: VirtualSwitch,
    readonly id: string,
    readonly network: string,
    readonly mac: string,
    opts: { pin?: boolean; ip?: string } = {},
  ) {
    const portOpts: { mac?: string; ip?: string } = {};
    if (opts.pin !== false) portOpts.mac = mac;
    if (opts.ip !== undefined) portOpts.ip = opts.ip;
    sw.attachPort(id, network, (f) => this.receive(f), portOpts);
  }

  private receive(f: Buffer): void {
    this.frames.push(f);
    const still: typeof this.waiters = [];
    for (const w of this.waiters) {
      if (w.pred(f)) w.resolve(f);
      else still.push(w);
    }
    this.waiters = still;
  }

  send(frame: Buffer): void {
    this.sw.input(this.id, frame);
  }

  /** Resolves with the first frame (already received or later) matching `pred`. */
  waitFor(pred: (f: Buffer) => boolean, timeoutMs = 2000): Promise<Buffer> {
    const have = this.frames.find(pred);
    if (have !== undefined) return Promise.resolve(have);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`port ${this.id}: no matching frame within ${timeoutMs} ms (got ${this.frames.length})`)), timeoutMs);
      this.waiters.push({
        pred,
        resolve: (f) => {
          clearTimeout(t);
          resolve(f);
        },
      });
    });
  }

  clear(): void {
    this.frames.length = 0;
  }
}

export interface ResponderStats {
  arpRequests: number;
  arpReplies: number;
  echoRequests: number;
  echoReplies: number;
}

/**
 * A fake guest attached to a switch port: answers ARP requests for its IP and ICMP echo requests
 * to it (replies go out asynchronously, as a NIC's would).
 */
export class GuestResponder {
  readonly mac: string;
  readonly ip: string;
  readonly stats: ResponderStats = { arpRequests: 0, arpReplies: 0, echoRequests: 0, echoReplies: 0 };

  constructor(
    readonly sw: VirtualSwitch,
    readonly portId: string,
    network: string,
    mac: string,
    ip: string,
  ) {
    this.mac = normalizeMac(mac);
    this.ip = ip;
    sw.attachPort(portId, network, (f) => this.onFrame(f), { mac: this.mac, ip });
  }

  detach(): void {
    this.sw.detachPort(this.portId);
  }

  /** The replies a guest would send to `frame` (public for unit tests). */
  answer(frame: Buffer): Buffer[] {
    let eth;
    try {
      eth = parseEthernet(frame);
    } catch {
      return [];
    }
    if (eth.etherType === EtherType.ARP) {
      let arp;
      try {
        arp = parseArp(eth.payload);
      } catch {
        return [];
      }
      if (arp.op !== ArpOp.REQUEST || arp.targetIp !== this.ip || arp.senderIp === arp.targetIp) return [];
      this.stats.arpRequests++;
      this.stats.arpReplies++;
      return [arpFrame({ op: ArpOp.REPLY, senderMac: this.mac, senderIp: this.ip, targetMac: arp.senderMac, targetIp: arp.senderIp })];
    }
    if (eth.etherType === EtherType.IPV4 && (eth.dst === this.mac || eth.dst === "ff:ff:ff:ff:ff:ff")) {
      try {
        const ip = parseIpv4(eth.payload);
        if (ip.protocol !== IpProtocol.ICMP || ip.dst !== this.ip) return [];
        const echo = parseIcmpEcho(ip.payload);
        if (echo.type !== IcmpType.ECHO_REQUEST) return [];
        this.stats.echoRequests++;
        this.stats.echoReplies++;
        return [icmpEchoFrame({ srcMac: this.mac, dstMac: eth.src, srcIp: this.ip, dstIp: ip.src, type: IcmpType.ECHO_REPLY, id: echo.id, seq: echo.seq, data: echo.data })];
      } catch {
        return [];
      }
    }
    return [];
  }

  private onFrame(frame: Buffer): void {
    const replies = this.answer(frame);
    if (replies.length === 0) return;
    setImmediate(() => {
      if (!this.sw.hasPort(this.portId)) return;
      for (const r of replies) this.sw.input(this.portId, r);
    });
  }
}
