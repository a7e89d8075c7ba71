// The form view's model of a policy: groups, tagOwners, hosts and acls read
// from the HuJSON text (jsonc-parser's syntax tree), and edits to them that
// touch only the entry they change: a new entry goes after the last one, in
// the same layout (one line each, or inline in a one-line object); a removed
// one takes its own line (and its own trailing comment) with it; a changed
// value is replaced where it stands. Comments and formatting everywhere else
// stay as they were. Pure (no React, no DOM).
import { applyEdits, findNodeAtLocation, getNodeValue, parseTree, type Edit, type JSONPath, type Node, type ParseError } from 'jsonc-parser';

export type Section = 'groups' | 'tagOwners' | 'hosts';

export interface AclRule {
  action: string;
  src: string[];
  dst: string[];
  proto?: string;
}

export interface FormModel {
  groups: [string, string[]][];
  tagOwners: [string, string[]][];
  hosts: [string, string][];
  acls: AclRule[];
  /** The property names as the text spells them (policy keys are case-insensitive), null when absent. */
  keys: Record<Section | 'acls', string | null>;
}

export type FormRead = { ok: true; model: FormModel } | { ok: false; error: string };

const SECTIONS: (Section | 'acls')[] = ['groups', 'tagOwners', 'hosts', 'acls'];

function topKeys(root: Node): Map<string, Node> {
  const out = new Map<string, Node>();
  for (const p of root.children ?? []) {
    const [k, v] = p.children ?? [];
    if (k && v && typeof k.value === 'string') out.set(k.value.toLowerCase(), v);
  }
  return out;
}

function realKey(root: Node, name: string): string | null {
  for (const p of root.children ?? []) {
    const k = p.children?.[0];
    if (k && typeof k.value === 'string' && k.value.toLowerCase() === name.toLowerCase()) return k.value;
  }
  return null;
}

const strings = (v: unknown): string[] => (Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : []);

/** Reads the four sections; not ok when the text is not a HuJSON object (the form then waits for the text to be fixed). */
export function readForm(text: string): FormRead {
  const errors: ParseError[] = [];
  const root = parseTree(text, errors, { allowTrailingComma: true, disallowComments: false });
  if (!root || errors.length > 0) return { ok: false, error: 'the text does not parse; fix it in the Text tab first' };
  if (root.type !== 'object') return { ok: false, error: 'the policy must be an object' };
  const byKey = topKeys(root);
  const obj = (name: string): [string, unknown][] => {
    const n = byKey.get(name.toLowerCase());
    if (!n || n.type !== 'object') return [];
    return (n.children ?? []).flatMap((p) => {
      const [k, v] = p.children ?? [];
      return k && v && typeof k.value === 'string' ? [[k.value, getNodeValue(v)] as [string, unknown]] : [];
    });
  };
  const aclsNode = byKey.get('acls');
  const acls: AclRule[] = aclsNode?.type === 'array'
    ? (aclsNode.children ?? []).map((n) => {
      const v = getNodeValue(n) as Record<string, unknown> | null;
      const r = v && typeof v === 'object' ? v : {};
      return {
        action: typeof r.action === 'string' ? r.action : 'accept',
        src: strings(r.src),
        dst: strings(r.dst),
        ...(typeof r.proto === 'string' ? { proto: r.proto } : {}),
      };
    })
    : [];
  const keys = Object.fromEntries(SECTIONS.map((s) => [s, realKey(root, s)])) as FormModel['keys'];
  return {
    ok: true,
    model: {
      groups: obj('groups').map(([k, v]) => [k, strings(v)]),
      tagOwners: obj('tagOwners').map(([k, v]) => [k, strings(v)]),
      hosts: obj('hosts').flatMap(([k, v]) => (typeof v === 'string' ? [[k, v] as [string, string]] : [])),
      acls,
      keys,
    },
  };
}

function tree(text: string): Node {
  const root = parseTree(text, [], { allowTrailingComma: true, disallowComments: false });
  if (!root || root.type !== 'object') throw new Error('the policy is not an object');
  return root;
}

/** A value on one line, spaced as people write policies: ["a", "b"], { "k": "v" }. */
export function oneLine(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(oneLine).join(', ')}]`;
  if (v !== null && typeof v === 'object') {
    const e = Object.entries(v as Record<string, unknown>).filter(([, x]) => x !== undefined);
    return e.length === 0 ? '{}' : `{ ${e.map(([k, x]) => `${JSON.stringify(k)}: ${oneLine(x)}`).join(', ')} }`;
  }
  return JSON.stringify(v);
}

const lineStart = (text: string, at: number): number => text.lastIndexOf('\n', at - 1) + 1;
const lineEnd = (text: string, at: number): number => {
  const i = text.indexOf('\n', at);
  return i < 0 ? text.length : i;
};
const blank = (s: string): boolean => /^[ \t]*$/.test(s);
const blankOrComment = (s: string): boolean => /^[ \t]*(\/\/.*)?$/.test(s);
const indentOf = (text: string, at: number): string => /^[ \t]*/.exec(text.slice(lineStart(text, at)))?.[0] ?? '';

/** Position just after the comma that follows `end` (skipping spaces and comments), or null when none follows. */
function commaAfter(text: string, end: number): number | null {
  let i = end;
  for (;;) {
    while (i < text.length && /\s/.test(text[i] as string)) i++;
    if (text.startsWith('//', i)) i = lineEnd(text, i);
    else if (text.startsWith('/*', i)) {
      const j = text.indexOf('*/', i + 2);
      i = j < 0 ? text.length : j + 2;
    } else break;
  }
  return text[i] === ',' ? i + 1 : null;
}

/** Adds `entry` (the source text of a property or element) at the end of the container. */
function insertInto(text: string, container: Node, entry: string): Edit {
  const kids = container.children ?? [];
  const open = container.offset;
  const close = container.offset + container.length - 1;
  const oneLineContainer = !text.slice(open, close).includes('\n');
  if (kids.length === 0) {
    const inner = text.slice(open + 1, close);
    if (oneLineContainer && blank(inner)) {
      const content = container.type === 'object' ? `{ ${entry} }` : `[${entry}]`;
      return { offset: open, length: container.length, content };
    }
    return { offset: open + 1, length: 0, content: `\n${indentOf(text, open)}  ${entry},` };
  }
  const last = kids[kids.length - 1] as Node;
  const lastEnd = last.offset + last.length;
  const comma = commaAfter(text, lastEnd);
  if (oneLineContainer) {
    return comma === null ? { offset: lastEnd, length: 0, content: `, ${entry}` } : { offset: comma, length: 0, content: ` ${entry},` };
  }
  // One entry per line: the new one on a line of its own after the last entry's line (past its comment).
  const eol = lineEnd(text, comma ?? lastEnd);
  const rest = text.slice(comma ?? lastEnd, eol);
  const indent = indentOf(text, last.offset);
  if (comma === null) {
    if (blankOrComment(rest)) return { offset: lastEnd, length: eol - lastEnd, content: `,${rest}\n${indent}${entry},` };
    return { offset: lastEnd, length: 0, content: `, ${entry}` };
  }
  if (blankOrComment(rest)) return { offset: eol, length: 0, content: `\n${indent}${entry},` };
  return { offset: comma, length: 0, content: ` ${entry},` };
}

/** Removes a property or element: its own line when it has one (with its trailing comment), else inline with its comma. */
function removeNode(text: string, n: Node): Edit {
  let start = n.offset;
  let end = n.offset + n.length;
  const comma = commaAfter(text, end);
  const afterComma = comma ?? end;
  const ls = lineStart(text, start);
  const le = lineEnd(text, afterComma);
  if (blank(text.slice(ls, start)) && blankOrComment(text.slice(afterComma, le)) && !text.slice(end, afterComma).includes('\n')) {
    return { offset: ls, length: Math.min(text.length, le + 1) - ls, content: '' };
  }
  if (comma !== null && !text.slice(end, comma).includes('\n')) {
    end = comma;
    while (end < text.length && (text[end] === ' ' || text[end] === '\t')) end++;
  } else {
    // the last one inline: take the comma before it instead
    let i = start - 1;
    while (i >= 0 && (text[i] === ' ' || text[i] === '\t')) i--;
    if (text[i] === ',') start = i;
  }
  return { offset: start, length: end - start, content: '' };
}

/** Sets (a value) or removes (undefined) the entry at `path` = [section, key or index]; creates the section when missing. */
function setAt(text: string, section: Section | 'acls', key: string | number, value: unknown, append = false): Edit[] {
  const root = tree(text);
  const sec = realKey(root, section);
  const container = sec === null ? undefined : findNodeAtLocation(root, [sec]);
  if (!container) {
    if (value === undefined) return [];
    const v = section === 'acls' ? [value] : { [key]: value };
    return [insertInto(text, root, `${JSON.stringify(section)}: ${oneLine(v)}`)];
  }
  if (append) return [insertInto(text, container, oneLine(value))];
  const path: JSONPath = [sec as string, key];
  const node = findNodeAtLocation(root, path);
  if (!node) {
    if (value === undefined) return [];
    return [insertInto(text, container, container.type === 'object' ? `${JSON.stringify(key)}: ${oneLine(value)}` : oneLine(value))];
  }
  if (value === undefined) return [removeNode(text, container.type === 'object' && node.parent ? node.parent : node)];
  return [{ offset: node.offset, length: node.length, content: oneLine(value) }];
}

/** Sets (value) or removes (undefined) one entry of groups, tagOwners or hosts. */
export function setEntry(text: string, section: Section, name: string, value: string[] | string | undefined): Edit[] {
  return setAt(text, section, name, value);
}

/** Replaces (rule) or removes (undefined) the acl at `index`. */
export function setAcl(text: string, index: number, rule: AclRule | undefined): Edit[] {
  return setAt(text, 'acls', index, rule);
}

/** Appends an acl (creating the acls array when there is none). */
export function addAcl(text: string, rule: AclRule): Edit[] {
  return setAt(text, 'acls', 0, rule, true);
}

/** The text after the edits (the page dispatches the same edits into the editor). */
export function apply(text: string, edits: Edit[]): string {
  return applyEdits(text, edits);
}

/** "a, b ,c" → ["a", "b", "c"]. */
export function splitList(s: string): string[] {
  return s.split(',').map((x) => x.trim()).filter((x) => x.length > 0);
}

/** Destinations, which carry commas in their port lists ("tag:x:22,443"): separated by spaces or lines; a comma ending a token is dropped. */
export function splitDestinations(s: string): string[] {
  return s.split(/\s+/).map((x) => x.replace(/,+$/, '')).filter((x) => x.length > 0);
}
