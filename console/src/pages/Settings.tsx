import { useEffect, useState, type FormEvent } from 'react';
import { useMutation, useQuery, useQueryClient } from '@tanstack/react-query';
import { useParams } from 'react-router';
import { api, enc, type OidcSettings } from '../api';
import { when } from '../format';
import { can, useSession } from '../session';
import { Confirm, ErrorText, Loading } from '../ui';

/** Tenant settings: the OpenID Connect provider for console single sign-on (admins). */
export function Settings() {
  const { tenant = '' } = useParams();
  const s = useSession();
  const qc = useQueryClient();
  const q = useQuery({ queryKey: ['oidc', tenant], queryFn: () => api<OidcSettings>('GET', `/tenants/${enc(tenant)}/oidc`), enabled: can(s, 'admin') });
  const [issuer, setIssuer] = useState('');
  const [clientId, setClientId] = useState('');
  const [secret, setSecret] = useState('');
  const [domains, setDomains] = useState('');
  const [role, setRole] = useState<string>('');
  const [enabled, setEnabled] = useState(true);
  const [confirmDelete, setConfirmDelete] = useState(false);
  const cfg = q.data?.oidc ?? null;
  useEffect(() => {
    if (!q.data) return;
    const c = q.data.oidc;
    setIssuer(c?.issuer ?? '');
    setClientId(c?.client_id ?? '');
    setDomains(c?.allowed_domains.join(', ') ?? '');
    setRole(c ? (c.new_user_role ?? '') : 'auditor');
    setEnabled(c?.enabled ?? true);
  }, [q.data]);
  const save = useMutation({
    mutationFn: () => api<OidcSettings>('PUT', `/tenants/${enc(tenant)}/oidc`, {
      issuer: issuer.trim(),
      client_id: clientId.trim(),
      // Write-only: sent only when typed; left empty, the stored one stays.
      ...(secret !== '' ? { client_secret: secret } : {}),
      allowed_domains: domains.split(/[\s,]+/).map((d) => d.trim().toLowerCase()).filter(Boolean),
      new_user_role: role === '' ? null : role,
      enabled,
    }),
    onSuccess: (d) => {
      setSecret('');
      qc.setQueryData(['oidc', tenant], d);
    },
  });
  const remove = useMutation({
    mutationFn: () => api('DELETE', `/tenants/${enc(tenant)}/oidc`),
    onSuccess: () => {
      setConfirmDelete(false);
      void qc.invalidateQueries({ queryKey: ['oidc', tenant] });
    },
  });

  if (!can(s, 'admin')) return <p role="alert">Settings need the admin role.</p>;
  return (
    <section aria-label="Settings">
      <h2>Single sign-on (OpenID Connect)</h2>
      <p className="muted small">
        Console users of this tenant can sign in at your identity provider (authorization code flow with PKCE). They are matched by their verified email;
        a first sign-in creates a console user with the role below, unless it is “existing users only”.
      </p>
      {q.isPending && <Loading what="settings" />}
      <ErrorText error={q.error} />
      {q.data && (
        <>
          <div className="card" style={{ padding: 12 }}>
            <p className="small" style={{ margin: 0 }}>
              Redirect URI to register at the provider:{' '}
              {q.data.redirect_uri ? <code data-redirect-uri>{q.data.redirect_uri}</code> : <span className="error">none: start the server with --public-url</span>}
            </p>
            <p className="small muted" style={{ margin: '6px 0 0' }}>
              {cfg ? <>Status: <strong>{cfg.enabled ? 'enabled' : 'disabled'}</strong> · secret {cfg.client_secret_set ? 'set' : 'not set (public client)'} · changed {when(cfg.updated_at)} by {cfg.updated_by}</> : 'Not configured: users sign in with passwords only.'}
            </p>
          </div>
          <form className="inline-form" aria-label="OpenID Connect provider" onSubmit={(e: FormEvent) => { e.preventDefault(); save.mutate(); }}>
            <label style={{ flex: '1 1 320px' }}>Issuer URL<input value={issuer} onChange={(e) => setIssuer(e.target.value)} required placeholder="https://login.example.com" autoComplete="off" /></label>
            <label style={{ flex: '1 1 200px' }}>Client ID<input value={clientId} onChange={(e) => setClientId(e.target.value)} required autoComplete="off" /></label>
            <label style={{ flex: '1 1 200px' }}>Client secret
              <input type="password" value={secret} onChange={(e) => setSecret(e.target.value)} autoComplete="new-password" placeholder={cfg?.client_secret_set ? '•••••• (set; type to replace)' : 'not set'} />
            </label>
            <label style={{ flex: '1 1 320px' }}>Allowed email domains<input value={domains} onChange={(e) => setDomains(e.target.value)} required placeholder="example.com, example.org" autoComplete="off" /></label>
            <label>Role for new users
              <select value={role} onChange={(e) => setRole(e.target.value)}>
                <option value="admin">admin</option><option value="operator">operator</option><option value="auditor">auditor</option>
                <option value="">existing users only</option>
              </select>
            </label>
            <label className="check-label"><input type="checkbox" checked={enabled} onChange={(e) => setEnabled(e.target.checked)} /> Enabled</label>
            <button type="submit" className="primary" disabled={save.isPending}>Save</button>
            {cfg && <button type="button" className="danger" onClick={() => { remove.reset(); setConfirmDelete(true); }}>Remove</button>}
            {save.isSuccess && <span className="small" role="status">Saved.</span>}
            <ErrorText error={save.error} />
          </form>
        </>
      )}
      <Confirm open={confirmDelete} title="Remove single sign-on?" action="Remove" danger busy={remove.isPending} error={remove.error}
        body={<p>SSO users stay but cannot sign in until a provider is set again.</p>} onConfirm={() => remove.mutate()} onClose={() => setConfirmDelete(false)} />
    </section>
  );
}
