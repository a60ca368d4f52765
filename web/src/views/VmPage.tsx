/** One VM: details, power actions, the serial console, its task history and events, and the migrate dialog. */
import { useEffect, useState } from "react";
import { Console } from "../components/Console.js";
import { EventList } from "../components/EventList.js";
import { MigrateDialog } from "../components/MigrateDialog.js";
import { StateBadge } from "../components/Badges.js";
import { TaskTable } from "../components/TaskTable.js";
import { VmActions } from "../components/VmActions.js";
import { errorText } from "../api.js";
import { useCluster, useStore } from "../store.js";

export function VmPage({ name }: { name: string }): React.JSX.Element {
  const store = useStore();
  const c = useCluster();
  const vm = c.vms.find((v) => v.name === name);
  const [migrateOpen, setMigrateOpen] = useState(false);
  const [historyError, setHistoryError] = useState<string | undefined>();

  // The VM's full task history (the store keeps the cluster's recent tasks; live updates arrive there).
  useEffect(() => {
    store.api.tasks({ vm: name, limit: 100 }).then(
      (tasks) => {
        for (const t of tasks) store.upsertTask(t);
      },
      (err: unknown) => setHistoryError(errorText(err)),
    );
  }, [store, name]);

  if (vm === undefined) {
    return (
      <div className="panel">
        <p>{c.loaded ? `No VM named '${name}' in the cluster.` : "Loading…"}</p>
        <a href="#/">← Inventory</a>
      </div>
    );
  }
  const tasks = c.tasks.filter((t) => t.vm === name);
  const events = c.events.filter((e) => e.vm === name && e.type !== "migration.progress").slice(0, 40);
  const cfg = vm.config;
  return (
    <div className="vm-page" data-vm={vm.name} data-host={vm.host} data-state={vm.state}>
      <div className="page-head">
        <a href="#/" className="back">
          ← Inventory
        </a>
        <h1>{vm.name}</h1>
        <StateBadge state={vm.state} />
        <span className="muted">
          on <strong data-testid="vm-host">{vm.host}</strong>
        </span>
      </div>

      <section className="panel vm-summary" aria-label="Summary">
        <dl className="kv">
          <dt>Host</dt>
          <dd>{vm.host}</dd>
          <dt>Power</dt>
          <dd>
            {vm.state} <span className="muted">(wanted: {vm.desiredPower})</span>
          </dd>
          <dt>Memory</dt>
          <dd>{cfg.memoryMiB} MiB</dd>
          <dt>IP</dt>
          <dd className="mono">{cfg.ip ?? "-"}</dd>
          <dt>Network</dt>
          <dd>{cfg.network ?? "-"}</dd>
          <dt>MAC</dt>
          <dd className="mono">{cfg.mac}</dd>
          <dt>Disk</dt>
          <dd>{cfg.disk !== undefined ? `${cfg.disk.sizeMiB} MiB` : "-"}</dd>
          <dt>CPU / RSS</dt>
          <dd>
            {vm.cpuPct !== undefined ? `${Math.round(vm.cpuPct)} %` : "-"} / {vm.rssMiB !== undefined ? `${Math.round(vm.rssMiB)} MiB` : "-"}
          </dd>
          <dt>Generation</dt>
          <dd>{vm.generation}</dd>
          <dt>UUID</dt>
          <dd className="mono small-text">{vm.uuid}</dd>
        </dl>
        <VmActions
          vm={vm}
          extra={
            <button type="button" className="action primary" data-action="migrate" onClick={() => setMigrateOpen(true)}>
              Migrate…
            </button>
          }
        />
      </section>

      <section className="panel console-panel" aria-labelledby="console-h">
        <h2 id="console-h">Console</h2>
        <Console vm={vm.name} />
      </section>

      <section className="panel vm-tasks" aria-labelledby="vm-tasks-h">
        <h2 id="vm-tasks-h">Task history</h2>
        {historyError !== undefined ? <p className="error">{historyError}</p> : null}
        <TaskTable tasks={tasks} showVm={false} empty="No tasks for this VM yet." />
      </section>

      <section className="panel vm-events" aria-labelledby="vm-events-h">
        <h2 id="vm-events-h">Events</h2>
        <EventList events={events} empty="No events for this VM yet." />
      </section>

      {migrateOpen ? <MigrateDialog vm={vm} onClose={() => setMigrateOpen(false)} /> : null}
    </div>
  );
}
