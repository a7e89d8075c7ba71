import { useEffect, useRef, useState, type ReactNode } from 'react';
import { ApiError } from './api';

/** `value` once it has stayed the same for `ms` (one request per pause in typing, not per key). */
export function useSettled(value: string, ms: number): string {
  const [v, setV] = useState(value);
  useEffect(() => {
    const t = setTimeout(() => setV(value), ms);
    return () => clearTimeout(t);
  }, [value, ms]);
  return v;
}

/** A modal dialog (native <dialog>: focus trapped, Escape closes). */
export function Modal({ open, title, onClose, children }: { open: boolean; title: string; onClose: () => void; children: ReactNode }) {
  const ref = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    const d = ref.current;
    if (!d) return;
    if (open && !d.open) d.showModal();
    if (!open && d.open) d.close();
  }, [open]);
  return (
    <dialog ref={ref} aria-labelledby="modal-title" onClose={onClose} onCancel={onClose}>
      {open && (
        <>
          <h2 id="modal-title">{title}</h2>
          {children}
        </>
      )}
    </dialog>
  );
}

export function Confirm(props: {
  open: boolean; title: string; body: ReactNode; action: string; danger?: boolean; busy?: boolean; error?: unknown;
  onConfirm: () => void; onClose: () => void;
}) {
  return (
    <Modal open={props.open} title={props.title} onClose={props.onClose}>
      <div className="modal-body">{props.body}</div>
      <ErrorText error={props.error} />
      <div className="actions">
        <button type="button" onClick={props.onClose}>Cancel</button>
        <button type="button" className={props.danger ? 'danger' : 'primary'} onClick={props.onConfirm} disabled={props.busy}>{props.action}</button>
      </div>
    </Modal>
  );
}

export function ErrorText({ error }: { error: unknown }) {
  if (!error) return null;
  const msg = error instanceof ApiError ? error.message : error instanceof Error ? error.message : String(error);
  return <p className="error" role="alert">{msg}</p>;
}

export function Loading({ what }: { what: string }) {
  return <p className="muted" role="status">Loading {what}…</p>;
}

export function Status({ online }: { online: boolean }) {
  return <span className={`status ${online ? 'on' : 'off'}`}><span className="dot" aria-hidden="true" />{online ? 'Online' : 'Offline'}</span>;
}

export function Pager({ page, pages, onPage }: { page: number; pages: number; onPage: (p: number) => void }) {
  if (pages <= 1) return null;
  return (
    <nav className="pager" aria-label="Pages">
      <button type="button" onClick={() => onPage(page - 1)} disabled={page === 0}>Previous</button>
      <span>Page {page + 1} of {pages}</span>
      <button type="button" onClick={() => onPage(page + 1)} disabled={page + 1 >= pages}>Next</button>
    </nav>
  );
}
