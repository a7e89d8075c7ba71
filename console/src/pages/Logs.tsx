import { Fragment, useMemo, useState } from 'react';
import { useQuery } from '@tanstack/react-query';
import { useParams } from 'react-router';
import { usePoll } from '../live';
import { api, enc, type AuditEntry } from '../api';
import { when } from '../format';
import { ErrorText, Loading, Pager } from '../ui';

const PAGE = 100;
const MATCH_LIMIT = 1000;

interface Verify { ok: boolean; entries: number; broken_at?: number; reason?: string }

export function Logs() {
  const { tenant = '' } = useParams();
  const poll = usePoll();
  const [action, setAction] = useState('');
  const [actor, setActor] = useState('');
  const [object, setObject] = useState('');
  const [since, setSince] = useState('');
  const [page, setPage] = useState(0);
  const [open, setOpen] = useState<number | null>(null);

  const verify = useQuery({ queryKey: ['audit', tenant, 'verify'], queryFn: () => api<Verify>('GET', `/tenants/${enc(tenant)}/audit/verify`), refetchInterval: poll });
  const total = verify.data?.entries ?? 0;
  const serverFilter = action.trim() !== '' || since !== '';
  // Unfiltered: newest first, a page of 100 by sequence number. Filtered by action or
  // time: the server's matches (up to 1000, from the oldest), newest first.
  const after = serverFilter ? 0 : Math.max(0, total - PAGE * (page + 1));
  const limit = serverFilter ? MATCH_LIMIT : Math.min(PAGE, Math.max(1, total - PAGE * page));
  const qs = new URLSearchParams({ after: String(after), limit: String(limit) });
  if (action.trim()) qs.set('action', action.trim());
  if (since) qs.set('since', new Date(since).toISOString());
  const entries = useQuery({
    queryKey: ['audit', tenant, qs.toString()],
    queryFn: () => api<{ entries: AuditEntry[] }>('GET', `/tenants/${enc(tenant)}/audit?${qs.toString()}`),
    enabled: verify.isSuccess,
  });
  const rows = useMemo(() => {
    const a = actor.trim().toLowerCase();
    const o = object.trim().toLowerCase();
    return [...(entries.data?.entries ?? [])]
      .reverse()
      .filter((e) => !a || e.actor.toLowerCase().includes(a))
      .filter((e) => !o || `${e.object_type}:${e.object_id}`.toLowerCase().includes(o));
  }, [entries.data, actor, object]);
  const pages = serverFilter ? 1 : Math.max(1, Math.ceil(total / PAGE));

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
      <div className="toolbar filters">
        <label>Action<input value={action} onChange={(e) => { setAction(e.target.value); setPage(0); }} placeholder="policy.set" /></label>
        <label>Actor<input value={actor} onChange={(e) => setActor(e.target.value)} placeholder="user:alice" /></label>
        <label>Object<input value={object} onChange={(e) => setObject(e.target.value)} placeholder="node:3" /></label>
        <label>Since<input type="datetime-local" value={since} onChange={(e) => { setSince(e.target.value); setPage(0); }} /></label>
      </div>
      {serverFilter && entries.data && entries.data.entries.length === MATCH_LIMIT && <p className="muted small">Showing the first {MATCH_LIMIT} matches; narrow the time to see later ones.</p>}
      {entries.isPending && verify.isSuccess && <Loading what="entries" />}
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
      <Pager page={page} pages={pages} onPage={setPage} />
    </section>
  );
}
