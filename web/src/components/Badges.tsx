/** Small status pieces: power state, host connection, maintenance, and a meter. */
import type { ClusterVm, HostInfo } from "../../../src/cluster/api-types.js";
import type { EventSeverity, TaskState } from "../../../src/cluster/types.js";

export function StateBadge({ state }: { state: ClusterVm["state"] }): React.JSX.Element {
  return (
    <span className={`badge state-${state}`} data-testid="vm-state">
      {state}
    </span>
  );
}

export function ConnectionBadge({ connection }: { connection: HostInfo["connection"] }): React.JSX.Element {
  return (
    <span className={`badge conn-${connection}`} data-testid="host-connection">
      {connection}
    </span>
  );
}

export function MaintenanceBadge({ maintenance }: { maintenance: HostInfo["maintenance"] }): React.JSX.Element | null {
  if (maintenance === "none") return null;
  return (
    <span className={`badge maint-${maintenance}`} data-testid="host-maintenance">
      {maintenance === "in" ? "in maintenance" : "entering maintenance"}
    </span>
  );
}

export function TaskStateBadge({ state }: { state: TaskState }): React.JSX.Element {
  return <span className={`badge task-${state}`}>{state}</span>;
}

export function SeverityBadge({ severity }: { severity: EventSeverity }): React.JSX.Element {
  return <span className={`badge sev-${severity}`}>{severity}</span>;
}

export function Meter({ label, value, max, text }: { label: string; value: number; max: number; text: string }): React.JSX.Element {
  const p = max > 0 ? Math.max(0, Math.min(100, (value / max) * 100)) : 0;
  return (
    <div className="meter">
      <div className="meter-label">
        <span>{label}</span>
        <span className="meter-text">{text}</span>
      </div>
      <div className="meter-bar" role="meter" aria-label={label} aria-valuemin={0} aria-valuemax={max} aria-valuenow={value}>
        <div className={`meter-fill${p > 90 ? " hot" : p > 70 ? " warm" : ""}`} style={{ width: `${p}%` }} />
      </div>
    </div>
  );
}
