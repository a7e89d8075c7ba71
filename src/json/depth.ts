// Nesting limit for JSON and HuJSON input, checked on the text before any
// parser or recursive walk sees it: a document nested 100 000 levels deep
// would otherwise overflow the stack (jsonc-parser and the tree walks recurse
// per level). A linear scan, no recursion.

/** Deepest nesting of arrays/objects accepted in configs, policies and API bodies. */
export const MAX_JSON_DEPTH = 64;

export interface DepthProblem {
  /** Offset of the bracket that went one level too deep. */
  offset: number;
  /** 1-based line and column of that bracket. */
  line: number;
  column: number;
  depth: number;
}

/**
 * The first `[` or `{` that opens level `limit + 1`, or null. Brackets inside
 * strings do not count; with `comments` (HuJSON) neither do those inside
 * `//` and `/* *\/` comments.
 */
export function findTooDeep(text: string, opts: { limit?: number; comments?: boolean } = {}): DepthProblem | null {
  const limit = opts.limit ?? MAX_JSON_DEPTH;
  const comments = opts.comments ?? false;
  let depth = 0;
  let line = 1;
  let lineStart = 0;
  const n = text.length;
  for (let i = 0; i < n; i++) {
    const c = text.charCodeAt(i);
    if (c === 10) {
      line++;
      lineStart = i + 1;
    } else if (c === 34) {
      // string: skip to the closing quote (escapes skip one char; a newline ends a broken string)
      for (i++; i < n; i++) {
        const d = text.charCodeAt(i);
        if (d === 92) i++;
        else if (d === 34) break;
        else if (d === 10) {
          line++;
          lineStart = i + 1;
          break;
        }
      }
    } else if (comments && c === 47 && text.charCodeAt(i + 1) === 47) {
      while (i + 1 < n && text.charCodeAt(i + 1) !== 10) i++;
    } else if (comments && c === 47 && text.charCodeAt(i + 1) === 42) {
      for (i += 2; i < n && !(text.charCodeAt(i) === 42 && text.charCodeAt(i + 1) === 47); i++) {
        if (text.charCodeAt(i) === 10) {
          line++;
          lineStart = i + 1;
        }
      }
      i++;
    } else if (c === 91 || c === 123) {
      depth++;
      if (depth > limit) return { offset: i, line, column: i - lineStart + 1, depth };
    } else if (c === 93 || c === 125) {
      if (depth > 0) depth--;
    }
  }
  return null;
}

/** The standard wording of the problem, with where it is. */
export function tooDeepMessage(where: string, p: DepthProblem, limit = MAX_JSON_DEPTH): string {
  return `${where}:${p.line}:${p.column}: arrays/objects nested more than ${limit} levels deep (the limit); flatten the document`;
}
