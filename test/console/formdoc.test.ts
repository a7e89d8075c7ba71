// The Access controls form view's edits (console/src/pages/acls/formdoc.ts):
// each changes only its entry, so every comment of the document survives and
// the result reads back as the form meant it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parse } from 'jsonc-parser';
import { addAcl, apply, readForm, setAcl, setEntry, splitDestinations } from '../../console/src/pages/acls/formdoc.js';

const DOC = `// top comment
{
  // groups comment
  "groups": {
    "group:eng": ["alice@example.com"], // eng members
    /* block */ "group:ops": ["bob@example.com"],
  },
  "tagOwners": { "tag:server": ["group:eng"] },
  "hosts": {},
  "acls": [
    // first rule
    { "action": "accept", "src": ["group:eng"], "dst": ["tag:server:22"] }, // after first
    { "action": "accept", "src": ["group:ops"], "dst": ["tag:server:443"] }
  ],
  // tail comment
}
`;
const COMMENTS = ['// top comment', '// groups comment', '// eng members', '/* block */', '// first rule', '// after first', '// tail comment'];

function commentsKept(text: string, except: string[] = []): void {
  for (const c of COMMENTS) if (!except.includes(c)) assert.ok(text.includes(c), `${c} survives in:\n${text}`);
}
const value = (text: string): Record<string, unknown> => parse(text, [], { allowTrailingComma: true }) as Record<string, unknown>;
const model = (text: string) => {
  const r = readForm(text);
  assert.ok(r.ok);
  return r.model;
};

test('adding a group to a multi-line object: a line of its own after the last, comments kept', () => {
  const out = apply(DOC, setEntry(DOC, 'groups', 'group:new', ['carol@example.com', 'dave@']));
  commentsKept(out);
  assert.match(out, /\n {4}"group:new": \["carol@example\.com", "dave@"\],\n {2}\},/);
  assert.deepEqual(model(out).groups.map(([k]) => k), ['group:eng', 'group:ops', 'group:new']);
  assert.equal(out.split('\n').length, DOC.split('\n').length + 1, 'one line added, none reflowed');
});

test('one-line and empty objects stay one line; a missing section is created', () => {
  let out = apply(DOC, setEntry(DOC, 'tagOwners', 'tag:db', ['group:ops']));
  assert.match(out, /"tagOwners": \{ "tag:server": \["group:eng"\], "tag:db": \["group:ops"\] \},/);
  out = apply(out, setEntry(out, 'hosts', 'printer', '192.168.1.20'));
  assert.match(out, /"hosts": \{ "printer": "192\.168\.1\.20" \},/);
  commentsKept(out);
  const bare = '// only a comment\n{\n  "acls": [],\n}\n';
  const withGroups = apply(bare, setEntry(bare, 'groups', 'group:a', ['x@']));
  assert.match(withGroups, /^\/\/ only a comment/);
  assert.deepEqual(value(withGroups).groups, { 'group:a': ['x@'] });
});

test('changing and removing entries keeps the other comments', () => {
  let out = apply(DOC, setEntry(DOC, 'groups', 'group:eng', ['alice@example.com', 'erin@example.com']));
  assert.match(out, /"group:eng": \["alice@example\.com", "erin@example\.com"\], \/\/ eng members/);
  commentsKept(out);
  out = apply(out, setEntry(out, 'groups', 'group:eng', undefined));
  commentsKept(out, ['// eng members']);
  assert.deepEqual(Object.keys(value(out).groups as object), ['group:ops']);
  out = apply(out, setEntry(out, 'tagOwners', 'tag:server', undefined));
  assert.deepEqual(value(out).tagOwners, {});
  commentsKept(out, ['// eng members']);
});

test('acl rules: append, replace, remove; the document stays valid HuJSON with its comments', () => {
  let out = apply(DOC, addAcl(DOC, { action: 'accept', src: ['tag:ci'], dst: ['tag:server:22,443'] }));
  commentsKept(out);
  assert.deepEqual(model(out).acls.map((r) => r.src[0]), ['group:eng', 'group:ops', 'tag:ci']);
  assert.match(out, /\{ "action": "accept", "src": \["group:ops"\], "dst": \["tag:server:443"\] \},\n {4}\{ "action": "accept", "src": \["tag:ci"\], "dst": \["tag:server:22,443"\] \},\n {2}\],/);
  out = apply(out, setAcl(out, 1, { action: 'accept', src: ['group:ops'], dst: ['tag:server:80'] }));
  assert.deepEqual(model(out).acls[1]?.dst, ['tag:server:80']);
  out = apply(out, setAcl(out, 0, undefined));
  commentsKept(out, ['// after first']);
  assert.deepEqual(model(out).acls.map((r) => r.src[0]), ['group:ops', 'tag:ci']);
  const errors: unknown[] = [];
  parse(out, errors as never, { allowTrailingComma: true });
  assert.deepEqual(errors, []);
});

test('inline arrays and objects: removal takes the right comma', () => {
  const t = '{ "groups": { "group:a": ["x"], "group:b": ["y"], "group:c": ["z"] } }';
  assert.deepEqual(Object.keys(value(apply(t, setEntry(t, 'groups', 'group:b', undefined))).groups as object), ['group:a', 'group:c']);
  const last = apply(t, setEntry(t, 'groups', 'group:c', undefined));
  assert.equal(last, '{ "groups": { "group:a": ["x"], "group:b": ["y"] } }');
  const first = apply(t, setEntry(t, 'groups', 'group:a', undefined));
  assert.equal(first, '{ "groups": { "group:b": ["y"], "group:c": ["z"] } }');
});

test('the form refuses text that does not parse, and splits destinations on spaces only', () => {
  assert.equal(readForm('{ "groups": ').ok, false);
  assert.equal(readForm('[1]').ok, false);
  assert.deepEqual(splitDestinations('tag:a:22,443 10.0.0.0/8:*,  tag:b:80\n*:*'), ['tag:a:22,443', '10.0.0.0/8:*', 'tag:b:80', '*:*']);
});
