/** One host: connection, maintenance, load (CPU, memory reserved of capacity) and its VMs. */
import type { ReactNode } from "react";
import type { ClusterVm, HostInfo } from "../../../src/cluster/api-types.js";
import { vmHref } from "../route.js";
import { ConnectionBadge, MaintenanceBadge, Meter } from "./Badges.js";

export function HostCard({ host, vms, children }: { host: HostInfo; vms: readonly ClusterVm[]; children?: ReactNode }): React.JSX.Element {
  const cpuMax = host.capacity.cpus * 100;
  const cpu = host.load?.cpuPct ?? 0;
  return (
    <article className={`host-card conn-${host.connection}`} data-host={host.name} data-connection={host.connection} data-maintenance={host.maintenance}>
      <header className="host-head">
        <strong className="host-name">{host.name}</strong>
        <ConnectionBadge connection={host.connection} />
        <MaintenanceBadge maintenance={host.maintenance} />
      </header>
      <Meter label="CPU" value={cpu} max={cpuMax} text={`${Math.round(cpu)} % of ${host.capacity.cpus} CPU${host.capacity.cpus === 1 ? "" : "s"}`} />
      <Meter label="Memory" value={host.reservedMiB} max={host.capacity.memoryMiB} text={`${host.reservedMiB} / ${host.capacity.memoryMiB} MiB reserved`} />
      <div className="host-vms" aria-label={`VMs on ${host.name}`}>
        {host.vms.length === 0 ? <span className="muted">no VMs</span> : null}
        {host.vms.map((name) => {
          const vm = vms.find((v) => v.name === name);
          return (
            <a key={name} href={vmHref(name)} className={`chip state-${vm?.state ?? "unknown"}`} data-vm={name}>
              {name}
            </a>
          );
        })}
      </div>
      {children}
    </article>
  );
}
