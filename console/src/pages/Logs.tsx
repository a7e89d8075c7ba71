import { Fragment, useState } from 'react';
import { keepPreviousData, useQuery } from '@tanstack/react-query';
import { useParams } from 'react-router';
import { usePoll } from '../live';
import { api, enc, type AuditEntry } from '../api';
import { when } from '../format';
import { ErrorText, Loading, Pager, useSettled } from '../ui';

const PAGE = 100;

interface Verify { ok: boolean; entries: number; broken_at?: number; reason?: string }


export function Logs() {
  const { tenant = '' } = useParams();
  const poll = usePoll();
  const [action, setAction] = useState('');
  const [actor, setActor] = useState('');
  const [object, setObject] = useState('');
  const [since, setSince] = useState('');
  const [until, setUntil] = useState('');
  const [page, setPage] = useState(0);
  const [open, setOpen] = useState<number | null>(null);

  const verify = useQuery({ queryKey: ['audit', tenant, 'verify'], queryFn: () => api<Verify>('GET', `/tenants/${enc(tenant)}/audit/verify`), refetchInterval: poll });
  // The server filters (exact action, actor and object, a time range) and pages,
  // newest first; total is the number of matches.
  const f = { action: useSettled(action.trim(), 300), actor: useSettled(actor.trim(), 300), object: useSettled(object.trim(), 300) };
  const qs = new URLSearchParams({ order: 'desc', limit: String(PAGE), offset: String(page * PAGE) });
  if (f.action) qs.set('action', f.action);
  if (f.actor) qs.set('actor', f.actor);
  if (f.object) qs.set('object', f.object);
  const sinceIso = since && !Number.isNaN(Date.parse(since)) ? new Date(since).toISOString() : '';
  const untilIso = until && !Number.isNaN(Date.parse(until)) ? new Date(until).toISOString() : '';
  if (sinceIso) qs.set('since', sinceIso);
  if (untilIso) qs.set('until', untilIso);
  const entries = useQuery({
    queryKey: ['audit', tenant, qs.toString()],
    queryFn: () => api<{ entries: AuditEntry[]; total: number }>('GET', `/tenants/${enc(tenant)}/audit?${qs.toString()}`),
    refetchInterval: poll,
    placeholderData: keepPreviousData,
  });
  const rows = entries.data?.entries ?? [];
  const total = entries.data?.total ?? 0;
  const pages = Math.max(1, Math.ceil(total / PAGE));
  const reset = <T,>(set: (v: T) => void) => (v: T) => { set(v); setPage(0); };

  return (
    <section aria-label="Audit log">
      {verify.isPending && <Loading what="the audit chain" />}
      <ErrorText error={verify.error} />
      {verify.data && (
        <p className={`chain ${verify.data.ok ? 'ok' : 'bad'}`} role="status" data-chain={verify.data.ok ? 'ok' : 'broken'}>
          {verify.data.ok
            ? `Hash chain verified: all ${verify.data.entries} entries are intact.`
            : `Hash chain BROKEN at entry ${verify.data.broken_at ?? '?'}: ${verify.data.reason ?? ''}`}
        </p>
      )}
      <div className="toolbar filters" role="search" aria-label="Filter the audit log">
        <label>Action<input value={action} onChange={(e) => reset(setAction)(e.target.value)} placeholder="policy.set" /></label>
        <label>Actor<input value={actor} onChange={(e) => reset(setActor)(e.target.value)} placeholder="user:alice" /></label>
        <label>Object<input value={object} onChange={(e) => reset(setObject)(e.target.value)} placeholder="node:3" /></label>
        <label>From<input type="datetime-local" value={since} onChange={(e) => reset(setSince)(e.target.value)} /></label>
        <label>Until<input type="datetime-local" value={until} onChange={(e) => reset(setUntil)(e.target.value)} /></label>
      </div>
      {entries.data && <p className="muted small" data-total={total}>{total === 1 ? '1 entry' : `${total} entries`}{f.action || f.actor || f.object || sinceIso || untilIso ? ' match' : ''}, newest first.</p>}
      {entries.isPending && <Loading what="entries" />}
      <ErrorText error={entries.error} />
      <table className="grid">
        <thead><tr><th scope="col">#</th><th scope="col">Time</th><th scope="col">Actor</th><th scope="col">Action</th><th scope="col">Object</th><th scope="col"><span className="sr-only">Details</span></th></tr></thead>
        <tbody>
          {rows.map((e) => (
            <Fragment key={e.seq}>
              <tr data-seq={e.seq}>
                <td className="num muted">{e.seq}</td>
                <td className="small">{when(e.ts)}</td>
                <td className="mono small">{e.actor}</td>
                <td className="mono small strong">{e.action}</td>
                <td className="mono small">{e.object_type}:{e.object_id}</td>
                <td><button type="button" className="link" aria-expanded={open === e.seq} onClick={() => setOpen(open === e.seq ? null : e.seq)}>{open === e.seq ? 'Hide' : 'Details'}</button></td>
              </tr>
              {open === e.seq && (
                <tr className="details">
                  <td colSpan={6}>
                    <div className="before-after">
                      <div><h3 className="small-h">Before</h3><pre>{e.before === null ? '—' : JSON.stringify(e.before, null, 2)}</pre></div>
                      <div><h3 className="small-h">After</h3><pre>{e.after === null ? '—' : JSON.stringify(e.after, null, 2)}</pre></div>
                    </div>
                  </td>
                </tr>
              )}
            </Fragment>
          ))}
        </tbody>
      </table>
      {entries.data && rows.length === 0 && <p className="empty">No entry matches.</p>}
      <Pager page={Math.min(page, pages - 1)} pages={pages} onPage={setPage} />
    </section>
  );
}
