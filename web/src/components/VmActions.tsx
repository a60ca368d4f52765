/**
 * Power actions on a VM, one component each (start, stop, power off, pause, resume, suspend).
 * Each is enabled in the states the action applies to, and says why when it is not.
 */
import { useState } from "react";
import type { ClusterVm } from "../../../src/cluster/api-types.js";
import type { HopApi } from "../api.js";
import { errorText } from "../api.js";
import { useStore } from "../store.js";

type VmState = ClusterVm["state"];

export interface ActionOutcome {
  ok: boolean;
  text: string;
}

interface ActionProps {
  vm: ClusterVm;
  onOutcome: (o: ActionOutcome) => void;
}

function ActionButton(props: ActionProps & { label: string; busyLabel: string; allowed: readonly VmState[]; needs: string; run: (api: HopApi, name: string) => Promise<ClusterVm>; tone?: "danger" }): React.JSX.Element {
  const store = useStore();
  const [busy, setBusy] = useState(false);
  const { vm, onOutcome } = props;
  const enabled = props.allowed.includes(vm.state) && !busy;
  const onClick = async (): Promise<void> => {
    setBusy(true);
    try {
      const row = await props.run(store.api, vm.name);
      store.upsertVm(row);
      onOutcome({ ok: true, text: `${props.label}: ${row.name} is ${row.state}` });
    } catch (err) {
      onOutcome({ ok: false, text: `${props.label} failed: ${errorText(err)}` });
    } finally {
      setBusy(false);
    }
  };
  return (
    <button
      type="button"
      className={`action${props.tone === "danger" ? " danger" : ""}`}
      data-action={props.label.toLowerCase().replace(/\s+/g, "-")}
      disabled={!enabled}
      title={props.allowed.includes(vm.state) ? props.label : `${props.label} needs a VM that is ${props.needs} (it is ${vm.state})`}
      onClick={() => void onClick()}
    >
      {busy ? props.busyLabel : props.label}
    </button>
  );
}

export function StartAction(p: ActionProps): React.JSX.Element {
  return <ActionButton {...p} label="Start" busyLabel="Starting…" allowed={["defined", "stopped", "crashed", "suspended"]} needs="off or suspended" run={(api, n) => api.start(n)} />;
}

export function StopAction(p: ActionProps): React.JSX.Element {
  return <ActionButton {...p} label="Stop" busyLabel="Stopping…" allowed={["running"]} needs="running" run={(api, n) => api.shutdown(n)} />;
}

export function PoweroffAction(p: ActionProps): React.JSX.Element {
  return <ActionButton {...p} label="Power off" busyLabel="Powering off…" allowed={["running", "paused", "starting", "stopping"]} needs="on" run={(api, n) => api.poweroff(n)} tone="danger" />;
}

export function PauseAction(p: ActionProps): React.JSX.Element {
  return <ActionButton {...p} label="Pause" busyLabel="Pausing…" allowed={["running"]} needs="running" run={(api, n) => api.pause(n)} />;
}

export function ResumeAction(p: ActionProps): React.JSX.Element {
  return <ActionButton {...p} label="Resume" busyLabel="Resuming…" allowed={["paused"]} needs="paused" run={(api, n) => api.resume(n)} />;
}

export function SuspendAction(p: ActionProps): React.JSX.Element {
  return <ActionButton {...p} label="Suspend" busyLabel="Suspending…" allowed={["running", "paused"]} needs="running or paused" run={(api, n) => api.suspend(n)} />;
}

/** The six actions in a row, with the outcome of the last one. */
export function VmActions({ vm, extra }: { vm: ClusterVm; extra?: React.ReactNode }): React.JSX.Element {
  const [outcome, setOutcome] = useState<ActionOutcome | undefined>();
  return (
    <div className="actions-block">
      <div className="actions" role="toolbar" aria-label={`Actions on ${vm.name}`}>
        <StartAction vm={vm} onOutcome={setOutcome} />
        <StopAction vm={vm} onOutcome={setOutcome} />
        <PoweroffAction vm={vm} onOutcome={setOutcome} />
        <PauseAction vm={vm} onOutcome={setOutcome} />
        <ResumeAction vm={vm} onOutcome={setOutcome} />
        <SuspendAction vm={vm} onOutcome={setOutcome} />
        {extra}
      </div>
      {outcome !== undefined ? (
        <p className={outcome.ok ? "ok" : "error"} role={outcome.ok ? "status" : "alert"} data-testid="action-outcome">
          {outcome.text}
        </p>
      ) : null}
    </div>
  );
}
