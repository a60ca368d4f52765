/**
 * Errors of the virtual networking subsystem. One class and stable code per failure, named after
 * the step that failed; the cause is kept. Nothing on a data path throws: malformed frames and
 * packets are counted and dropped, these errors are for calls made by the host agent.
 */
import { HopError } from "../common/errors.js";

/** Base of every networking error (catch this to catch them all). */
export class NetError extends HopError {}

export type ParseStep = "mac" | "ipv4-address" | "ethernet" | "arp" | "ipv4" | "icmp";

/** A frame, packet or address could not be parsed: NET_<STEP>_PARSE_FAILED. */
export class FrameParseError extends NetError {
  readonly step: ParseStep;
  constructor(step: ParseStep, message: string) {
    super(`NET_${step.replaceAll("-", "_").toUpperCase()}_PARSE_FAILED`, `${step} parse failed: ${message}`, { status: 400 });
    this.step = step;
  }
}

/** A network could not be added: bad name or VNI, or the name or VNI is taken. */
export class NetworkAddError extends NetError {
  constructor(message: string) {
    super("NET_NETWORK_ADD_FAILED", `adding virtual network failed: ${message}`, { status: 409 });
  }
}

/** A call named a virtual network this switch (or endpoint) does not have. */
export class UnknownNetworkError extends NetError {
  constructor(network: string) {
    super("NET_NETWORK_UNKNOWN", `no virtual network '${network}'`, { status: 404 });
  }
}

/** A network still has ports attached and cannot be removed. */
export class NetworkInUseError extends NetError {
  constructor(network: string, ports: number) {
    super("NET_NETWORK_IN_USE", `virtual network '${network}' still has ${ports} port(s) attached`, { status: 409 });
  }
}

/** A port could not be attached: the id is taken, or its options are invalid. */
export class PortAttachError extends NetError {
  constructor(port: string, message: string, cause?: unknown) {
    super("NET_PORT_ATTACH_FAILED", `attaching port '${port}' failed: ${message}`, { cause, status: 409 });
  }
}

/** A call named a switch port that is not attached. */
export class UnknownPortError extends NetError {
  constructor(port: string) {
    super("NET_PORT_UNKNOWN", `no switch port '${port}'`, { status: 404 });
  }
}

/** announce(): the port has no MAC (none configured, none learned yet). */
export class AnnounceError extends NetError {
  constructor(port: string, message: string) {
    super("NET_ANNOUNCE_FAILED", `announcing port '${port}' failed: ${message}`, { status: 409 });
  }
}

/** forwardPort(): no uplink to forward over, or a bad target or duration. */
export class ForwardError extends NetError {
  constructor(port: string, message: string) {
    super("NET_FORWARD_FAILED", `forwarding port '${port}' failed: ${message}`, { status: 409 });
  }
}

/** The VXLAN endpoint's UDP socket could not be bound. */
export class VtepBindError extends NetError {
  constructor(address: string, port: number, cause: unknown) {
    super("NET_VTEP_BIND_FAILED", `binding VXLAN endpoint to ${address}:${port} failed: ${cause instanceof Error ? cause.message : String(cause)}`, { cause });
  }
}

/** A VTEP configuration call failed (bad VNI, bad remote address, VNI already connected). */
export class VtepConfigError extends NetError {
  constructor(message: string) {
    super("NET_VTEP_CONFIG_FAILED", `VXLAN endpoint configuration failed: ${message}`, { status: 400 });
  }
}

export type VxlanDecodeReason = "short" | "flags" | "inner-short";

/** A received UDP payload is not a valid VXLAN packet (counted by the VTEP, never thrown out of it). */
export class VxlanDecodeError extends NetError {
  readonly reason: VxlanDecodeReason;
  constructor(reason: VxlanDecodeReason, message: string) {
    super("NET_VXLAN_DECODE_FAILED", `VXLAN decode failed: ${message}`, { status: 400 });
    this.reason = reason;
  }
}

export type IpamFailure = "config" | "load" | "save" | "exhausted" | "in-use" | "out-of-subnet" | "reserved" | "owner";

const ipamCodes: Record<IpamFailure, string> = {
  config: "NET_IPAM_CONFIG_INVALID",
  load: "NET_IPAM_LOAD_FAILED",
  save: "NET_IPAM_SAVE_FAILED",
  exhausted: "NET_IPAM_EXHAUSTED",
  "in-use": "NET_IPAM_ADDRESS_IN_USE",
  "out-of-subnet": "NET_IPAM_OUT_OF_SUBNET",
  reserved: "NET_IPAM_ADDRESS_RESERVED",
  owner: "NET_IPAM_OWNER_HAS_ADDRESS",
};

const ipamStatus: Record<IpamFailure, number> = { config: 400, load: 500, save: 500, exhausted: 409, "in-use": 409, "out-of-subnet": 400, reserved: 409, owner: 409 };

/** Address management failed; `failure` (and the code) says which way. */
export class IpamError extends NetError {
  readonly failure: IpamFailure;
  constructor(failure: IpamFailure, message: string, cause?: unknown) {
    super(ipamCodes[failure], `address management: ${message}`, { cause, status: ipamStatus[failure] });
    this.failure = failure;
  }
}

/** A privileged step needs root (uid 0 or CAP_NET_ADMIN). */
export class NotRootError extends NetError {
  constructor(what: string) {
    super("NET_NOT_ROOT", `${what} needs root (running as uid ${process.getuid?.() ?? "?"})`, { status: 403 });
  }
}

/** A program the step runs is not installed. */
export class ToolMissingError extends NetError {
  constructor(program: string, debianPackage: string) {
    super("NET_TOOL_MISSING", `'${program}' is not installed (Debian package ${debianPackage}; as root: apt-get install ${debianPackage})`);
  }
}

export type LinuxStep = "device-add" | "fdb" | "address" | "link-up" | "device-remove" | "show";

/** A step of attaching or removing a Linux vxlan device failed: NET_LINUX_<STEP>_FAILED. */
export class LinuxDeviceError extends NetError {
  readonly step: LinuxStep;
  constructor(step: LinuxStep, message: string, cause?: unknown) {
    super(`NET_LINUX_${step.replaceAll("-", "_").toUpperCase()}_FAILED`, `Linux vxlan device ${step} failed: ${message}`, { cause });
    this.step = step;
  }
}

export type HarnessStep = "setup" | "exec" | "spawn" | "shape" | "teardown";

/** A step of the network-namespace test harness failed: NET_HARNESS_<STEP>_FAILED. */
export class HarnessError extends NetError {
  readonly step: HarnessStep;
  constructor(step: HarnessStep, message: string, cause?: unknown) {
    super(`NET_HARNESS_${step.toUpperCase()}_FAILED`, `network harness ${step} failed: ${message}`, { cause });
    this.step = step;
  }
}
