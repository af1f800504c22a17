/**
 * Stable error codes and the one error class that carries them. Every boundary turns whatever
 * was thrown into an EdgefleetError with `toEdgefleetError`, so logs, counters and API replies
 * speak the same codes.
 */
export const ErrorCode = {
  BAD_CONFIG: 'BAD_CONFIG',
  BAD_PAYLOAD: 'BAD_PAYLOAD',
  BAD_INPUT: 'BAD_INPUT',
  PAYLOAD_TOO_LARGE: 'PAYLOAD_TOO_LARGE',
  BAD_MANIFEST: 'BAD_MANIFEST',
  BAD_MODEL: 'BAD_MODEL',
  /** The model validator itself could not run (start-up, loader, budgets): says nothing about the model. */
  PROBE_FAILED: 'PROBE_FAILED',
  NOT_FOUND: 'NOT_FOUND',
  CONFLICT: 'CONFLICT',
  UNAUTHORIZED: 'UNAUTHORIZED',
  FORBIDDEN: 'FORBIDDEN',
  OVERLOADED: 'OVERLOADED',
  TIMEOUT: 'TIMEOUT',
  ABORTED: 'ABORTED',
  UNAVAILABLE: 'UNAVAILABLE',
  STORAGE: 'STORAGE',
  INFERENCE: 'INFERENCE',
  ILLEGAL_STATE: 'ILLEGAL_STATE',
  INTERNAL: 'INTERNAL',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** HTTP status for each code, used by every HTTP API in the project. */
export const httpStatusOf: Record<ErrorCode, number> = {
  BAD_CONFIG: 400,
  BAD_PAYLOAD: 400,
  BAD_INPUT: 400,
  PAYLOAD_TOO_LARGE: 413,
  BAD_MANIFEST: 400,
  BAD_MODEL: 422,
  PROBE_FAILED: 503,
  NOT_FOUND: 404,
  CONFLICT: 409,
  UNAUTHORIZED: 401,
  FORBIDDEN: 403,
  OVERLOADED: 429,
  TIMEOUT: 504,
  ABORTED: 503,
  UNAVAILABLE: 503,
  STORAGE: 507,
  INFERENCE: 500,
  ILLEGAL_STATE: 409,
  INTERNAL: 500,
};

export class EdgefleetError extends Error {
  override readonly name = 'EdgefleetError';
  readonly code: ErrorCode;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown; details?: Record<string, unknown> }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.details = options?.details;
  }

  toJSON(): { code: ErrorCode; message: string; details?: Record<string, unknown> } {
    return this.details ? { code: this.code, message: this.message, details: this.details } : { code: this.code, message: this.message };
  }
}

/** Turns anything thrown into an EdgefleetError, keeping the original as `cause`. */
export function toEdgefleetError(err: unknown, fallback: ErrorCode = ErrorCode.INTERNAL): EdgefleetError {
  if (err instanceof EdgefleetError) return err;
  if (err instanceof Error) {
    if (err.name === 'AbortError') return new EdgefleetError(ErrorCode.ABORTED, err.message, { cause: err });
    const code = (err as { code?: unknown }).code;
    if (typeof code === 'string' && code.startsWith('SQLITE_')) {
      return new EdgefleetError(ErrorCode.STORAGE, `${code}: ${err.message}`, { cause: err });
    }
    return new EdgefleetError(fallback, err.message, { cause: err });
  }
  return new EdgefleetError(fallback, typeof err === 'string' ? err : 'unknown error', { cause: err });
}
