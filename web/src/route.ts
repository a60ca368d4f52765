/** Hash routes (#/, #/vms/NAME, #/hosts, #/tasks, #/events): the manager serves one page. */
import { useEffect, useState } from "react";

export type Route =
  | { view: "inventory" }
  | { view: "vm"; name: string }
  | { view: "hosts" }
  | { view: "tasks"; vm?: string; host?: string }
  | { view: "events" };

export function parseRoute(hash: string): Route {
  const path = hash.replace(/^#/, "");
  const [pathname = "", search = ""] = path.split("?");
  const parts = pathname.split("/").filter((p) => p !== "");
  const q = new URLSearchParams(search);
  switch (parts[0]) {
    case "vms":
      if (parts[1] !== undefined) return { view: "vm", name: decodeURIComponent(parts[1]) };
      return { view: "inventory" };
    case "hosts":
      return { view: "hosts" };
    case "tasks": {
      const vm = q.get("vm");
      const host = q.get("host");
      return { view: "tasks", ...(vm !== null ? { vm } : {}), ...(host !== null ? { host } : {}) };
    }
    case "events":
      return { view: "events" };
    default:
      return { view: "inventory" };
  }
}

export function vmHref(name: string): string {
  return `#/vms/${encodeURIComponent(name)}`;
}

export function useRoute(): Route {
  const [route, setRoute] = useState(() => parseRoute(window.location.hash));
  useEffect(() => {
    const on = (): void => setRoute(parseRoute(window.location.hash));
    window.addEventListener("hashchange", on);
    return () => window.removeEventListener("hashchange", on);
  }, []);
  return route;
}
