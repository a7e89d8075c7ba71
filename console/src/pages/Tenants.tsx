import { useState, type FormEvent } from 'react';
import { useMutation, useQuery, useQueryClient } from '@tanstack/react-query';
import { Link } from 'react-router';
import { api, enc, type TenantInfo, type TenantWithCounts } from '../api';
import { when } from '../format';
import { ErrorText, Loading, Modal } from '../ui';

const NAME_PATTERN = '[a-z0-9]([a-z0-9\\-]{0,61}[a-z0-9])?';

/** The editable fields as the form holds them (text; an empty IPv6 pool means none). */
interface Fields { pool4: string; pool6: string; dns_base: string; max_nodes: string }

const fieldsOf = (t: TenantInfo): Fields => ({ pool4: t.pool4, pool6: t.pool6 ?? '', dns_base: t.dns_base, max_nodes: String(t.max_nodes) });

/** Only what changed goes to PATCH /tenants/{t}, so an unchanged pool is never re-validated or re-audited. */
function patchOf(before: TenantInfo, f: Fields): Record<string, unknown> {
  const p: Record<string, unknown> = {};
  if (f.pool4.trim() !== before.pool4) p.pool4 = f.pool4.trim();
  const pool6 = f.pool6.trim() === '' ? null : f.pool6.trim();
  if (pool6 !== before.pool6) p.pool6 = pool6;
  if (f.dns_base.trim() !== before.dns_base) p.dns_base = f.dns_base.trim();
  if (Number(f.max_nodes) !== before.max_nodes) p.max_nodes = Number(f.max_nodes);
  return p;
}

function TenantFields({ f, set }: { f: Fields; set: (f: Fields) => void }) {
  return (
    <>
      <label>IPv4 address pool<input className="mono" value={f.pool4} onChange={(e) => set({ ...f, pool4: e.target.value })} placeholder="100.64.0.0/10" required /></label>
      <label>IPv6 address pool (empty: none)<input className="mono" value={f.pool6} onChange={(e) => set({ ...f, pool6: e.target.value })} placeholder="fd7a:115c:a1e0::/48" /></label>
      <label>DNS base name<input className="mono" value={f.dns_base} onChange={(e) => set({ ...f, dns_base: e.target.value })} required pattern="[a-z0-9]([a-z0-9.\-]{0,251}[a-z0-9])?" title="lowercase letters, digits, dots and dashes" /></label>
      <label>Node limit<input type="number" min={1} max={1000000} value={f.max_nodes} onChange={(e) => set({ ...f, max_nodes: e.target.value })} required /></label>
    </>
  );
}

export function Tenants() {
  const qc = useQueryClient();
  const q = useQuery({ queryKey: ['tenants'], queryFn: () => api<{ tenants: TenantWithCounts[] }>('GET', '/tenants'), refetchInterval: 10_000 });
  const [name, setName] = useState('');
  const [more, setMore] = useState(false);
  const [nf, setNf] = useState<Fields>({ pool4: '', pool6: '', dns_base: '', max_nodes: '' });
  const [editing, setEditing] = useState<TenantWithCounts | null>(null);
  const [ef, setEf] = useState<Fields>({ pool4: '', pool6: '', dns_base: '', max_nodes: '' });

  const create = useMutation({
    mutationFn: () => {
      const body: Record<string, unknown> = { name: name.trim() };
      if (more) {
        if (nf.pool4.trim()) body.pool4 = nf.pool4.trim();
        if (nf.pool6.trim()) body.pool6 = nf.pool6.trim();
        if (nf.dns_base.trim()) body.dns_base = nf.dns_base.trim();
        if (nf.max_nodes.trim()) body.max_nodes = Number(nf.max_nodes);
      }
      return api<TenantInfo>('POST', '/tenants', body);
    },
    onSuccess: () => {
      setName('');
      setNf({ pool4: '', pool6: '', dns_base: '', max_nodes: '' });
      void qc.invalidateQueries({ queryKey: ['tenants'] });
    },
  });
  const edit = useMutation({
    mutationFn: (t: TenantWithCounts) => api<TenantInfo>('PATCH', `/tenants/${enc(t.name)}`, patchOf(t, ef)),
    onSuccess: () => {
      setEditing(null);
      void qc.invalidateQueries({ queryKey: ['tenants'] });
    },
  });
  const openEdit = (t: TenantWithCounts) => {
    edit.reset();
    setEf(fieldsOf(t));
    setEditing(t);
  };

  return (
    <section aria-label="Tenants">
      {q.isPending && <Loading what="tenants" />}
      <ErrorText error={q.error} />
      {q.data && (
        <table className="grid">
          <thead>
            <tr>
              <th scope="col">Tenant</th><th scope="col" className="num">Machines</th><th scope="col" className="num">Online</th>
              <th scope="col">IPv4 pool</th><th scope="col">IPv6 pool</th><th scope="col">DNS base</th><th scope="col" className="num">Limit</th><th scope="col">Created</th>
              <th scope="col"><span className="sr-only">Actions</span></th>
            </tr>
          </thead>
          <tbody>
            {q.data.tenants.map((t) => (
              <tr key={t.name} data-tenant={t.name}>
                <td><Link className="strong" to={`/${t.name}/machines`}>{t.name}</Link></td>
                <td className="num" data-nodes={t.nodes}>{t.nodes}</td>
                <td className="num" data-online={t.online_nodes}>{t.online_nodes}</td>
                <td className="mono small">{t.pool4}</td>
                <td className="mono small">{t.pool6 ?? '—'}</td>
                <td className="mono small">{t.dns_base}</td>
                <td className="num">{t.max_nodes}</td>
                <td className="small">{when(t.created_at)}</td>
                <td className="row-actions">
                  <button type="button" onClick={() => openEdit(t)} aria-label={`Edit ${t.name}`}>Edit</button>
                  <Link className="button" to={`/${t.name}/machines`} aria-label={`Switch into ${t.name}`}>Open</Link>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {q.data && q.data.tenants.length === 0 && <p className="empty">No tenants yet.</p>}
      <form className="inline-form" onSubmit={(e: FormEvent) => { e.preventDefault(); create.mutate(); }} aria-label="Create a tenant">
        <h3 className="small-h">Create a tenant</h3>
        <label>Name<input value={name} onChange={(e) => setName(e.target.value)} required pattern={NAME_PATTERN} title="lowercase letters, digits and dashes" /></label>
        <label className="check-label"><input type="checkbox" checked={more} onChange={(e) => setMore(e.target.checked)} /> Set pools and limits (defaults otherwise)</label>
        {more && (
          <>
            <label>IPv4 address pool<input className="mono" value={nf.pool4} onChange={(e) => setNf({ ...nf, pool4: e.target.value })} placeholder="100.64.0.0/10" /></label>
            <label>IPv6 address pool<input className="mono" value={nf.pool6} onChange={(e) => setNf({ ...nf, pool6: e.target.value })} placeholder="fd7a:115c:a1e0::/48" /></label>
            <label>DNS base name<input className="mono" value={nf.dns_base} onChange={(e) => setNf({ ...nf, dns_base: e.target.value })} placeholder={`${name || 'name'}.larktun.internal`} /></label>
            <label>Node limit<input type="number" min={1} max={1000000} value={nf.max_nodes} onChange={(e) => setNf({ ...nf, max_nodes: e.target.value })} placeholder="10000" /></label>
          </>
        )}
        <button type="submit" className="primary" disabled={create.isPending}>Create tenant</button>
        <ErrorText error={create.error} />
      </form>
      <Modal open={editing !== null} title={`Edit ${editing?.name ?? ''}`} onClose={() => setEditing(null)}>
        <form onSubmit={(e: FormEvent) => { e.preventDefault(); if (editing) edit.mutate(editing); }} aria-label="Edit tenant">
          <TenantFields f={ef} set={setEf} />
          <p className="muted small">A tenant&apos;s name is its identity in every path and key and cannot change. Machines keep the addresses they have; new ones get theirs from the new pool.</p>
          <ErrorText error={edit.error} />
          <div className="actions">
            <button type="button" onClick={() => setEditing(null)}>Cancel</button>
            <button type="submit" className="primary" disabled={edit.isPending}>Save</button>
          </div>
        </form>
      </Modal>
    </section>
  );
}
