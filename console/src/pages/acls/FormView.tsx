// The Access controls page's Form tab: groups, tag owners, hosts and ACL
// rules of the text in the editor, edited in place. Every change is a
// jsonc-parser edit of the same document (formdoc.ts), so comments and the
// rest of the text stay; the page applies it to the editor.
import { useMemo, useState, type FormEvent } from 'react';
import type { Edit } from 'jsonc-parser';
import { addAcl, readForm, setAcl, setEntry, splitDestinations, splitList, type AclRule, type Section } from './formdoc';

interface Props {
  text: string;
  readOnly: boolean;
  onEdit: (edits: Edit[]) => void;
}

const LABELS: Record<Section, { title: string; name: string; value: string; placeholderName: string; placeholderValue: string }> = {
  groups: { title: 'Groups', name: 'Group', value: 'Members', placeholderName: 'group:eng', placeholderValue: 'alice@example.com, bob@' },
  tagOwners: { title: 'Tag owners', name: 'Tag', value: 'Owners', placeholderName: 'tag:server', placeholderValue: 'group:admins' },
  hosts: { title: 'Hosts', name: 'Host', value: 'Address or prefix', placeholderName: 'printer', placeholderValue: '192.168.1.20' },
};

export default function FormView({ text, readOnly, onEdit }: Props) {
  const read = useMemo(() => readForm(text), [text]);
  if (!read.ok) return <p className="error" role="alert">{read.error}</p>;
  const m = read.model;
  const lists = (s: 'groups' | 'tagOwners') => m[s].map(([k, v]) => [k, v.join(', ')] as [string, string]);
  return (
    <div className="policy-form" aria-label="Policy form">
      <EntrySection section="groups" rows={lists('groups')} text={text} readOnly={readOnly} onEdit={onEdit} />
      <EntrySection section="tagOwners" rows={lists('tagOwners')} text={text} readOnly={readOnly} onEdit={onEdit} />
      <EntrySection section="hosts" rows={m.hosts} text={text} readOnly={readOnly} onEdit={onEdit} />
      <AclSection rules={m.acls} text={text} readOnly={readOnly} onEdit={onEdit} />
    </div>
  );
}

function EntrySection({ section, rows, text, readOnly, onEdit }: { section: Section; rows: [string, string][] } & Props) {
  const l = LABELS[section];
  const [name, setName] = useState('');
  const [value, setValue] = useState('');
  const [error, setError] = useState<string | null>(null);
  const toValue = (v: string): string | string[] => (section === 'hosts' ? v.trim() : splitList(v));
  const add = (e: FormEvent) => {
    e.preventDefault();
    const n = name.trim();
    if (!n) return setError(`${l.name}: a name is needed`);
    if (rows.some(([k]) => k === n)) return setError(`${n} exists already: change it in its row`);
    if (section === 'groups' && !n.startsWith('group:')) return setError('group names start with "group:"');
    if (section === 'tagOwners' && !n.startsWith('tag:')) return setError('tag names start with "tag:"');
    if (section === 'hosts' && !value.trim()) return setError('a host needs an address');
    setError(null);
    onEdit(setEntry(text, section, n, toValue(value)));
    setName('');
    setValue('');
  };
  return (
    <section className="card" aria-label={l.title}>
      <div className="card-head"><h3 className="small-h">{l.title} <span className="count">{rows.length}</span></h3></div>
      <table className="grid compact">
        <thead><tr><th scope="col">{l.name}</th><th scope="col">{l.value}</th><th scope="col"><span className="sr-only">Actions</span></th></tr></thead>
        <tbody>
          {rows.map(([k, v]) => (
            <EntryRow key={`${k}\u0000${v}`} name={k} value={v} readOnly={readOnly}
              onSave={(nv) => onEdit(setEntry(text, section, k, toValue(nv)))}
              onRemove={() => onEdit(setEntry(text, section, k, undefined))} />
          ))}
          {rows.length === 0 && <tr><td colSpan={3} className="muted small">None.</td></tr>}
        </tbody>
      </table>
      {!readOnly && (
        <form className="inline-form flat" onSubmit={add} aria-label={`Add to ${l.title.toLowerCase()}`}>
          <label>{l.name}<input value={name} onChange={(e) => setName(e.target.value)} placeholder={l.placeholderName} className="mono" /></label>
          <label className="grow">{l.value}<input value={value} onChange={(e) => setValue(e.target.value)} placeholder={l.placeholderValue} className="mono" /></label>
          <button type="submit">Add</button>
          {error && <p className="error" role="alert">{error}</p>}
        </form>
      )}
    </section>
  );
}

function EntryRow({ name, value, readOnly, onSave, onRemove }: { name: string; value: string; readOnly: boolean; onSave: (v: string) => void; onRemove: () => void }) {
  const [v, setV] = useState(value);
  return (
    <tr data-entry={name}>
      <td className="mono">{name}</td>
      <td>{readOnly ? <span className="mono">{value}</span> : <input aria-label={`Value of ${name}`} className="mono wide" value={v} onChange={(e) => setV(e.target.value)} />}</td>
      <td className="row-actions">
        {!readOnly && (
          <>
            <button type="button" disabled={v === value} onClick={() => onSave(v)} aria-label={`Apply ${name}`}>Apply</button>
            <button type="button" className="danger" onClick={onRemove} aria-label={`Remove ${name}`}>Remove</button>
          </>
        )}
      </td>
    </tr>
  );
}

function AclSection({ rules, text, readOnly, onEdit }: { rules: AclRule[] } & Props) {
  const [src, setSrc] = useState('');
  const [dst, setDst] = useState('');
  const [error, setError] = useState<string | null>(null);
  const add = (e: FormEvent) => {
    e.preventDefault();
    const s = splitList(src);
    const d = splitDestinations(dst);
    if (s.length === 0 || d.length === 0) return setError('a rule needs at least one source and one destination');
    setError(null);
    onEdit(addAcl(text, { action: 'accept', src: s, dst: d }));
    setSrc('');
    setDst('');
  };
  return (
    <section className="card" aria-label="ACL rules">
      <div className="card-head"><h3 className="small-h">ACL rules <span className="count">{rules.length}</span></h3><span className="muted small">Each rule accepts traffic from its sources to its destinations (host:ports); anything not accepted is denied.</span></div>
      <table className="grid compact">
        <thead><tr><th scope="col">#</th><th scope="col">Sources</th><th scope="col">Destinations</th><th scope="col"><span className="sr-only">Actions</span></th></tr></thead>
        <tbody>
          {rules.map((r, i) => (
            <AclRow key={`${i}\u0000${r.src.join(',')}\u0000${r.dst.join(',')}`} index={i} rule={r} readOnly={readOnly}
              onSave={(nr) => onEdit(setAcl(text, i, nr))} onRemove={() => onEdit(setAcl(text, i, undefined))} />
          ))}
          {rules.length === 0 && <tr><td colSpan={4} className="muted small">No rules: while there are none (and no grants), every node reaches every other.</td></tr>}
        </tbody>
      </table>
      {!readOnly && (
        <form className="inline-form flat" onSubmit={add} aria-label="Add an ACL rule">
          <label className="grow">Sources<input value={src} onChange={(e) => setSrc(e.target.value)} placeholder="group:eng, tag:ci" className="mono" /></label>
          <label className="grow">Destinations (separated by spaces)<input value={dst} onChange={(e) => setDst(e.target.value)} placeholder="tag:server:22,443 10.1.0.0/16:*" className="mono" /></label>
          <button type="submit">Add rule</button>
          {error && <p className="error" role="alert">{error}</p>}
        </form>
      )}
    </section>
  );
}

// Destinations carry commas inside their port lists ("tag:x:22,443"), so they are edited one per line.
function AclRow({ index, rule, readOnly, onSave, onRemove }: { index: number; rule: AclRule; readOnly: boolean; onSave: (r: AclRule) => void; onRemove: () => void }) {
  const [src, setSrc] = useState(rule.src.join(', '));
  const [dst, setDst] = useState(rule.dst.join('\n'));
  const changed = src !== rule.src.join(', ') || dst !== rule.dst.join('\n');
  return (
    <tr data-acl={index}>
      <td className="num">{index + 1}{rule.action !== 'accept' && <span className="badge">{rule.action}</span>}{rule.proto && <span className="badge">{rule.proto}</span>}</td>
      <td>{readOnly ? <span className="mono">{rule.src.join(', ')}</span> : <input aria-label={`Sources of rule ${index + 1}`} className="mono wide" value={src} onChange={(e) => setSrc(e.target.value)} />}</td>
      <td>{readOnly ? <span className="mono">{rule.dst.join(', ')}</span> : <textarea aria-label={`Destinations of rule ${index + 1}`} className="mono wide" rows={Math.max(1, rule.dst.length)} value={dst} onChange={(e) => setDst(e.target.value)} />}</td>
      <td className="row-actions">
        {!readOnly && (
          <>
            <button type="button" disabled={!changed} onClick={() => onSave({ ...rule, src: splitList(src), dst: splitDestinations(dst) })} aria-label={`Apply rule ${index + 1}`}>Apply</button>
            <button type="button" className="danger" onClick={onRemove} aria-label={`Remove rule ${index + 1}`}>Remove</button>
          </>
        )}
      </td>
    </tr>
  );
}
