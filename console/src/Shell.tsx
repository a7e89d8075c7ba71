import { useEffect, useState, type ReactNode } from 'react';
import { useQuery, useMutation, useQueryClient } from '@tanstack/react-query';
import { Navigate, NavLink, Outlet, useLocation, useNavigate, useParams } from 'react-router';
import { api, ApiError, setCsrf, setUnauthorizedHandler, type Session } from './api';
import { SessionContext, can, useSession } from './session';
import { LiveContext, useTenantEvents } from './live';

export function useSessionQuery() {
  return useQuery({
    queryKey: ['session'],
    queryFn: async (): Promise<Session | null> => {
      try {
        const s = await api<Session>('GET', '/console/session');
        setCsrf(s.csrf);
        return s;
      } catch (err) {
        if (err instanceof ApiError && err.status === 401) {
          setCsrf(null);
          return null;
        }
        throw err;
      }
    },
    staleTime: 60_000,
  });
}

/** Root: loads the session once; pages below read it from context. */
export function Shell() {
  const q = useSessionQuery();
  const qc = useQueryClient();
  const navigate = useNavigate();
  useEffect(() => {
    setUnauthorizedHandler(() => {
      qc.setQueryData(['session'], null);
      navigate('/signin');
    });
  }, [qc, navigate]);
  if (q.isPending) return <p className="muted center" role="status">Loading…</p>;
  if (q.isError) return <p className="error center" role="alert">The server does not answer: {q.error.message}</p>;
  return (
    <SessionContext.Provider value={q.data}>
      <Outlet />
    </SessionContext.Provider>
  );
}

export function Home() {
  const q = useSessionQuery();
  const s = q.data;
  if (!s) return <Navigate to="/signin" replace />;
  return <Navigate to={s.kind === 'operator' ? '/tenants' : `/${s.tenant}/machines`} replace />;
}

function RequireSession({ children }: { children: ReactNode }) {
  const q = useSessionQuery();
  const loc = useLocation();
  if (!q.data) return <Navigate to="/signin" replace state={{ from: loc.pathname }} />;
  return <>{children}</>;
}

export function TenantPage({ title, children }: { title: string; children: ReactNode }) {
  return (
    <RequireSession>
      <TenantFrame title={title}>{children}</TenantFrame>
    </RequireSession>
  );
}

function TenantFrame({ title, children }: { title: string; children: ReactNode }) {
  const s = useSession();
  const { tenant = '' } = useParams();
  useEffect(() => {
    document.title = `${title} · ${tenant} · Larktun`;
  }, [title, tenant]);
  // A console user's session belongs to one tenant: other tenants' paths lead home.
  const mine = s.kind === 'operator' || s.tenant === tenant;
  const live = useTenantEvents(mine ? tenant : '');
  if (!mine) return <Navigate to={`/${s.tenant}/machines`} replace />;
  return (
    <LiveContext.Provider value={live}>
      <Frame tenant={tenant} live={live}>
        <h1>{title}</h1>
        {children}
      </Frame>
    </LiveContext.Provider>
  );
}

export function OperatorPage({ title = 'Tenants', children }: { title?: string; children: ReactNode }) {
  return (
    <RequireSession>
      <OperatorFrame title={title}>{children}</OperatorFrame>
    </RequireSession>
  );
}

function OperatorFrame({ title, children }: { title: string; children: ReactNode }) {
  const s = useSession();
  useEffect(() => {
    document.title = `${title} · Larktun`;
  }, [title]);
  if (s.kind !== 'operator') return <Navigate to={`/${s.tenant}/machines`} replace />;
  return (
    <Frame tenant={null}>
      <h1>{title}</h1>
      {children}
    </Frame>
  );
}

function Frame({ tenant, live = false, children }: { tenant: string | null; live?: boolean; children: ReactNode }) {
  const s = useSession();
  const qc = useQueryClient();
  const navigate = useNavigate();
  const signOut = useMutation({
    mutationFn: () => api('DELETE', '/console/session'),
    onSettled: () => {
      setCsrf(null);
      qc.clear();
      navigate('/signin');
    },
  });
  const pages: { to: string; label: string; show: boolean }[] = tenant
    ? [
        { to: 'machines', label: 'Machines', show: true },
        { to: 'routes', label: 'Routes', show: true },
        { to: 'acls', label: 'Access controls', show: true },
        { to: 'users', label: 'Users', show: true },
        { to: 'keys', label: 'Keys', show: true },
        { to: 'logs', label: 'Logs', show: can(s, 'audit') },
        { to: 'relays', label: 'Relays', show: true },
        { to: 'settings', label: 'Settings', show: can(s, 'admin') },
      ]
    : [];
  // Phone width: the nav folds behind a Menu button and opens as a full-width list.
  const loc = useLocation();
  const [menu, setMenu] = useState(false);
  useEffect(() => setMenu(false), [loc.pathname]);
  return (
    <div className="app">
      <a className="skip" href="#main">Skip to content</a>
      <header className="top">
        <div className="brand">
          <span className="logo" aria-hidden="true">L</span> Larktun
          {tenant && <span className="tenant-name" title="tenant">{tenant}</span>}
        </div>
        <button type="button" className="menu-button" aria-expanded={menu} aria-controls="main-nav" onClick={() => setMenu(!menu)}>Menu</button>
        <nav aria-label="Main" id="main-nav" className={menu ? 'open' : ''}>
          {s.kind === 'operator' && <NavLink to="/tenants" end>Tenants</NavLink>}
          {s.kind === 'operator' && <NavLink to="/relays" end>All relays</NavLink>}
          {pages.filter((p) => p.show).map((p) => (
            <NavLink key={p.to} to={`/${tenant}/${p.to}`}>{p.label}</NavLink>
          ))}
        </nav>
        <div className="who">
          {tenant && <span className={`live ${live ? 'on' : ''}`} title={live ? 'Pages update as the network changes' : 'Not connected to live updates; pages refresh every 10 s'} data-live={live ? 'on' : 'off'}>{live ? 'Live' : 'Polling'}</span>}
          <span title={s.actor}>{s.kind === 'operator' ? 'Operator' : s.username}</span>
          {s.role && <span className="badge">{s.role}</span>}
          <button type="button" className="link" onClick={() => signOut.mutate()} disabled={signOut.isPending}>Sign out</button>
        </div>
      </header>
      <main id="main" tabIndex={-1}>{children}</main>
    </div>
  );
}
