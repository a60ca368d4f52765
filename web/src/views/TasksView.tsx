/** Tasks, filtered by state, kind, VM and host: fetched with the filter, then kept current by events. */
import { SelectFilter } from "../components/SelectFilter.js";
import { useState } from "react";
import type { TaskRow } from "../../../src/cluster/api-types.js";
import type { TaskKind, TaskState } from "../../../src/cluster/types.js";
import { useFetched, chosen } from "../useFetched.js";
import { TaskTable } from "../components/TaskTable.js";
import { isTaskRow, useCluster, useClusterEvents, useStore } from "../store.js";
import { ErrorNote, Panel } from "../components/Panel.js";

const STATES: readonly TaskState[] = ["queued", "running", "succeeded", "failed", "cancelled"];
const KINDS: readonly TaskKind[] = ["vm.create", "vm.start", "vm.stop", "vm.poweroff", "vm.suspend", "vm.migrate", "vm.destroy", "host.maintenance.enter", "host.maintenance.exit", "ha.restart", "drs.apply"];

interface Filter {
  state: TaskState | "";
  kind: TaskKind | "";
  vm: string;
  host: string;
}

function matches(t: TaskRow, f: Filter): boolean {
  return (f.state === "" || t.state === f.state) && (f.kind === "" || t.kind === f.kind) && (f.vm === "" || t.vm === f.vm) && (f.host === "" || t.host === f.host);
}

export function TasksView({ initial }: { initial: { vm?: string; host?: string } }): React.JSX.Element {
  const store = useStore();
  const c = useCluster();
  const [filter, setFilter] = useState<Filter>({ state: "", kind: "", vm: initial.vm ?? "", host: initial.host ?? "" });

  const { rows, setRows, error, loading } = useFetched(() => store.api.tasks({ limit: 200, ...chosen(filter) }), [store, filter]);

  useClusterEvents((ev) => {
    if (ev.type !== "task.updated") return;
    const t = ev.data;
    if (!isTaskRow(t)) return;
    setRows((rs) => {
      const others = rs.filter((r) => r.id !== t.id);
      return matches(t, filter) ? [t, ...others].sort((a, b) => b.createdAt.localeCompare(a.createdAt)) : others;
    });
  });

  const set = <K extends keyof Filter>(k: K, v: Filter[K]): void => setFilter((f) => ({ ...f, [k]: v }));
  const vmNames = [...new Set([...c.vms.map((v) => v.name), ...(filter.vm !== "" ? [filter.vm] : [])])].sort();
  return (
    <Panel id="tasks-h" title="Tasks" count={rows.length}>
      <form className="filters" aria-label="Task filters" onSubmit={(e) => e.preventDefault()}>
        <SelectFilter label="State" name="state" value={filter.state} options={STATES} onChange={(v) => set("state", v)} />
        <SelectFilter label="Kind" name="kind" value={filter.kind} options={KINDS} onChange={(v) => set("kind", v)} />
        <SelectFilter label="VM" name="vm" value={filter.vm} options={vmNames} onChange={(v) => set("vm", v)} />
        <SelectFilter label="Host" name="host" value={filter.host} options={c.hosts.map((h) => h.name)} onChange={(v) => set("host", v)} />
      </form>
      <ErrorNote error={error} />
      <TaskTable tasks={rows} empty={loading ? "Loading…" : "No task matches."} />
    </Panel>
  );
}
