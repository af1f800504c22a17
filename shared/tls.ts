/**
 * TLS for both services (issue #6): reading certificate files with a clear BAD_CONFIG error,
 * the node:tls server options of the hub's listeners (mqtts, HTTPS), the verified client
 * certificate's CN (the hub binds it to the MQTT client id / device id), and the agent's client
 * side: tls options for mqtt.js and a fetch-shaped function over node:https.
 *
 * Why a fetch over node:https: Node 20's global fetch (bundled undici) takes a custom CA or a
 * client certificate only through an undici `dispatcher`, and undici is not a dependency; the
 * agent's downloader and sample upload are written against fetch's Response, so `tlsFetch`
 * returns a real Response built from the https response and keeps their code unchanged.
 *
 * Client certificate modes: 'none' (no certificate asked for), 'optional' (asked for; a
 * connection that presents one that does not verify is closed, so a bad certificate never
 * degrades to "no certificate"), 'required' (no verified certificate, no connection).
 * Verification runs in OpenSSL either way, but the verdict is enforced here, on
 * 'secureConnection' before any application byte is read, rather than with node's
 * rejectUnauthorized: node destroys such a socket silently (no event, no reason: _tls_wrap.js
 * onServerSocketSecure), and an operator whose devices cannot connect needs to see "expired"
 * versus "untrusted CA". The client sees the same thing in both cases: the connection closes
 * right after the handshake (only a missing certificate would have got an alert of its own).
 */
import { X509Certificate, createPrivateKey } from 'node:crypto';
import type { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { Readable } from 'node:stream';
import { TLSSocket, type ConnectionOptions, type TlsOptions } from 'node:tls';
import { z } from 'zod';
import { EdgefleetError, ErrorCode } from './errors.ts';

export const ClientCertModeSchema = z.enum(['none', 'optional', 'required']);
export type ClientCertMode = z.infer<typeof ClientCertModeSchema>;

/** TLS handshakes slower than this are cut (a client that opens a socket and sends nothing). */
export const HANDSHAKE_TIMEOUT_MS = 10_000;

export interface TlsFiles {
  certFile?: string;
  keyFile?: string;
  caFile?: string;
}

export interface TlsMaterial {
  cert?: Buffer;
  key?: Buffer;
  ca?: Buffer;
}

function readPem(file: string, setting: string, check: (pem: Buffer) => void): Buffer {
  let pem: Buffer;
  try {
    pem = readFileSync(file);
  } catch (err) {
    throw new EdgefleetError(ErrorCode.BAD_CONFIG, `${setting}: cannot read ${file}: ${(err as Error).message}`, { cause: err });
  }
  try {
    check(pem);
  } catch (err) {
    throw new EdgefleetError(ErrorCode.BAD_CONFIG, `${setting}: ${file} is not a PEM ${setting.endsWith('keyFile') ? 'private key' : 'certificate'}: ${(err as Error).message}`, { cause: err });
  }
  return pem;
}

/**
 * Reads and parses the configured files (`prefix` names the settings in errors, e.g. `tls`).
 * With `checkValidity` (the hub's server certificate) one that has expired or is not yet valid
 * is refused too: better a clear start error than every client failing its handshake. The agent
 * does not check: it must keep inferring offline even when its certificate has run out.
 */
export function readTlsFiles(files: TlsFiles, prefix: string, opts: { checkValidity?: boolean; now?: () => number } = {}): TlsMaterial {
  const out: TlsMaterial = {};
  const checkCert = (pem: Buffer): void => {
    const c = new X509Certificate(pem);
    if (opts.checkValidity === false) return;
    const t = (opts.now ?? Date.now)();
    if (Date.parse(c.validTo) < t) throw new Error(`expired on ${c.validTo}`);
    if (Date.parse(c.validFrom) > t) throw new Error(`not valid before ${c.validFrom}`);
  };
  if (files.certFile) out.cert = readPem(files.certFile, `${prefix}.certFile`, checkCert);
  if (files.keyFile) out.key = readPem(files.keyFile, `${prefix}.keyFile`, (pem) => void createPrivateKey(pem));
  if (files.caFile) out.ca = readPem(files.caFile, `${prefix}.caFile`, (pem) => void new X509Certificate(pem));
  if (out.cert && out.key && !new X509Certificate(out.cert).checkPrivateKey(createPrivateKey(out.key))) {
    throw new EdgefleetError(ErrorCode.BAD_CONFIG, `${prefix}.keyFile ${files.keyFile ?? ''} is not the key of ${prefix}.certFile ${files.certFile ?? ''}`);
  }
  return out;
}

/** Options for `tls.createServer` / `https.createServer` of a hub listener. */
export function serverTlsOptions(m: TlsMaterial, clientCerts: ClientCertMode): TlsOptions {
  return {
    cert: m.cert,
    key: m.key,
    ...(clientCerts !== 'none' ? { ca: m.ca } : {}),
    requestCert: clientCerts !== 'none',
    // Enforced in enforceClientCerts, which can say why (see the module header).
    rejectUnauthorized: false,
    minVersion: 'TLSv1.2',
    handshakeTimeout: HANDSHAKE_TIMEOUT_MS,
  };
}

export interface PeerCertificate {
  /** The client sent a certificate. */
  presented: boolean;
  /** It chains to the configured CA and is within its validity. */
  verified: boolean;
  /** Subject CN of a verified certificate; undefined when absent or not exactly one CN. */
  cn: string | undefined;
  /** Why a presented certificate did not verify (openssl's reason). */
  error: string | undefined;
}

/** What the client on this connection proved with its certificate (nothing on a plain socket). */
export function peerCertificate(socket: unknown): PeerCertificate {
  if (!(socket instanceof TLSSocket)) return { presented: false, verified: false, cn: undefined, error: undefined };
  const cert = socket.getPeerCertificate();
  const presented = !!cert && Object.keys(cert).length > 0;
  const verified = presented && socket.authorized;
  const raw = verified ? (cert.subject as Record<string, string | string[] | undefined> | undefined)?.CN : undefined;
  const err = socket.authorizationError as Error | string | null | undefined;
  return {
    presented,
    verified,
    cn: typeof raw === 'string' ? raw : undefined,
    error: presented && !verified ? String(err instanceof Error ? ((err as Error & { code?: string }).code ?? err.message) : (err ?? 'unverified')) : undefined,
  };
}

/** Why a client certificate was refused, as a bounded metric label. */
export type CertRefusal = 'cert_missing' | 'cert_expired' | 'cert_not_yet_valid' | 'cert_untrusted' | 'cert_invalid';

export function certRefusal(p: PeerCertificate, clientCerts: ClientCertMode): CertRefusal | undefined {
  if (clientCerts === 'none' || p.verified) return undefined;
  if (!p.presented) return clientCerts === 'required' ? 'cert_missing' : undefined;
  switch (p.error) {
    case 'CERT_HAS_EXPIRED':
      return 'cert_expired';
    case 'CERT_NOT_YET_VALID':
      return 'cert_not_yet_valid';
    case 'UNABLE_TO_GET_ISSUER_CERT':
    case 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY':
    case 'UNABLE_TO_VERIFY_LEAF_SIGNATURE':
    case 'DEPTH_ZERO_SELF_SIGNED_CERT':
    case 'SELF_SIGNED_CERT_IN_CHAIN':
    case 'CERT_SIGNATURE_FAILURE':
      return 'cert_untrusted';
    default:
      return 'cert_invalid';
  }
}

/**
 * Closes connections whose client certificate the mode refuses ('required': none or unverified;
 * 'optional': presented but unverified), before the listener's own handler sees them (prepended).
 * `onRefused` gets the label and openssl's code (for a counter and a log line). `server` is a tls
 * or https server (typed as an emitter: http and https servers share one variable type).
 */
export function enforceClientCerts(server: EventEmitter, clientCerts: ClientCertMode, onRefused: (reason: CertRefusal, detail: string, socket: TLSSocket) => void): void {
  if (clientCerts === 'none') return;
  server.prependListener('secureConnection', (socket: TLSSocket) => {
    const p = peerCertificate(socket);
    const reason = certRefusal(p, clientCerts);
    if (!reason) return;
    onRefused(reason, p.error ?? 'no certificate', socket);
    socket.destroy();
  });
}

// --- client side (agent) ----------------------------------------------------------------------

/** The agent's `hub.tls`: used by mqtts:// and https:// hub URLs. */
export const ClientTlsSchema = z
  .object({
    /** CA that signed the hub's certificate (default: the system's trusted CAs). */
    caFile: z.string().min(1).optional(),
    /** Client certificate (CN = the device id) and its key, for hubs that ask for one. */
    certFile: z.string().min(1).optional(),
    keyFile: z.string().min(1).optional(),
    /** Name checked against the server certificate (and sent as SNI) instead of the URL's host. */
    servername: z.string().min(1).max(253).optional(),
  })
  .superRefine((t, ctx) => {
    if (!!t.certFile !== !!t.keyFile) ctx.addIssue({ code: 'custom', path: [t.certFile ? 'keyFile' : 'certFile'], message: 'certFile and keyFile go together' });
  });
export type ClientTlsFiles = z.infer<typeof ClientTlsSchema>;

/** True when any TLS setting is given (else the defaults of node and mqtt.js apply as they are). */
export function hasClientTls(files: ClientTlsFiles): boolean {
  return !!(files.caFile ?? files.certFile ?? files.keyFile ?? files.servername);
}

/** What the agent's mqtts and https connections add to tls.connect (fits mqtt.js options too). */
export interface ClientTls {
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
  servername?: string;
  /** Always true: a hub whose certificate does not verify is never talked to. */
  rejectUnauthorized: true;
}

/** tls.connect options for the agent's mqtts and https connections; server certificates are always verified. */
export function clientTlsOptions(files: ClientTlsFiles, prefix: string): ClientTls {
  const m = readTlsFiles(files, prefix, { checkValidity: false });
  return {
    ...(m.ca ? { ca: m.ca } : {}),
    ...(m.cert ? { cert: m.cert } : {}),
    ...(m.key ? { key: m.key } : {}),
    ...(files.servername ? { servername: files.servername } : {}),
    rejectUnauthorized: true,
  };
}

export interface FetchInit {
  method?: string;
  headers?: Record<string, string>;
  body?: string | Uint8Array;
  signal?: AbortSignal;
  /** Accepted for fetch compatibility; redirects are never followed (a 3xx is returned as is). */
  redirect?: 'error' | 'manual';
}
export type FetchLike = (url: string, init?: FetchInit) => Promise<Response>;

/** Statuses whose Response must have a null body (fetch spec). */
const NULL_BODY = new Set([101, 204, 205, 304]);

/**
 * A fetch for https URLs with these TLS options (custom CA, client certificate); other URLs go
 * to the global fetch. Returns a standard Response, so callers read status, headers and body
 * (a stream; cancel() closes the socket) as with fetch. Aborting the signal destroys the request.
 */
export function tlsFetch(tls: ConnectionOptions): FetchLike {
  const agent = new HttpsAgent({ ...tls, keepAlive: true, timeout: 60_000 });
  return (url, init = {}) => {
    if (!url.startsWith('https:')) return fetch(url, init);
    return new Promise<Response>((resolve, reject) => {
      const req = httpsRequest(url, { method: init.method ?? 'GET', headers: init.headers, agent, signal: init.signal }, (res) => {
        const headers = new Headers();
        for (let i = 0; i + 1 < res.rawHeaders.length; i += 2) headers.append(res.rawHeaders[i] as string, res.rawHeaders[i + 1] as string);
        const status = res.statusCode ?? 502;
        const noBody = NULL_BODY.has(status) || init.method === 'HEAD';
        if (noBody) res.resume();
        const body = noBody ? null : (Readable.toWeb(res) as ReadableStream<Uint8Array>);
        try {
          resolve(new Response(body, { status, statusText: res.statusMessage, headers }));
        } catch (err) {
          res.destroy();
          reject(err instanceof Error ? err : new Error(String(err)));
        }
      });
      req.once('error', reject);
      req.end(init.body);
    });
  };
}
