/*
 * The dashboard's session and its one way to call the hub's JSON API. The operator token lives
 * in sessionStorage: it survives a reload but not closing the tab, and no other origin can read
 * it. Every call sends it as a bearer token; a 401 ends the session (the app shows the login).
 */
/* global window, sessionStorage, fetch, CustomEvent */

const TOKEN_KEY = 'edgefleet.token';
const ROLE_KEY = 'edgefleet.role';
const NAME_KEY = 'edgefleet.name';

/** An API refusal: the HTTP status and the hub's `{ error: { code, message } }`. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }

  get text() {
    return `${this.status} ${this.code}: ${this.message}`;
  }
}

export const session = {
  get token() {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  /** viewer, operator or admin (operator when the hub cannot say). */
  get role() {
    return sessionStorage.getItem(ROLE_KEY) ?? 'operator';
  },
  get name() {
    return sessionStorage.getItem(NAME_KEY) ?? '';
  },
  /** Viewers read only: the dashboard disables what they may not do. */
  get canWrite() {
    return this.role !== 'viewer';
  },
  start(token, who) {
    sessionStorage.setItem(TOKEN_KEY, token);
    sessionStorage.setItem(ROLE_KEY, who.role ?? 'operator');
    sessionStorage.setItem(NAME_KEY, who.name ?? '');
  },
  end() {
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(ROLE_KEY);
    sessionStorage.removeItem(NAME_KEY);
  },
};

async function request(method, path, body, token) {
  const headers = { authorization: `Bearer ${token ?? ''}`, accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  let res;
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' });
  } catch (err) {
    throw new ApiError(0, 'UNREACHABLE', `the hub did not answer (${err instanceof Error ? err.message : String(err)})`);
  }
  let data;
  try {
    data = await res.json();
  } catch {
    data = null; // not JSON (a proxy's error page): the status says enough
  }
  if (!res.ok) {
    const e = data && typeof data === 'object' && data.error ? data.error : { code: `HTTP_${res.status}`, message: res.statusText || 'request failed' };
    throw new ApiError(res.status, e.code, e.message);
  }
  return data;
}

/** Calls the API with the session's token; a 401 ends the session and tells the app. */
export async function api(method, path, body) {
  try {
    return await request(method, path, body, session.token);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      session.end();
      window.dispatchEvent(new CustomEvent('edgefleet:unauthorized', { detail: err }));
    }
    throw err;
  }
}

/** Checks a token against GET /v1/fleet; returns its name and role (from /v1/whoami when the hub has it). */
export async function login(token) {
  await request('GET', '/v1/fleet', undefined, token);
  let who = { role: 'operator', name: '' };
  try {
    who = await request('GET', '/v1/whoami', undefined, token);
  } catch (err) {
    if (!(err instanceof ApiError) || err.status !== 404) throw err;
  }
  session.start(token, who);
  return who;
}
