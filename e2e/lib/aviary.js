// Starts a real `aviary dev` for a test file: its own temp data dir and free ports, the
// credentials it prints on first start, and a stop() that ends it (SIGTERM, then SIGKILL).
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
/** The binary under test: $AVIARY_BIN, else the workspace's debug build. */
export const AVIARY_BIN = process.env.AVIARY_BIN
  ? resolve(process.cwd(), process.env.AVIARY_BIN)
  : resolve(here, '../../target/debug/aviary');

const STARTUP_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 10_000;

/**
 * @returns {Promise<{url: string, operatorToken: string, tenantId: string, adminKey: string,
 *   appId: string, apiKey: string, output: () => string, stop: () => Promise<void>}>}
 */
export async function startAviary() {
  const dataDir = await mkdtemp(join(tmpdir(), 'aviary-e2e-'));
  const child = spawn(
    AVIARY_BIN,
    ['dev', '--data-dir', dataDir, '--listen', '127.0.0.1:0', '--grpc-listen', '127.0.0.1:0', '--drain-deadline-s', '1', '--usage-interval-s', '1'],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NO_COLOR: '1', RUST_LOG: process.env.RUST_LOG ?? 'warn' } },
  );
  // Keep reading both pipes for the process's whole life (a full pipe would stall the server);
  // the last 64 KiB are kept for failure messages.
  let log = '';
  const keep = (chunk) => {
    log = (log + chunk.toString()).slice(-65_536);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));

  const info = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      reject(new Error(`aviary dev did not print "listening on" within ${STARTUP_TIMEOUT_MS} ms:\n${log}`));
    }, STARTUP_TIMEOUT_MS);
    const found = {};
    let buffered = '';
    const onData = (chunk) => {
      buffered += chunk.toString();
      const strip = (s) => s.replace(/\x1b\[[0-9;]*m/g, '');
      const text = strip(buffered);
      const grab = (re) => text.match(re)?.[1];
      found.operatorToken ??= grab(/operator token\s+(avo_[0-9a-f]+)/);
      found.tenantId ??= grab(/tenant id\s+(ten_[0-9a-f]+)/);
      found.adminKey ??= grab(/admin key\s+(avt_[0-9A-Za-z_]+)/);
      found.appId ??= grab(/app id\s+(app_[0-9a-f]+)/);
      found.apiKey ??= grab(/API key\s+(avk_[0-9A-Za-z_]+)/);
      const url = grab(/listening on (http:\/\/[0-9.:]+)/);
      if (url) {
        clearTimeout(timer);
        child.stdout.off('data', onData);
        resolve({ ...found, url });
      }
    };
    child.stdout.on('data', onData);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`could not start ${AVIARY_BIN}: ${err.message} (build it with cargo build -p aviary, or set AVIARY_BIN)`));
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`aviary dev exited early (code ${code}, signal ${signal}):\n${log}`));
    });
  });
  for (const k of ['operatorToken', 'tenantId', 'adminKey', 'appId', 'apiKey']) {
    if (!info[k]) throw new Error(`aviary dev did not print its ${k} on first start:\n${log}`);
  }

  return {
    ...info,
    output: () => log,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        let timer;
        const timeout = new Promise((resolve) => {
          timer = setTimeout(resolve, STOP_TIMEOUT_MS, 'timeout');
        });
        const outcome = await Promise.race([exited, timeout]);
        clearTimeout(timer);
        if (outcome === 'timeout') {
          child.kill('SIGKILL');
          await exited;
        }
      }
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

/** A small REST client for test set-up (what a backend would do). */
export function restClient(baseUrl) {
  return async function call(method, path, token, body) {
    const res = await fetch(baseUrl + path, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    const text = await res.text();
    const data = text ? JSON.parse(text) : null;
    if (!res.ok) throw new Error(`${method} ${path} answered ${res.status}: ${text}`);
    return data;
  };
}
