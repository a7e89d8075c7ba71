import { useState, type FormEvent } from 'react';
import { useMutation, useQuery, useQueryClient } from '@tanstack/react-query';
import { Link } from 'react-router';
import { api, type TenantInfo } from '../api';
import { when } from '../format';
import { ErrorText, Loading } from '../ui';

export function Tenants() {
  const qc = useQueryClient();
  const q = useQuery({ queryKey: ['tenants'], queryFn: () => api<{ tenants: TenantInfo[] }>('GET', '/tenants') });
  const [name, setName] = useState('');
  const create = useMutation({
    mutationFn: () => api<TenantInfo>('POST', '/tenants', { name: name.trim() }),
    onSuccess: () => {
      setName('');
      void qc.invalidateQueries({ queryKey: ['tenants'] });
    },
  });
  return (
    <section aria-label="Tenants">
      {q.isPending && <Loading what="tenants" />}
      <ErrorText error={q.error} />
      {q.data && (
        <table className="grid">
          <thead><tr><th scope="col">Tenant</th><th scope="col">IPv4 pool</th><th scope="col">IPv6 pool</th><th scope="col">DNS base</th><th scope="col">Max nodes</th><th scope="col">Created</th></tr></thead>
          <tbody>
            {q.data.tenants.map((t) => (
              <tr key={t.name}>
                <td><Link className="strong" to={`/${t.name}/machines`}>{t.name}</Link></td>
                <td className="mono small">{t.pool4}</td>
                <td className="mono small">{t.pool6 ?? '—'}</td>
                <td className="mono small">{t.dns_base}</td>
                <td className="num">{t.max_nodes}</td>
                <td className="small">{when(t.created_at)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {q.data && q.data.tenants.length === 0 && <p className="empty">No tenants yet.</p>}
      <form className="inline-form" onSubmit={(e: FormEvent) => { e.preventDefault(); create.mutate(); }} aria-label="Create a tenant">
        <h3 className="small-h">Create a tenant</h3>
        <label>Name<input value={name} onChange={(e) => setName(e.target.value)} required pattern="[a-z0-9]([a-z0-9\-]{0,61}[a-z0-9])?" title="lowercase letters, digits and dashes" /></label>
        <button type="submit" className="primary" disabled={create.isPending}>Create tenant</button>
        <ErrorText error={create.error} />
      </form>
    </section>
  );
}
