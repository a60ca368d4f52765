/** The manager's errors: one class per failure, each with a stable code and HTTP status. */
import { HopError } from "../common/errors.js";

export class HostNotFoundError extends HopError {
  constructor(name: string) {
    super("HOST_NOT_FOUND", `no host named '${name}' in the cluster`, { status: 404 });
  }
}

export class ClusterVmNotFoundError extends HopError {
  constructor(name: string) {
    super("VM_NOT_FOUND", `no VM named '${name}' in the cluster`, { status: 404 });
  }
}

export class HostUnavailableError extends HopError {
  constructor(name: string, why: string) {
    super("HOST_UNAVAILABLE", `host '${name}' cannot take this: ${why}`, { status: 409 });
  }
}

export class PlacementError extends HopError {
  constructor(code: "NO_HOST_AVAILABLE" | "INSUFFICIENT_CAPACITY", message: string) {
    super(code, message, { status: 409 });
  }
}

export class HostNotJoinedError extends HopError {
  constructor(name: string) {
    super("HOST_NOT_JOINED", `host '${name}' has not joined this manager (join again)`, { status: 410 });
  }
}

export class VmBusyError extends HopError {
  constructor(name: string, why: string) {
    super("VM_BUSY", `VM '${name}' ${why}`, { status: 409 });
  }
}
