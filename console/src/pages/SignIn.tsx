import { useEffect, useState, type FormEvent } from 'react';
import { useQueryClient } from '@tanstack/react-query';
import { Navigate, useLocation, useNavigate, useSearchParams } from 'react-router';
import { api, enc, setCsrf, type Session } from '../api';
import { useSessionQuery } from '../Shell';
import { ErrorText } from '../ui';

/** What a failed single sign-on (…/signin?sso_error=CODE) means, in words. */
const SSO_ERRORS: Record<string, string> = {
  sso_not_configured: 'Single sign-on is not set up for this tenant.',
  sso_provider_unreachable: 'The identity provider does not answer. Try again later or ask your admin.',
  sso_state_invalid: 'This sign-in link was already used, has expired or was started in another browser. Start again.',
  sso_denied: 'The identity provider did not sign you in.',
  sso_exchange_failed: 'The sign-in could not be completed with the identity provider. Start again.',
  sso_no_email: 'The identity provider did not give an email address.',
  sso_email_unverified: 'Your email address is not verified at the identity provider.',
  sso_domain_not_allowed: 'Your email domain may not sign in to this tenant.',
  sso_no_account: 'Your email has no console account in this tenant. Ask an admin to add you.',
  sso_username_taken: 'A console user with your email as its name exists already. Ask an admin to set its email.',
  sso_no_redirect_uri: 'The server has no public URL set (--public-url), so single sign-on works only on its own machine.',
  too_many_attempts: 'Too many failed sign-ins. Wait a few minutes and try again.',
};

export function SignIn() {
  const q = useSessionQuery();
  const qc = useQueryClient();
  const navigate = useNavigate();
  const [params] = useSearchParams();
  const ssoError = params.get('sso_error');
  // Where a signed-out visitor was going (e.g. a node login link): back there after signing in.
  const from = (useLocation().state as { from?: unknown } | null)?.from;
  const back = typeof from === 'string' && /^\/login\/[A-Za-z0-9_-]{43}$/.test(from) ? from : null;
  const [mode, setMode] = useState<'user' | 'operator'>('user');
  const [tenant, setTenant] = useState(params.get('tenant') ?? '');
  const [ssoMissing, setSsoMissing] = useState(false);
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

  const sso = () => {
    const t = tenant.trim().toLowerCase();
    if (!t) {
      setSsoMissing(true);
      return;
    }
    window.location.assign(`/api/v1/console/oidc/${enc(t)}/start`);
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
        {ssoError && <p className="error" role="alert" data-sso-error={ssoError}>{SSO_ERRORS[ssoError] ?? `Single sign-on failed (${ssoError}).`}</p>}
        <button type="submit" className="primary wide" disabled={busy}>{busy ? 'Signing in…' : 'Sign in'}</button>
        {mode === 'user' && (
          <>
            <div className="or" aria-hidden="true"><span>or</span></div>
            <button type="button" className="wide" onClick={sso}>Sign in with SSO</button>
            {ssoMissing && !tenant.trim() && <p className="error small" role="alert">Enter your tenant first.</p>}
            <span className="hint muted">Single sign-on needs only the tenant: you sign in at your organisation's identity provider.</span>
          </>
        )}
      </form>
    </main>
  );
}
