/** Sign-in, then the shell: header with navigation and the live-stream indicator, and the views. */
import { useCallback, useEffect, useMemo, useState } from "react";
import type { ManagerHealth } from "../../src/cluster/api-types.js";
import { ApiError, errorText, HopApi } from "./api.js";
import { Login } from "./views/Login.js";
import { Inventory } from "./views/Inventory.js";
import { VmPage } from "./views/VmPage.js";
import { HostsView } from "./views/HostsView.js";
import { TasksView } from "./views/TasksView.js";
import { EventsView } from "./views/EventsView.js";
import { useRoute, type Route } from "./route.js";
import { ClusterStore, StoreContext, useCluster } from "./store.js";

const TOKEN_KEY = "hopvisor.token";

function storedToken(): string | null {
  try {
    return window.sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

function loginMessage(err: unknown): string {
  if (err instanceof ApiError && err.status === 401) {
    return `The manager refused this token (${err.code}). Use the cluster token the manager was started with (hop manager serve --token …).`;
  }
  if (err instanceof ApiError && err.status === 0) return `Cannot reach the manager: ${err.message}`;
  return `Sign-in failed: ${errorText(err)}`;
}

interface Session {
  api: HopApi;
  health: ManagerHealth;
}

export function App(): React.JSX.Element {
  const [session, setSession] = useState<Session | undefined>();
  const [checking, setChecking] = useState(() => storedToken() !== null);
  const [loginError, setLoginError] = useState<string | undefined>();

  const login = useCallback(async (token: string): Promise<void> => {
    const api = new HopApi(token);
    try {
      const health = await api.health();
      window.sessionStorage.setItem(TOKEN_KEY, token);
      setLoginError(undefined);
      setSession({ api, health });
    } catch (err) {
      window.sessionStorage.removeItem(TOKEN_KEY);
      setLoginError(loginMessage(err));
    }
  }, []);

  const logout = useCallback((message?: string) => {
    window.sessionStorage.removeItem(TOKEN_KEY);
    setSession(undefined);
    setLoginError(message);
  }, []);

  useEffect(() => {
    const token = storedToken();
    if (token === null) return;
    void login(token).finally(() => setChecking(false));
  }, [login]);

  if (checking) return <div className="splash">Connecting to the manager…</div>;
  if (session === undefined) return <Login error={loginError} onLogin={login} />;
  return <Shell key={session.api.token} session={session} onLogout={logout} />;
}

function Shell({ session, onLogout }: { session: Session; onLogout: (message?: string) => void }): React.JSX.Element {
  const store = useMemo(() => new ClusterStore(session.api), [session.api]);
  useEffect(() => {
    session.api.onUnauthorized = () => onLogout("The manager no longer accepts this token: sign in again.");
    store.start();
    return () => {
      session.api.onUnauthorized = undefined;
      store.stop();
    };
  }, [store, session.api, onLogout]);
  return (
    <StoreContext.Provider value={store}>
      <Header health={session.health} onLogout={() => onLogout()} />
      <main className="main">
        <Views />
      </main>
    </StoreContext.Provider>
  );
}

const NAV: { view: Route["view"]; href: string; label: string }[] = [
  { view: "inventory", href: "#/", label: "Inventory" },
  { view: "hosts", href: "#/hosts", label: "Hosts" },
  { view: "tasks", href: "#/tasks", label: "Tasks" },
  { view: "events", href: "#/events", label: "Events" },
];

function Header({ health, onLogout }: { health: ManagerHealth; onLogout: () => void }): React.JSX.Element {
  const route = useRoute();
  const c = useCluster();
  const active = route.view === "vm" ? "inventory" : route.view;
  const liveText = c.live === "live" ? "live" : c.live === "connecting" ? "connecting…" : "reconnecting…";
  return (
    <header className="topbar">
      <a className="brand" href="#/">
        Hopvisor
      </a>
      <nav className="nav" aria-label="Views">
        {NAV.map((n) => (
          <a key={n.view} href={n.href} className={n.view === active ? "active" : undefined} aria-current={n.view === active ? "page" : undefined}>
            {n.label}
          </a>
        ))}
      </nav>
      <div className="topbar-right">
        <span className={`live live-${c.live}`} title="The manager's event stream" data-testid="live">
          ● {liveText}
        </span>
        <span className="manager-id" title={`manager ${health.managerId}, version ${health.version}`}>
          v{health.version}
        </span>
        <button type="button" className="link-button" onClick={onLogout}>
          Sign out
        </button>
      </div>
    </header>
  );
}

function Views(): React.JSX.Element {
  const route = useRoute();
  const c = useCluster();
  return (
    <>
      {c.error !== undefined ? (
        <p className="banner error" role="alert">
          {c.error}
        </p>
      ) : null}
      {route.view === "inventory" ? <Inventory /> : null}
      {route.view === "vm" ? <VmPage key={route.name} name={route.name} /> : null}
      {route.view === "hosts" ? <HostsView /> : null}
      {route.view === "tasks" ? <TasksView initial={route} /> : null}
      {route.view === "events" ? <EventsView /> : null}
    </>
  );
}
