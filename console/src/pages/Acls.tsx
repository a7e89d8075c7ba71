import { useEffect, useRef, useState } from 'react';
import type { Edit } from 'jsonc-parser';
import { useMutation, useQuery, useQueryClient } from '@tanstack/react-query';
import { useParams } from 'react-router';
import { EditorView, basicSetup } from 'codemirror';
import { EditorState } from '@codemirror/state';
import { json } from '@codemirror/lang-json';
import { linter, lintGutter, type Diagnostic } from '@codemirror/lint';
import { MergeView } from '@codemirror/merge';
import { api, ApiError, enc, parsePolicyError } from '../api';
import { ago, when } from '../format';
import { can, useSession } from '../session';
import { Confirm, ErrorText, Loading, Modal } from '../ui';
import FormView from './acls/FormView';
import PreviewPanel from './acls/PreviewPanel';
import TestsList, { type TestResult } from './acls/TestsList';
import { TEMPLATES, type PolicyTemplate } from './acls/templates';

interface LivePolicy { version: number; policy: string; created_at: string; created_by: string }
interface Problem { line: number; col: number; message: string }
interface Version { version: number; created_at: string; created_by: string }

const theme = EditorView.theme({
  '&': { fontSize: '13px', border: '1px solid var(--line)', borderRadius: '6px', background: '#fff' },
  '.cm-scroller': { fontFamily: 'var(--mono)', minHeight: '420px', maxHeight: '62vh' },
  '&.cm-focused': { outline: '2px solid var(--focus)', outlineOffset: '1px' },
});

/** The page's CSP nonce (the server puts a fresh one in each index.html): CodeMirror's <style> element carries it. */
const cspNonce = EditorView.cspNonce.of(document.querySelector<HTMLMetaElement>('meta[name="csp-nonce"]')?.content ?? '');

function toDiagnostics(state: EditorState, problems: Problem[]): Diagnostic[] {
  return problems.map((p) => {
    const line = state.doc.line(Math.min(Math.max(1, p.line), state.doc.lines));
    const from = Math.min(line.from + Math.max(0, p.col - 1), line.to);
    return { from, to: Math.min(from + 1, line.to), severity: 'error', message: p.message };
  });
}

export default function Acls() {
  const { tenant = '' } = useParams();
  const s = useSession();
  const qc = useQueryClient();
  const mayEdit = can(s, 'admin');
  const live = useQuery({ queryKey: ['policy', tenant], queryFn: () => api<LivePolicy>('GET', `/tenants/${enc(tenant)}/policy`) });
  const host = useRef<HTMLDivElement>(null);
  const view = useRef<EditorView | null>(null);
  const [problems, setProblems] = useState<Problem[] | null>(null);
  const [checking, setChecking] = useState(false);
  const [dirty, setDirty] = useState(false);
  const [saveOpen, setSaveOpen] = useState(false);
  const [discardOpen, setDiscardOpen] = useState(false);
  const [saved, setSaved] = useState<number | null>(null);
  const [compare, setCompare] = useState<{ version: number; text: string } | null>(null);
  const [tests, setTests] = useState<TestResult[] | null>(null);
  const [tab, setTab] = useState<'text' | 'form'>('text');
  // The editor's text as the form view reads it (the editor stays the one document).
  const [docText, setDocText] = useState('');
  const [templatesOpen, setTemplatesOpen] = useState(false);
  const [pendingTemplate, setPendingTemplate] = useState<PolicyTemplate | null>(null);
  const versions = useQuery({ queryKey: ['policy', tenant, 'versions'], queryFn: () => api<{ versions: Version[] }>('GET', `/tenants/${enc(tenant)}/policy/versions`) });
  const openVersion = useMutation({
    mutationFn: (v: number) => api<LivePolicy>('GET', `/tenants/${enc(tenant)}/policy/versions/${v}`),
    onSuccess: (p) => setCompare({ version: p.version, text: p.policy }),
  });
  const restore = () => {
    const v = view.current;
    if (v && compare) v.dispatch({ changes: { from: 0, to: v.state.doc.length, insert: compare.text } });
    setCompare(null);
  };

  // The editor is made once per tenant from the live text; later refetches never overwrite typing.
  const liveText = live.data?.policy;
  useEffect(() => {
    if (liveText === undefined || !host.current || view.current) return;
    const check = linter(async (v) => {
      const text = v.state.doc.toString();
      setChecking(true);
      try {
        const r = await api<{ valid: boolean; errors: string[]; tests?: TestResult[] }>('POST', `/tenants/${enc(tenant)}/policy/check`, { policy: text });
        const ps = r.errors.map(parsePolicyError);
        setProblems(ps);
        setTests(r.tests ?? null);
        return toDiagnostics(v.state, ps);
      } catch (err) {
        setProblems([{ line: 1, col: 1, message: `could not check: ${err instanceof Error ? err.message : String(err)}` }]);
        setTests(null);
        return [];
      } finally {
        setChecking(false);
      }
    }, { delay: 400 });
    view.current = new EditorView({
      parent: host.current,
      state: EditorState.create({
        doc: liveText,
        extensions: [
          cspNonce, basicSetup, json(), lintGutter(), check, theme,
          EditorView.contentAttributes.of({ 'aria-label': 'Policy (HuJSON)' }),
          EditorState.readOnly.of(!mayEdit),
          EditorView.updateListener.of((u) => { if (u.docChanged) { setDirty(true); setSaved(null); setDocText(u.state.doc.toString()); } }),
        ],
      }),
    });
    setDocText(liveText);
    return () => {
      view.current?.destroy();
      view.current = null;
    };
  }, [liveText === undefined, tenant, mayEdit]); // made once: later refetches must not replace the text being edited

  const save = useMutation({
    mutationFn: (text: string) => api<{ version: number }>('PUT', `/tenants/${enc(tenant)}/policy`, { policy: text }),
    onSuccess: (r) => {
      setSaveOpen(false);
      setDirty(false);
      setSaved(r.version);
      void qc.invalidateQueries({ queryKey: ['policy', tenant] });
      void qc.invalidateQueries({ queryKey: ['audit', tenant] });
    },
    onError: (err) => {
      // The editor keeps its text; the server's errors show at their lines.
      if (err instanceof ApiError && err.code === 'invalid_policy') {
        const list = ((err.details as { errors?: string[] } | null)?.errors ?? []).map(parsePolicyError);
        setProblems(list);
      }
    },
  });

  const jump = (p: Problem) => {
    const v = view.current;
    if (!v) return;
    setTab('text');
    const line = v.state.doc.line(Math.min(Math.max(1, p.line), v.state.doc.lines));
    const pos = Math.min(line.from + Math.max(0, p.col - 1), line.to);
    v.dispatch({ selection: { anchor: pos }, scrollIntoView: true });
    v.focus();
  };

  /** Replaces the editor's whole text (a template, a restored version): one undoable change. */
  const replaceText = (text: string) => {
    const v = view.current;
    if (v) v.dispatch({ changes: { from: 0, to: v.state.doc.length, insert: text } });
  };
  /** The form view's edits, made to the same document (jsonc-parser edits are offsets into the current text). */
  const applyFormEdits = (edits: Edit[]) => {
    const v = view.current;
    if (v && edits.length) v.dispatch({ changes: edits.map((e) => ({ from: e.offset, to: e.offset + e.length, insert: e.content })) });
  };
  const chooseTemplate = (t: PolicyTemplate) => {
    setTemplatesOpen(false);
    if (dirty) setPendingTemplate(t);
    else replaceText(t.text);
  };

  const discard = () => {
    const v = view.current;
    if (v && live.data) v.dispatch({ changes: { from: 0, to: v.state.doc.length, insert: live.data.policy } });
    setDirty(false);
    setDiscardOpen(false);
  };

  return (
    <section aria-label="Access controls">
      {live.isPending && <Loading what="the policy" />}
      <ErrorText error={live.error} />
      {live.data && (
        <div className="toolbar">
          <span className="muted small">Live version {live.data.version}, saved {ago(live.data.created_at)} by {live.data.created_by}</span>
          <span className="spacer" />
          {mayEdit ? (
            <>
              <button type="button" onClick={() => setTemplatesOpen(true)}>Templates…</button>
              <button type="button" onClick={() => setDiscardOpen(true)} disabled={!dirty}>Discard changes</button>
              <button type="button" className="primary" onClick={() => { save.reset(); setSaveOpen(true); }} disabled={!dirty}>Save…</button>
            </>
          ) : <span className="badge">read-only for the {s.role} role</span>}
        </div>
      )}
      {live.data && (
        <div className="segmented tabs" role="tablist" aria-label="Edit as">
          <button type="button" role="tab" id="tab-text" aria-controls="panel-text" aria-selected={tab === 'text'} onClick={() => setTab('text')}>Text</button>
          <button type="button" role="tab" id="tab-form" aria-controls="panel-form" aria-selected={tab === 'form'} onClick={() => setTab('form')}>Form</button>
        </div>
      )}
      {/* The editor stays mounted under the form: it holds the one document both views edit. */}
      <div ref={host} className="editor" id="panel-text" role="tabpanel" aria-labelledby="tab-text" hidden={tab !== 'text'} />
      {tab === 'form' && live.data && (
        <div id="panel-form" role="tabpanel" aria-labelledby="tab-form">
          <FormView text={docText} readOnly={!mayEdit} onEdit={applyFormEdits} />
        </div>
      )}
      <div className="check" aria-live="polite">
        {saved !== null && <p className="ok-text" role="status">Saved as version {saved}.</p>}
        {checking && <p className="muted small">Checking…</p>}
        {!checking && problems !== null && problems.length === 0 && <p className="ok-text">The policy is valid and its tests pass.</p>}
        {problems !== null && problems.length > 0 && (
          <>
            <h2 className="small-h">{problems.length} problem{problems.length === 1 ? '' : 's'}</h2>
            <ul className="problems">
              {problems.map((p, i) => (
                <li key={i}>
                  <button type="button" className="link mono" onClick={() => jump(p)}>Line {p.line}, column {p.col}</button>: <span>{p.message}</span>
                </li>
              ))}
            </ul>
          </>
        )}
        {/* (a text that does not parse has no tests to list: its errors say why) */}
        {!checking && tests !== null && (tests.length > 0 || problems?.length === 0) && <TestsList tests={tests} onJump={(line, col) => jump({ line, col, message: '' })} />}
      </div>
      {live.data && <PreviewPanel tenant={tenant} text={docText} />}
      <h2>History</h2>
      <ErrorText error={versions.error ?? openVersion.error} />
      {versions.data && (
        <table className="grid compact" aria-label="Policy versions">
          <thead><tr><th scope="col">Version</th><th scope="col">Saved</th><th scope="col">By</th><th scope="col"><span className="sr-only">Actions</span></th></tr></thead>
          <tbody>
            {versions.data.versions.map((v) => (
              <tr key={v.version} data-version={v.version}>
                <td className="num">{v.version}{v.version === live.data?.version && <span className="badge ok">live</span>}</td>
                <td className="small">{when(v.created_at)}</td>
                <td className="mono small">{v.created_by}</td>
                <td className="row-actions"><button type="button" onClick={() => openVersion.mutate(v.version)} aria-label={`Compare version ${v.version}`}>Compare</button></td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <Modal open={compare !== null} title={`Version ${compare?.version ?? ''} against your text`} onClose={() => setCompare(null)}>
        {compare && view.current && <PolicyDiff before={compare.text} after={view.current.state.doc.toString()} />}
        <p className="muted small">Left: version {compare?.version}. Right: the editor. Restoring puts the version's text into the editor; nothing changes until you save it.</p>
        <div className="actions">
          <button type="button" onClick={() => setCompare(null)}>Close</button>
          {mayEdit && <button type="button" className="primary" onClick={restore}>Restore into the editor</button>}
        </div>
      </Modal>
      <Modal open={saveOpen} title="Save the policy?" onClose={() => setSaveOpen(false)}>
        {saveOpen && live.data && view.current && <PolicyDiff before={live.data.policy} after={view.current.state.doc.toString()} />}
        <p className="muted small">Left: live version {live.data?.version}. Right: your text. Saving validates it and runs its tests again; on any error the live policy stays.</p>
        <ErrorText error={save.error} />
        <div className="actions">
          <button type="button" onClick={() => setSaveOpen(false)}>Cancel</button>
          <button type="button" className="primary" disabled={save.isPending} onClick={() => view.current && save.mutate(view.current.state.doc.toString())}>Save policy</button>
        </div>
      </Modal>
      <Modal open={templatesOpen} title="Start from a template" onClose={() => setTemplatesOpen(false)}>
        <p className="muted small">A template replaces the editor's text; nothing changes until you save it.</p>
        <ul className="templates">
          {TEMPLATES.map((t) => (
            <li key={t.name}>
              <button type="button" onClick={() => chooseTemplate(t)} aria-label={`Load the ${t.name} template`}>{t.name}</button>
              <span className="muted small"> {t.description}</span>
            </li>
          ))}
        </ul>
        <div className="actions"><button type="button" onClick={() => setTemplatesOpen(false)}>Close</button></div>
      </Modal>
      <Confirm open={pendingTemplate !== null} title={`Replace your text with the ${pendingTemplate?.name ?? ''} template?`} action="Replace" danger
        body={<p>The editor has changes that are not saved. They are replaced (Undo in the editor brings them back).</p>}
        onConfirm={() => { if (pendingTemplate) replaceText(pendingTemplate.text); setPendingTemplate(null); }}
        onClose={() => setPendingTemplate(null)} />
      <Confirm open={discardOpen} title="Discard your changes?" action="Discard" danger body={<p>The editor goes back to the live policy.</p>} onConfirm={discard} onClose={() => setDiscardOpen(false)} />
    </section>
  );
}

function PolicyDiff({ before, after }: { before: string; after: string }) {
  const host = useRef<HTMLDivElement>(null);
  useEffect(() => {
    if (!host.current) return;
    const ro = [cspNonce, basicSetup, json(), EditorState.readOnly.of(true), EditorView.editable.of(false)];
    const mv = new MergeView({
      parent: host.current,
      a: { doc: before, extensions: ro },
      b: { doc: after, extensions: ro },
      collapseUnchanged: { margin: 3, minSize: 6 },
      highlightChanges: true,
    });
    return () => mv.destroy();
  }, [before, after]);
  return <div ref={host} className="diff" aria-label="Changes against the live policy" />;
}
