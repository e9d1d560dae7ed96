// An in-process Aviary server for unit tests: real sockets on 127.0.0.1:0 speaking the WebSocket
// protocol of docs/protocol.md (and a small SSE endpoint), with levers the real server doesn't
// expose: drop every socket abruptly, close with a chosen code, lose a channel's stream (new
// epoch), stop answering (dead connection), and a log of every frame received.
import { EventEmitter, once } from 'node:events';
import { createServer } from 'node:http';
import { WebSocketServer } from 'ws';

export class FakeServer extends EventEmitter {
  /**
   * @param {object} [options]
   * @param {number} [options.heartbeatS] heartbeat_s sent in `connected`
   * @param {number} [options.tokenTtlMs] expires_at = now + this
   * @param {number} [options.historySize] publications kept per channel
   * @param {(token: string) => ({clientId: string} | {closeCode: number, reason?: string})} [options.auth]
   * @param {(frame: object) => (object|null)} [options.intercept] return an error frame body to refuse a request
   */
  constructor(options = {}) {
    super();
    this.options = { heartbeatS: 25, tokenTtlMs: 3_600_000, historySize: 100, ...options };
    /** @type {Map<string, {epoch: string, offset: number, history: object[], keys: Map<string, object>}>} */
    this.channels = new Map();
    /** @type {Set<Conn>} */
    this.conns = new Set();
    /** Every client frame received, in order: {conn, frame}. */
    this.frames = [];
    this.connections = 0;
    this.epochCounter = 0;
    this.paused = false;
    this.sseRequests = [];
    this.sseStreams = new Set();
  }

  async start() {
    this.http = createServer((req, res) => this.onHttp(req, res));
    this.wss = new WebSocketServer({ noServer: true });
    this.http.on('upgrade', (req, socket, head) => {
      if (!req.url.startsWith('/v1/connect')) return socket.destroy();
      this.wss.handleUpgrade(req, socket, head, (ws) => this.onSocket(ws));
    });
    this.http.listen(0, '127.0.0.1');
    await once(this.http, 'listening');
    const { port } = this.http.address();
    this.url = `ws://127.0.0.1:${port}`;
    this.httpUrl = `http://127.0.0.1:${port}`;
    return this;
  }

  async stop() {
    for (const c of this.conns) c.ws.terminate();
    for (const res of this.sseStreams) res.destroy();
    this.wss.close();
    this.http.closeAllConnections?.();
    await new Promise((resolve) => this.http.close(resolve));
  }

  channel(name) {
    let ch = this.channels.get(name);
    if (!ch) {
      ch = { epoch: `e${++this.epochCounter}`, offset: 0, history: [], keys: new Map() };
      this.channels.set(name, ch);
    }
    return ch;
  }

  /** Publishes as a backend would (client_id null). */
  publish(name, data, { clientId = null, key } = {}) {
    const ch = this.channel(name);
    if (key && ch.keys.has(key)) return ch.keys.get(key);
    ch.offset += 1;
    const pub = { type: 'message', channel: name, epoch: ch.epoch, offset: ch.offset, data, client_id: clientId, ts: Date.now() };
    ch.history.push(pub);
    if (ch.history.length > this.options.historySize) ch.history.shift();
    const result = { epoch: ch.epoch, offset: ch.offset };
    if (key) ch.keys.set(key, result);
    const text = JSON.stringify(pub);
    for (const c of this.conns) if (c.subs.has(name)) c.sendRaw(text);
    this.sendSse(name, pub);
    return result;
  }

  /** The channel's stream is lost: new epoch, empty history. */
  loseStream(name) {
    const ch = this.channel(name);
    ch.epoch = `e${++this.epochCounter}`;
    ch.offset = 0;
    ch.history = [];
  }

  /** Loses the stream under live subscribers and tells them, as a node does after a Redis
   * restart: a `discontinuity` push, then the new epoch continues from offset 1. */
  loseStreamLive(name, previous) {
    this.loseStream(name);
    const ch = this.channel(name);
    const text = JSON.stringify({ type: 'discontinuity', channel: name, previous, position: { epoch: ch.epoch, offset: 0 } });
    for (const c of this.conns) if (c.subs.has(name)) c.sendRaw(text);
  }

  /** Kills every socket without a close handshake (as a dead network would look: code 1006). */
  dropAll() {
    for (const c of this.conns) c.ws.terminate();
  }

  /** Sends `disconnect` (when given) then closes every socket with `code`. */
  closeAll(code, reason = '', disconnect) {
    for (const c of this.conns) {
      if (disconnect) c.send({ type: 'disconnect', code, reason, reconnect: disconnect.reconnect });
      c.ws.close(code, reason);
    }
  }

  /** Resolves with the next client frame matching `pred` (already-logged frames count). */
  waitFrame(pred, timeoutMs = 5000) {
    const found = this.frames.find((f) => pred(f.frame, f.conn));
    if (found) return Promise.resolve(found.frame);
    return this.waitNextFrame(pred, timeoutMs);
  }

  /** Resolves with the next client frame matching `pred` received from now on. */
  waitNextFrame(pred, timeoutMs = 5000) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.off('frame', on);
        reject(new Error('timed out waiting for a client frame'));
      }, timeoutMs);
      const on = (frame, conn) => {
        if (!pred(frame, conn)) return;
        clearTimeout(timer);
        this.off('frame', on);
        resolve(frame);
      };
      this.on('frame', on);
    });
  }

  onSocket(ws) {
    const conn = new Conn(this, ws);
    this.conns.add(conn);
    ws.on('close', () => {
      this.conns.delete(conn);
      conn.leaveAll();
    });
    ws.on('error', () => {});
    ws.on('message', (data) => {
      if (this.paused) return;
      let frame;
      try {
        frame = JSON.parse(String(data));
      } catch {
        return ws.close(4000, 'malformed JSON');
      }
      this.frames.push({ conn, frame });
      this.emit('frame', frame, conn);
      conn.handle(frame);
    });
  }

  // -- SSE, as data-plane/src/transport/sse.rs serves it: GET /v1/sse?channels=a,b with
  //    Authorization: Bearer; a `subscribed` event per channel, then messages; every id is
  //    "v1." + base64url(JSON {"channel": [epoch, offset]}) so Last-Event-ID resumes each channel.
  onHttp(req, res) {
    const url = new URL(req.url, this.httpUrl);
    if (url.pathname !== '/v1/sse') {
      res.writeHead(404).end();
      return;
    }
    this.sseRequests.push({ url, headers: req.headers });
    this.emit('sse', req);
    const auth = req.headers.authorization ?? '';
    const token = auth.startsWith('Bearer ') ? auth.slice(7) : url.searchParams.get('token');
    if (this.authorize(token).closeCode) {
      res.writeHead(401, { 'content-type': 'application/problem+json' }).end('{"type":"unauthorized"}');
      return;
    }
    const names = (url.searchParams.get('channels') ?? '').split(',').filter(Boolean);
    if (names.length === 0) {
      res.writeHead(400).end();
      return;
    }
    let resume = {};
    const lastId = req.headers['last-event-id'];
    if (lastId?.startsWith('v1.')) resume = JSON.parse(Buffer.from(lastId.slice(3), 'base64url').toString());
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    res.write('retry: 2000\n\n');
    res.sseChannels = new Set(names);
    res.ssePositions = new Map();
    for (const name of names) {
      const ch = this.channel(name);
      const since = resume[name] ? { epoch: resume[name][0], offset: resume[name][1] } : null;
      const oldest = ch.history[0]?.offset ?? ch.offset + 1;
      const recovered = !since || (since.epoch === ch.epoch && since.offset + 1 >= oldest);
      const start = since && recovered ? since : { epoch: ch.epoch, offset: ch.offset };
      res.ssePositions.set(name, start);
      const frame = { type: 'subscribed', channel: name, position: { epoch: ch.epoch, offset: ch.offset }, recovered };
      res.write(`event: subscribed\nid: ${this.sseId(res)}\ndata: ${JSON.stringify(frame)}\n\n`);
      if (since && recovered) for (const pub of ch.history) if (pub.offset > since.offset) this.writeSse(res, pub);
    }
    this.sseStreams.add(res);
    req.on('close', () => this.sseStreams.delete(res));
  }

  sseId(res) {
    const map = {};
    for (const [n, p] of res.ssePositions) map[n] = [p.epoch, p.offset];
    return 'v1.' + Buffer.from(JSON.stringify(map)).toString('base64url');
  }

  sendSse(name, pub) {
    for (const res of this.sseStreams) if (res.sseChannels.has(name)) this.writeSse(res, pub);
  }

  writeSse(res, pub) {
    res.ssePositions.set(pub.channel, { epoch: pub.epoch, offset: pub.offset });
    res.write(`id: ${this.sseId(res)}\ndata: ${JSON.stringify(pub)}\n\n`);
  }

  /** Sends a frame (presence, disconnect) on every SSE stream as an `event: frame`. */
  sseFrame(frame) {
    for (const res of this.sseStreams) res.write(`event: frame\ndata: ${JSON.stringify(frame)}\n\n`);
  }

  dropSse() {
    for (const res of this.sseStreams) res.destroy();
  }

  authorize(token) {
    if (this.options.auth) return this.options.auth(token);
    if (typeof token !== 'string' || !token.startsWith('tok')) return { closeCode: 4001, reason: 'invalid token' };
    return { clientId: `client-${token}` };
  }
}

class Conn {
  constructor(server, ws) {
    this.server = server;
    this.ws = ws;
    this.subs = new Set();
    this.presence = new Map(); // channel -> data
    this.id = `conn-${++server.connections}`;
    this.clientId = null;
  }

  send(frame) {
    this.sendRaw(JSON.stringify(frame));
  }

  sendRaw(text) {
    if (this.ws.readyState === 1 && !this.server.paused) this.ws.send(text);
  }

  ok(frame, body = {}) {
    this.send({ type: 'ok', id: frame.id, ...body });
  }

  error(frame, code, message = code) {
    this.send({ type: 'error', id: frame.id, code, message });
  }

  members(name) {
    const out = [];
    for (const c of this.server.conns) {
      if (c.presence.has(name)) out.push({ client_id: c.clientId, connection_id: c.id, data: c.presence.get(name) });
    }
    return out;
  }

  broadcastPresence(name, action, data) {
    const frame = JSON.stringify({
      type: 'presence',
      channel: name,
      action,
      member: { client_id: this.clientId, connection_id: this.id, data },
    });
    for (const c of this.server.conns) if (c.subs.has(name) && c.presenceEvents?.has(name)) c.sendRaw(frame);
  }

  leaveAll() {
    for (const [name, data] of this.presence) this.broadcastPresence(name, 'leave', data);
    this.presence.clear();
  }

  handle(frame) {
    const s = this.server;
    if (!this.clientId && frame.type !== 'connect') return this.ws.close(4000, 'connect first');
    const refusal = s.options.intercept?.(frame, this);
    if (refusal) return this.send({ type: 'error', id: frame.id, ...refusal });
    switch (frame.type) {
      case 'connect': {
        const verdict = s.authorize(frame.token);
        if (verdict.closeCode) {
          // As the real server: only 1001, 4002 and 4008 invite an automatic reconnect.
          const reconnect = verdict.reconnect ?? [1001, 4002, 4008].includes(verdict.closeCode);
          this.send({ type: 'disconnect', code: verdict.closeCode, reason: verdict.reason ?? '', reconnect });
          return this.ws.close(verdict.closeCode, verdict.reason ?? '');
        }
        this.clientId = verdict.clientId;
        this.token = frame.token;
        return this.send({
          type: 'connected',
          client_id: this.clientId,
          connection_id: this.id,
          heartbeat_s: s.options.heartbeatS,
          expires_at: new Date(Date.now() + s.options.tokenTtlMs).toISOString(),
        });
      }
      case 'subscribe': {
        const ch = s.channel(frame.channel);
        this.subs.add(frame.channel);
        this.presenceEvents ??= new Set();
        if (frame.presence) this.presenceEvents.add(frame.channel);
        else this.presenceEvents.delete(frame.channel);
        let recovered = true;
        const replay = [];
        if (frame.since) {
          const oldest = ch.history[0]?.offset ?? ch.offset + 1;
          if (frame.since.epoch !== ch.epoch || frame.since.offset + 1 < oldest) recovered = false;
          else for (const pub of ch.history) if (pub.offset > frame.since.offset) replay.push(pub);
        }
        this.ok(frame, { position: { epoch: ch.epoch, offset: ch.offset }, recovered });
        for (const pub of replay) this.send(pub);
        return;
      }
      case 'unsubscribe':
        this.subs.delete(frame.channel);
        return this.ok(frame);
      case 'publish': {
        const result = s.publish(frame.channel, frame.data, { clientId: this.clientId, key: frame.idempotency_key });
        return this.ok(frame, result);
      }
      case 'history': {
        const ch = s.channel(frame.channel);
        let pubs = ch.history;
        let recovered = true;
        if (frame.since) {
          recovered = frame.since.epoch === ch.epoch;
          pubs = pubs.filter((p) => p.offset > frame.since.offset);
        }
        if (frame.limit) pubs = pubs.slice(-frame.limit);
        return this.ok(frame, { publications: pubs, position: { epoch: ch.epoch, offset: ch.offset }, recovered });
      }
      case 'presence.enter':
      case 'presence.update': {
        const joined = !this.presence.has(frame.channel);
        this.presence.set(frame.channel, frame.data ?? null);
        this.broadcastPresence(frame.channel, joined ? 'join' : 'update', frame.data ?? null);
        return this.ok(frame);
      }
      case 'presence.leave': {
        const data = this.presence.get(frame.channel);
        if (this.presence.delete(frame.channel)) this.broadcastPresence(frame.channel, 'leave', data);
        return this.ok(frame);
      }
      case 'presence.get':
        return this.ok(frame, { members: this.members(frame.channel) });
      case 'refresh': {
        const verdict = s.authorize(frame.token);
        if (verdict.closeCode) return this.error(frame, 'unauthorized');
        this.token = frame.token;
        return this.ok(frame, { expires_at: new Date(Date.now() + s.options.tokenTtlMs).toISOString() });
      }
      case 'ping':
        return this.send({ type: 'pong', id: frame.id });
      default:
        return this.error(frame, 'bad_request', `unknown frame type ${frame.type}`);
    }
  }
}
