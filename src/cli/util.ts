// Shared CLI plumbing: a typed way to stop with a message and an exit code, so
// commands never print stack traces for bad input.

export class CliExit extends Error {
  constructor(
    message: string,
    readonly exitCode: number = 1,
  ) {
    super(message);
    this.name = 'CliExit';
  }
}

/** Stop the command: print `message` to stderr (if non-empty) and exit with `code`. */
export function fail(message: string, code = 1): never {
  throw new CliExit(message, code);
}

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}
