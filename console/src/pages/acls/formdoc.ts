// The form view's model of a policy: groups, tagOwners, hosts and acls read
// from the HuJSON text, and edits to them made with jsonc-parser's `modify`,
// which rewrites only the value it is given — comments and formatting
// everywhere else stay as they were. Pure (no React, no DOM).
import { applyEdits, modify, parseTree, findNodeAtLocation, getNodeValue, type Edit, type Node, type ParseError } from 'jsonc-parser';

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

const FORMAT = { formattingOptions: { insertSpaces: true, tabSize: 2, eol: '\n' } } as const;
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

function keyOf(text: string, section: Section | 'acls'): string {
  const root = parseTree(text, [], { allowTrailingComma: true, disallowComments: false });
  return (root && realKey(root, section)) ?? section;
}

/** Sets (value) or removes (undefined) one entry of groups, tagOwners or hosts. */
export function setEntry(text: string, section: Section, name: string, value: string[] | string | undefined): Edit[] {
  return modify(text, [keyOf(text, section), name], value, FORMAT);
}

/** Replaces (rule) or removes (undefined) the acl at `index`. */
export function setAcl(text: string, index: number, rule: AclRule | undefined): Edit[] {
  return modify(text, [keyOf(text, 'acls'), index], rule, FORMAT);
}

/** Appends an acl (creating the acls array when there is none). */
export function addAcl(text: string, rule: AclRule): Edit[] {
  const key = keyOf(text, 'acls');
  const root = parseTree(text, [], { allowTrailingComma: true, disallowComments: false });
  const arr = root ? findNodeAtLocation(root, [key]) : undefined;
  if (!arr || arr.type !== 'array') return modify(text, [key], [rule], FORMAT);
  return modify(text, [key, arr.children?.length ?? 0], rule, { ...FORMAT, isArrayInsertion: true });
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
