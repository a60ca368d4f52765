/** Events, filtered by type (prefix), severity, host and VM: fetched with the filter, then streamed. */
import { SelectFilter } from "../components/SelectFilter.js";
import { useEffect, useState } from "react";
import type { ClusterEvent } from "../../../src/cluster/api-types.js";
import type { EventSeverity } from "../../../src/cluster/types.js";
import { chosen, useFetched } from "../useFetched.js";
import { EventList } from "../components/EventList.js";
import { useCluster, useClusterEvents, useStore } from "../store.js";
import { ErrorNote, Panel } from "../components/Panel.js";

const SEVERITIES: readonly EventSeverity[] = ["info", "warning", "error"];
const KEPT = 300;

interface Filter {
  type: string;
  severity: EventSeverity | "";
  host: string;
  vm: string;
  /** Hide the per-round migration progress events (many). */
  hideProgress: boolean;
}

function matches(e: ClusterEvent, f: Filter): boolean {
  return (
    (f.type === "" || e.type.startsWith(f.type)) &&
    (f.severity === "" || e.severity === f.severity) &&
    (f.host === "" || e.host === f.host) &&
    (f.vm === "" || e.vm === f.vm) &&
    !(f.hideProgress && e.type === "migration.progress")
  );
}

export function EventsView(): React.JSX.Element {
  const store = useStore();
  const c = useCluster();
  const [filter, setFilter] = useState<Filter>({ type: "", severity: "", host: "", vm: "", hideProgress: true });
  const [typeText, setTypeText] = useState("");

  // The type box applies as one types, a moment after the last key.
  useEffect(() => {
    const t = window.setTimeout(() => setFilter((f) => (f.type === typeText.trim() ? f : { ...f, type: typeText.trim() })), 250);
    return () => window.clearTimeout(t);
  }, [typeText]);

  const { rows, setRows, error } = useFetched(async () => {
    const { type, hideProgress: _hide, ...rest } = chosen(filter);
    const events = await store.api.listEvents({ limit: KEPT, ...rest, ...(type !== undefined ? { typePrefix: type } : {}) });
    return events.filter((e) => matches(e, filter));
  }, [store, filter]);

  useClusterEvents((ev) => {
    if (!matches(ev, filter)) return;
    setRows((rs) => (rs.some((r) => r.id === ev.id) ? rs : [ev, ...rs].slice(0, KEPT)));
  });

  const set = <K extends keyof Filter>(k: K, v: Filter[K]): void => setFilter((f) => ({ ...f, [k]: v }));
  return (
    <Panel id="events-h" title="Events" count={rows.length}>
      <form className="filters" aria-label="Event filters" onSubmit={(e) => e.preventDefault()}>
        <label className="field">
          <span>Type (prefix)</span>
          <input name="type" value={typeText} onChange={(e) => setTypeText(e.target.value)} placeholder="host. / ha. / vm.migrated" list="event-types" />
          <datalist id="event-types">
            {["host.", "ha.", "vm.", "task.updated", "migration.", "vm.migrated", "host.down", "ha.restarted", "vm.fenced", "ha.no-capacity"].map((t) => (
              <option key={t} value={t} />
            ))}
          </datalist>
        </label>
        <SelectFilter label="Severity" name="severity" value={filter.severity} options={SEVERITIES} onChange={(v) => set("severity", v)} />
        <SelectFilter label="Host" name="host" value={filter.host} options={c.hosts.map((h) => h.name)} onChange={(v) => set("host", v)} />
        <SelectFilter label="VM" name="vm" value={filter.vm} options={c.vms.map((v) => v.name)} onChange={(v) => set("vm", v)} />
        <label className="check">
          <input type="checkbox" name="hideProgress" checked={filter.hideProgress} onChange={(e) => set("hideProgress", e.target.checked)} />
          <span>hide migration progress</span>
        </label>
      </form>
      <ErrorNote error={error} />
      <EventList events={rows} empty="No event matches." />
    </Panel>
  );
}
