import { useEffect, useState, type FormEvent } from 'react';
import { useQueryClient } from '@tanstack/react-query';
import { Navigate, useLocation, useNavigate } from 'react-router';
import { api, setCsrf, type Session } from '../api';
import { useSessionQuery } from '../Shell';
import { ErrorText } from '../ui';

export function SignIn() {
  const q = useSessionQuery();
  const qc = useQueryClient();
  const navigate = useNavigate();
  // Where a signed-out visitor was going (e.g. a node login link): back there after signing in.
  const from = (useLocation().state as { from?: unknown } | null)?.from;
  const back = typeof from === 'string' && /^\/login\/[A-Za-z0-9_-]{43}$/.test(from) ? from : null;
  const [mode, setMode] = useState<'user' | 'operator'>('user');
  const [tenant, setTenant] = useState('');
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const [key, setKey] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    document.title = 'Sign in · Larktun';
  }, []);
  if (q.data) return <Navigate to={back ?? '/'} replace />;

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const body = mode === 'operator' ? { operator_key: key.trim() } : { tenant: tenant.trim(), username: username.trim(), password };
      const s = await api<Session>('POST', '/console/session', body);
      setCsrf(s.csrf);
      qc.setQueryData(['session'], s);
      setPassword('');
      setKey('');
      navigate(back ?? (s.kind === 'operator' ? '/tenants' : `/${s.tenant}/machines`), { replace: true });
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };

  return (
    <main className="signin" id="main">
      <form onSubmit={submit} aria-labelledby="signin-title">
        <div className="brand big"><span className="logo" aria-hidden="true">L</span> Larktun</div>
        <h1 id="signin-title">Sign in to the console</h1>
        <div className="segmented" role="tablist" aria-label="Sign in as">
          <button type="button" role="tab" aria-selected={mode === 'user'} onClick={() => setMode('user')}>Tenant user</button>
          <button type="button" role="tab" aria-selected={mode === 'operator'} onClick={() => setMode('operator')}>Operator</button>
        </div>
        {mode === 'user' ? (
          <>
            <label>Tenant<input name="tenant" autoComplete="organization" required value={tenant} onChange={(e) => setTenant(e.target.value)} /></label>
            <label>Username<input name="username" autoComplete="username" required value={username} onChange={(e) => setUsername(e.target.value)} /></label>
            <label>Password<input name="password" type="password" autoComplete="current-password" required value={password} onChange={(e) => setPassword(e.target.value)} /></label>
          </>
        ) : (
          <label>Operator key<input name="operator_key" type="password" autoComplete="off" required placeholder="lkop_…" value={key} onChange={(e) => setKey(e.target.value)} />
            <span className="hint">In the server's data directory: larktun-data/operator.key</span>
          </label>
        )}
        <ErrorText error={error} />
        <button type="submit" className="primary wide" disabled={busy}>{busy ? 'Signing in…' : 'Sign in'}</button>
      </form>
    </main>
  );
}
