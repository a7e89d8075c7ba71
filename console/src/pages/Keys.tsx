import { useState, type FormEvent } from 'react';
import { useMutation, useQuery, useQueryClient } from '@tanstack/react-query';
import { useParams } from 'react-router';
import { api, enc, type ApiKey, type AuthKey } from '../api';
import { ago, when } from '../format';
import { can, useSession } from '../session';
import { Confirm, ErrorText, Loading, Modal } from '../ui';

type Revoke = { kind: 'auth' | 'api'; id: number; prefix: string } | null;

export function Keys() {
  const { tenant = '' } = useParams();
  const s = useSession();
  const qc = useQueryClient();
  const mayAdmin = can(s, 'admin');
  const auth = useQuery({ queryKey: ['authkeys', tenant], queryFn: () => api<{ authkeys: AuthKey[] }>('GET', `/tenants/${enc(tenant)}/authkeys`) });
  const apik = useQuery({ queryKey: ['apikeys', tenant], queryFn: () => api<{ apikeys: ApiKey[] }>('GET', `/tenants/${enc(tenant)}/apikeys`), enabled: can(s, 'keys') });
  const [user, setUser] = useState('');
  const [tags, setTags] = useState('');
  const [reusable, setReusable] = useState(false);
  const [ephemeral, setEphemeral] = useState(false);
  const [days, setDays] = useState('90');
  const [desc, setDesc] = useState('');
  const [apiRole, setApiRole] = useState('auditor');
  const [apiDesc, setApiDesc] = useState('');
  const [secret, setSecret] = useState<{ title: string; key: string; command: string | null } | null>(null);
  const [revoke, setRevoke] = useState<Revoke>(null);

  const createAuth = useMutation({
    mutationFn: () => {
      const tagList = tags.split(/[\s,]+/).filter(Boolean);
      const d = Number(days);
      return api<AuthKey & { key: string }>('POST', `/tenants/${enc(tenant)}/authkeys`, {
        ...(user.trim() ? { user: user.trim() } : {}),
        ...(tagList.length ? { tags: tagList } : {}),
        reusable, ephemeral,
        ...(d > 0 ? { expires_at: new Date(Date.now() + d * 86400_000).toISOString() } : {}),
        ...(desc.trim() ? { description: desc.trim() } : {}),
      });
    },
    onSuccess: (k) => {
      setSecret({ title: 'Auth key created', key: k.key, command: `sudo larktun up --login-server ${window.location.origin} --authkey ${k.key}` });
      void qc.invalidateQueries({ queryKey: ['authkeys', tenant] });
    },
  });
  const createApi = useMutation({
    mutationFn: () => api<ApiKey & { key: string }>('POST', `/tenants/${enc(tenant)}/apikeys`, { role: apiRole, ...(apiDesc.trim() ? { description: apiDesc.trim() } : {}) }),
    onSuccess: (k) => {
      setSecret({ title: 'API key created', key: k.key, command: null });
      void qc.invalidateQueries({ queryKey: ['apikeys', tenant] });
    },
  });
  const doRevoke = useMutation({
    mutationFn: (r: NonNullable<Revoke>) => api('DELETE', `/tenants/${enc(tenant)}/${r.kind === 'auth' ? 'authkeys' : 'apikeys'}/${r.id}`),
    onSuccess: () => {
      setRevoke(null);
      void qc.invalidateQueries({ queryKey: ['authkeys', tenant] });
      void qc.invalidateQueries({ queryKey: ['apikeys', tenant] });
    },
  });

  return (
    <section aria-label="Keys">
      <h2>Auth keys</h2>
      <p className="muted small">A machine joins the network with an auth key: <code>larktun up --authkey …</code>.</p>
      {auth.isPending && <Loading what="auth keys" />}
      <ErrorText error={auth.error} />
      {auth.data && (
        <table className="grid">
          <thead><tr><th scope="col">Key</th><th scope="col">For</th><th scope="col">Kind</th><th scope="col">Used</th><th scope="col">Expires</th><th scope="col">Description</th>{mayAdmin && <th scope="col"><span className="sr-only">Actions</span></th>}</tr></thead>
          <tbody>
            {auth.data.authkeys.map((k) => (
              <tr key={k.id}>
                <td className="mono small">lkauth_{k.prefix}_…{!k.usable && <span className="badge warn">spent or expired</span>}</td>
                <td>{k.user ?? ''}{k.tags.map((t) => <span key={t} className="badge">{t}</span>)}</td>
                <td className="small">{[k.reusable ? 'reusable' : 'one-off', k.ephemeral ? 'ephemeral' : ''].filter(Boolean).join(', ')}</td>
                <td className="num">{k.used_count}</td>
                <td className="small">{k.expires_at ? when(k.expires_at) : 'never'}</td>
                <td>{k.description}</td>
                {mayAdmin && <td className="row-actions"><button type="button" className="danger" onClick={() => { doRevoke.reset(); setRevoke({ kind: 'auth', id: k.id, prefix: k.prefix }); }}>Revoke</button></td>}
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {auth.data && auth.data.authkeys.length === 0 && <p className="empty">No auth keys.</p>}
      {mayAdmin && (
        <form className="inline-form" onSubmit={(e: FormEvent) => { e.preventDefault(); createAuth.mutate(); }} aria-label="Create an auth key">
          <h3 className="small-h">Add machine: create an auth key</h3>
          <label>User<input value={user} onChange={(e) => setUser(e.target.value)} placeholder="alice" /></label>
          <label>Tags<input value={tags} onChange={(e) => setTags(e.target.value)} placeholder="tag:server" /></label>
          <label>Expires in (days, 0 never)<input type="number" min={0} max={3650} value={days} onChange={(e) => setDays(e.target.value)} /></label>
          <label>Description<input value={desc} onChange={(e) => setDesc(e.target.value)} maxLength={200} /></label>
          <label className="check-label"><input type="checkbox" checked={reusable} onChange={(e) => setReusable(e.target.checked)} /> Reusable</label>
          <label className="check-label"><input type="checkbox" checked={ephemeral} onChange={(e) => setEphemeral(e.target.checked)} /> Ephemeral</label>
          <button type="submit" className="primary" disabled={createAuth.isPending}>Create auth key</button>
          <ErrorText error={createAuth.error} />
        </form>
      )}
      {can(s, 'keys') && (
        <>
          <h2>API keys</h2>
          <p className="muted small">For scripts and the CLI: <code>Authorization: Bearer lkapi_…</code>.</p>
          {apik.isPending && <Loading what="API keys" />}
          <ErrorText error={apik.error} />
          {apik.data && (
            <table className="grid">
              <thead><tr><th scope="col">Key</th><th scope="col">Role</th><th scope="col">Last used</th><th scope="col">Expires</th><th scope="col">Description</th>{mayAdmin && <th scope="col"><span className="sr-only">Actions</span></th>}</tr></thead>
              <tbody>
                {apik.data.apikeys.map((k) => (
                  <tr key={k.id}>
                    <td className="mono small">lkapi_{k.prefix}_…</td>
                    <td><span className="badge">{k.role}</span></td>
                    <td className="small">{ago(k.last_used_at)}</td>
                    <td className="small">{k.expires_at ? when(k.expires_at) : 'never'}</td>
                    <td>{k.description}</td>
                    {mayAdmin && <td className="row-actions"><button type="button" className="danger" onClick={() => { doRevoke.reset(); setRevoke({ kind: 'api', id: k.id, prefix: k.prefix }); }}>Revoke</button></td>}
                  </tr>
                ))}
              </tbody>
            </table>
          )}
          {mayAdmin && (
            <form className="inline-form" onSubmit={(e: FormEvent) => { e.preventDefault(); createApi.mutate(); }} aria-label="Create an API key">
              <label>Role
                <select value={apiRole} onChange={(e) => setApiRole(e.target.value)}>
                  <option value="admin">admin</option><option value="operator">operator</option><option value="auditor">auditor</option>
                </select>
              </label>
              <label>Description<input value={apiDesc} onChange={(e) => setApiDesc(e.target.value)} maxLength={200} /></label>
              <button type="submit" className="primary" disabled={createApi.isPending}>Create API key</button>
              <ErrorText error={createApi.error} />
            </form>
          )}
        </>
      )}
      <Modal open={secret !== null} title={secret?.title ?? ''} onClose={() => setSecret(null)}>
        <p><strong>Copy it now: it is shown only this once.</strong></p>
        <label>Key<input readOnly value={secret?.key ?? ''} className="mono" onFocus={(e) => e.target.select()} /></label>
        {secret?.command && <label>Command to run on the machine<textarea readOnly rows={3} className="mono" value={secret.command} onFocus={(e) => e.target.select()} /></label>}
        <div className="actions"><button type="button" className="primary" onClick={() => setSecret(null)}>Done</button></div>
      </Modal>
      <Confirm open={revoke !== null} title={`Revoke ${revoke?.kind === 'api' ? 'lkapi' : 'lkauth'}_${revoke?.prefix ?? ''}?`} action="Revoke" danger busy={doRevoke.isPending} error={doRevoke.error}
        body={<p>{revoke?.kind === 'api' ? 'Scripts using this key stop working.' : 'No new machine can join with it; machines that joined stay.'}</p>}
        onConfirm={() => revoke && doRevoke.mutate(revoke)} onClose={() => setRevoke(null)} />
    </section>
  );
}
