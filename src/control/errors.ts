// The one error type handlers throw. It becomes {"error":{"code","message","details"}}
// with its HTTP status; anything else becomes a 500 without internals.

export class ApiError extends Error {
  override name = 'ApiError';
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details: unknown = null,
  ) {
    super(message);
  }
}

export const notFound = (what: string): ApiError => new ApiError(404, 'not_found', `${what} not found`);
export const badRequest = (message: string, details: unknown = null): ApiError =>
  new ApiError(400, 'invalid_request', message, details);
export const conflict = (message: string, details: unknown = null): ApiError =>
  new ApiError(409, 'conflict', message, details);
export const forbidden = (message: string): ApiError => new ApiError(403, 'forbidden', message);
export const unauthorized = (message: string): ApiError => new ApiError(401, 'unauthorized', message);

export interface ErrorBody {
  error: { code: string; message: string; details: unknown };
}

export function errorBody(code: string, message: string, details: unknown = null): ErrorBody {
  return { error: { code, message, details } };
}
