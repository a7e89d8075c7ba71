// HuJSON (JSON with comments and trailing commas) into a small value tree that
// remembers where every value and key starts, so every policy error can name
// file:line:column.
import { type Node, type ParseError, parseTree, printParseErrorCode } from 'jsonc-parser';
import { MAX_JSON_DEPTH, findTooDeep } from '../json/depth.js';

export interface Pos {
  readonly line: number;
  readonly col: number;
}

export type JVal =
  | { t: 'obj'; pos: Pos; props: JProp[] }
  | { t: 'arr'; pos: Pos; items: JVal[] }
  | { t: 'str'; pos: Pos; v: string }
  | { t: 'num'; pos: Pos; v: number }
  | { t: 'bool'; pos: Pos; v: boolean }
  | { t: 'null'; pos: Pos };

export interface JProp {
  key: string;
  keyPos: Pos;
  val: JVal;
}

export class LineIndex {
  private readonly starts: number[] = [0];
  constructor(text: string) {
    for (let i = 0; i < text.length; i++) if (text.charCodeAt(i) === 10) this.starts.push(i + 1);
  }
  pos(offset: number): Pos {
    let lo = 0;
    let hi = this.starts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.starts[mid]! <= offset) lo = mid;
      else hi = mid - 1;
    }
    return { line: lo + 1, col: offset - this.starts[lo]! + 1 };
  }
}

const SYNTAX: Record<string, string> = {
  InvalidSymbol: 'invalid symbol',
  InvalidNumberFormat: 'invalid number',
  PropertyNameExpected: 'expected a quoted key',
  ValueExpected: 'expected a value',
  ColonExpected: 'expected ":"',
  CommaExpected: 'expected "," between elements',
  CloseBraceExpected: 'expected "}"',
  CloseBracketExpected: 'expected "]"',
  EndOfFileExpected: 'unexpected text after the end of the document',
  InvalidCommentToken: 'invalid comment',
  UnexpectedEndOfComment: 'unterminated comment',
  UnexpectedEndOfString: 'unterminated string',
  UnexpectedEndOfNumber: 'unterminated number',
  InvalidUnicode: 'invalid unicode escape',
  InvalidEscapeCharacter: 'invalid escape character',
  InvalidCharacter: 'invalid character in string',
};

export interface HuParseResult {
  value: JVal | null;
  /** Syntax errors as [pos, message]. */
  errors: Array<[Pos, string]>;
}

export function parseHuJSON(text: string): HuParseResult {
  const idx = new LineIndex(text);
  const deep = findTooDeep(text, { comments: true }); // before the (recursive) parser and tree walk
  if (deep) return { value: null, errors: [[idx.pos(deep.offset), `invalid HuJSON: arrays/objects nested more than ${MAX_JSON_DEPTH} levels deep (the limit)`]] };
  const perrs: ParseError[] = [];
  const tree = parseTree(text, perrs, { allowTrailingComma: true, disallowComments: false, allowEmptyContent: false });
  const errors: Array<[Pos, string]> = perrs.map((e) => {
    const code = printParseErrorCode(e.error);
    return [idx.pos(e.offset), `invalid HuJSON: ${SYNTAX[code] ?? code}`];
  });
  if (errors.length > 0 || !tree) {
    if (errors.length === 0) errors.push([{ line: 1, col: 1 }, 'invalid HuJSON: empty document']);
    return { value: null, errors };
  }
  const conv = (n: Node): JVal => {
    const pos = idx.pos(n.offset);
    switch (n.type) {
      case 'object': {
        const props: JProp[] = [];
        for (const p of n.children ?? []) {
          const k = p.children?.[0];
          const v = p.children?.[1];
          if (!k || !v) continue;
          props.push({ key: String(k.value), keyPos: idx.pos(k.offset), val: conv(v) });
        }
        return { t: 'obj', pos, props };
      }
      case 'array':
        return { t: 'arr', pos, items: (n.children ?? []).map(conv) };
      case 'string':
        return { t: 'str', pos, v: String(n.value) };
      case 'number':
        return { t: 'num', pos, v: Number(n.value) };
      case 'boolean':
        return { t: 'bool', pos, v: Boolean(n.value) };
      default:
        return { t: 'null', pos };
    }
  };
  return { value: conv(tree), errors };
}

/**
 * Sets an own, enumerable property, whatever the key: a plain assignment of
 * "__proto__" would change the prototype instead, and policy keys are user text.
 */
export function setOwn<T>(o: Record<string, T>, key: string, value: T): void {
  Object.defineProperty(o, key, { value, enumerable: true, writable: true, configurable: true });
}

/** o[key] when it is o's own property (never something inherited such as "constructor"). */
export function getOwn<T>(o: Record<string, T>, key: string): T | undefined {
  return Object.hasOwn(o, key) ? o[key] : undefined;
}

/** Plain JS value of a tree (for opaque sections such as grant `app`). */
export function plain(v: JVal): unknown {
  switch (v.t) {
    case 'obj': {
      const o: Record<string, unknown> = {};
      for (const p of v.props) setOwn(o, p.key, plain(p.val));
      return o;
    }
    case 'arr':
      return v.items.map(plain);
    case 'null':
      return null;
    default:
      return v.v;
  }
}
