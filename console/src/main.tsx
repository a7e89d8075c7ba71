import { StrictMode, Suspense, lazy } from 'react';
import { createRoot } from 'react-dom/client';
import { QueryClient, QueryClientProvider } from '@tanstack/react-query';
import { createBrowserRouter, RouterProvider } from 'react-router';
import { ApiError } from './api';
import { Shell, Home, TenantPage, OperatorPage } from './Shell';
import { SignIn } from './pages/SignIn';
import { Machines } from './pages/Machines';
import { RoutesPage } from './pages/Routes';
import { Logs } from './pages/Logs';
import { Users } from './pages/Users';
import { Keys } from './pages/Keys';
import { Tenants } from './pages/Tenants';
import { OperatorRelays, TenantRelays } from './pages/Relays';
import { Settings } from './pages/Settings';
import { NodeLoginPage } from './pages/NodeLogin';
import './styles.css';

// The policy editor (CodeMirror) loads when its page is opened.
const Acls = lazy(() => import('./pages/Acls'));

const queryClient = new QueryClient({
  defaultOptions: {
    queries: {
      staleTime: 5_000,
      refetchOnWindowFocus: true,
      retry: (n, err) => !(err instanceof ApiError && err.status < 500) && n < 2,
    },
  },
});

const loading = <p className="muted" role="status">Loading…</p>;

const router = createBrowserRouter([
  {
    element: <Shell />,
    children: [
      { path: '/', element: <Home /> },
      { path: '/signin', element: <SignIn /> },
      { path: '/tenants', element: <OperatorPage><Tenants /></OperatorPage> },
      { path: '/:tenant/machines', element: <TenantPage title="Machines"><Machines /></TenantPage> },
      { path: '/:tenant/routes', element: <TenantPage title="Routes"><RoutesPage /></TenantPage> },
      { path: '/:tenant/acls', element: <TenantPage title="Access controls"><Suspense fallback={loading}><Acls /></Suspense></TenantPage> },
      { path: '/:tenant/users', element: <TenantPage title="Users"><Users /></TenantPage> },
      { path: '/:tenant/keys', element: <TenantPage title="Keys"><Keys /></TenantPage> },
      { path: '/:tenant/logs', element: <TenantPage title="Logs"><Logs /></TenantPage> },
      { path: '/relays', element: <OperatorPage title="Relays"><OperatorRelays /></OperatorPage> },
      { path: '/:tenant/relays', element: <TenantPage title="Relays"><TenantRelays /></TenantPage> },
      { path: '/:tenant/settings', element: <TenantPage title="Settings"><Settings /></TenantPage> },
      { path: '/login/:id', element: <NodeLoginPage /> },
      { path: '*', element: <p role="alert">This page does not exist.</p> },
    ],
  },
]);

createRoot(document.getElementById('root') as HTMLElement).render(
  <StrictMode>
    <QueryClientProvider client={queryClient}>
      <RouterProvider router={router} />
    </QueryClientProvider>
  </StrictMode>,
);
