/**
 * Hosts: enter and exit maintenance mode, the evacuation as tasks (the maintenance task and the
 * migrations it spawned), and what HA did (hosts down, VMs fenced and restarted, no capacity).
 */
import { useState } from "react";
import type { HostInfo, TaskRow } from "../../../src/cluster/api-types.js";
import { errorText } from "../api.js";
import { EventList } from "../components/EventList.js";
import { HostCard } from "../components/HostCard.js";
import { TaskStateBadge } from "../components/Badges.js";
import { fmtDuration } from "../format.js";
import { vmHref } from "../route.js";
import { useCluster, useStore } from "../store.js";
import { ErrorNote, Panel } from "../components/Panel.js";

/** Event types that tell about host health and HA. */
export function isHaEvent(type: string): boolean {
  return type.startsWith("host.") || type.startsWith("ha.") || type === "vm.fenced" || type === "vm.adopted" || type === "vm.released" || type === "vm.crashed";
}

function MaintenanceControl({ host }: { host: HostInfo }): React.JSX.Element {
  const store = useStore();
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | undefined>();
  const run = async (enter: boolean): Promise<void> => {
    setBusy(true);
    setError(undefined);
    try {
      store.upsertTask(await store.api.maintenance(host.name, { enter }));
    } catch (err) {
      setError(errorText(err));
    } finally {
      setBusy(false);
    }
  };
  const canEnter = host.maintenance === "none" && host.connection === "connected";
  return (
    <div className="maint-control">
      {host.maintenance === "none" ? (
        <button type="button" onClick={() => void run(true)} disabled={busy || !canEnter} data-testid="enter-maintenance" title={canEnter ? "Move every running VM away live, then take no new ones" : `the host is ${host.connection}`}>
          {busy ? "Entering…" : "Enter maintenance"}
        </button>
      ) : (
        <button type="button" onClick={() => void run(false)} disabled={busy} data-testid="exit-maintenance">
          {busy ? "Exiting…" : "Exit maintenance"}
        </button>
      )}
      <ErrorNote error={error} />
    </div>
  );
}

function migrationTarget(t: TaskRow): string {
  const to = t.params["to"];
  return typeof to === "string" ? to : "?";
}

/** The host's latest maintenance task and the migrations it spawned. */
function Evacuation({ host, tasks }: { host: string; tasks: readonly TaskRow[] }): React.JSX.Element | null {
  const parent = tasks.find((t) => t.host === host && (t.kind === "host.maintenance.enter" || t.kind === "host.maintenance.exit"));
  if (parent === undefined) return null;
  const children = tasks.filter((t) => t.parentId === parent.id).sort((a, b) => a.createdAt.localeCompare(b.createdAt));
  return (
    <div className="evacuation" data-testid="evacuation" data-task={parent.id} data-state={parent.state}>
      <div className="evac-head">
        <span className="mono">{parent.kind}</span> <TaskStateBadge state={parent.state} />
        {parent.state === "running" ? <progress max={1} value={parent.progress} /> : null}
        <span className="muted"> {fmtDuration(parent.startedAt ?? parent.createdAt, parent.endedAt)}</span>
      </div>
      {parent.error !== undefined ? (
        <div className="small-text error-text">{`${parent.error.message} (${parent.error.code})`}</div>
      ) : parent.endedAt === undefined && parent.message !== undefined ? (
        <div className="small-text muted">{parent.message}</div>
      ) : null}
      {children.length > 0 ? (
        <ul className="evac-children">
          {children.map((ch) => (
            <li key={ch.id} data-task={ch.id} data-vm={ch.vm ?? ""} data-state={ch.state}>
              ↳ <span className="mono">{ch.kind}</span> {ch.vm !== undefined ? <a href={vmHref(ch.vm)}>{ch.vm}</a> : null} → {migrationTarget(ch)} <TaskStateBadge state={ch.state} />
              {ch.error !== undefined ? <span className="error-text"> {ch.error.message}</span> : null}
            </li>
          ))}
        </ul>
      ) : null}
    </div>
  );
}

export function HostsView(): React.JSX.Element {
  const c = useCluster();
  const haEvents = c.events.filter((e) => isHaEvent(e.type)).slice(0, 60);
  return (
    <div className="hosts-view">
      <Panel id="hosts-view-h" title="Hosts" count={c.hosts.length}>
        <p className="muted small-text">Maintenance mode moves every running VM away live (one migration task each, under the maintenance task), then keeps new VMs off the host until it exits.</p>
        <div className="host-grid">
          {c.hosts.map((h) => (
            <HostCard key={h.name} host={h} vms={c.vms}>
              <MaintenanceControl host={h} />
              <Evacuation host={h.name} tasks={c.tasks} />
            </HostCard>
          ))}
        </div>
      </Panel>
      <section className="panel" aria-labelledby="ha-h">
        <h2 id="ha-h">Host health and HA</h2>
        <EventList events={haEvents} empty="No host or HA events yet." />
      </section>
    </div>
  );
}
