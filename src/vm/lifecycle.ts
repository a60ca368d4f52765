import { HopError } from "../common/errors.js";

/**
 * VM power states. `defined` has never run; `stopped` has run and is off; `crashed` lost its
 * process unexpectedly (it can be started again). Transitional states keep two operations
 * from racing on one VM.
 */
export type VmState = "defined" | "starting" | "running" | "paused" | "stopping" | "stopped" | "crashed" | "suspended" | "migrating" | "incoming";

export type VmAction =
  | "start"
  | "started"
  | "pause"
  | "resume"
  | "shutdown"
  | "poweroff"
  | "stopped"
  | "crash"
  | "destroy"
  | "suspend"
  | "suspended"
  | "migrate"
  | "migrateFailed";

const table: Record<VmAction, Partial<Record<VmState, VmState>>> = {
  start: { defined: "starting", stopped: "starting", crashed: "starting", suspended: "starting" },
  started: { starting: "running", incoming: "running" },
  pause: { running: "paused" },
  resume: { paused: "running" },
  shutdown: { running: "stopping" },
  poweroff: { running: "stopping", paused: "stopping", stopping: "stopping", starting: "stopping", incoming: "stopping" },
  stopped: { stopping: "stopped", starting: "stopped", running: "stopped", paused: "stopped" },
  crash: { starting: "crashed", running: "crashed", paused: "crashed", stopping: "crashed", migrating: "crashed" },
  destroy: { defined: "defined", stopped: "stopped", crashed: "crashed", suspended: "suspended" },
  /** Save the whole state to the datastore and stop; the next start resumes from it. */
  suspend: { running: "stopping", paused: "stopping" },
  suspended: { stopping: "suspended" },
  /** A live or quick migration out of this host begins (cold migration needs a VM that is off). */
  migrate: { running: "migrating", paused: "migrating" },
  /** The migration failed and the VM carries on here as it was (paused if it must wait for the target's answer). */
  migrateFailed: { migrating: "running" },
};

export class InvalidTransitionError extends HopError {
  constructor(readonly vm: string, readonly from: VmState, readonly action: VmAction) {
    super("VM_INVALID_TRANSITION", `cannot ${action} VM '${vm}' while it is ${from}${hint(from, action)}`, { status: 409 });
  }
}

function hint(from: VmState, action: VmAction): string {
  if (action === "destroy") return " (stop it first, or use force)";
  if (action === "resume" && from === "running") return " (it is not paused)";
  if (action === "start" && (from === "running" || from === "paused")) return " (it is already on)";
  return "";
}

/** The next state after `action`, or an InvalidTransitionError. Pure: callers commit the result. */
export function nextState(vm: string, from: VmState, action: VmAction): VmState {
  const to = table[action][from];
  if (to === undefined) throw new InvalidTransitionError(vm, from, action);
  return to;
}

export function isOn(state: VmState): boolean {
  return state === "starting" || state === "running" || state === "paused" || state === "stopping" || state === "migrating" || state === "incoming";
}
