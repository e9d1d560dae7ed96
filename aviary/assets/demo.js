// The `aviary dev` demo: chat (`chat:lobby`, with presence) and live cursors (`cursors:lobby`)
// on @aviary/client. Tokens come from the dev server's POST /demo/token; the client connects to
// /v1/connect on the same host. The page shows the connection state, queues messages typed while
// offline (the SDK's offline queue), and reloads history when a resume reports recovered:false.
import { Aviary } from './aviary-client.js';

const $ = (id) => document.getElementById(id);
const CHAT = 'chat:lobby';
const CURSORS = 'cursors:lobby';
const HISTORY_LIMIT = 100;
const CURSOR_INTERVAL_MS = 50; // at most 20 cursor publishes a second
const CURSOR_STALE_MS = 10_000;
// A per-tab id: two tabs may use the same name, and must not hide each other's cursors.
const TAB = Math.random().toString(36).slice(2, 10);

/** Text colour on white badges stays above 4.5:1 with these. */
const PALETTE = ['#1b5e20', '#0d47a1', '#6a1b9a', '#b71c1c', '#004d40', '#3e2723', '#ad1457', '#283593'];
function colorFor(name) {
  let h = 0;
  for (const ch of name) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  return PALETTE[h % PALETTE.length];
}

async function fetchToken(name) {
  const res = await fetch('/demo/token', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ client_id: name }),
  });
  if (!res.ok) throw new Error(`token endpoint answered ${res.status}`);
  const body = await res.json();
  return body.token;
}

// ---- connection state ------------------------------------------------------------------------

function showState(state, detail = '') {
  const el = $('connection-state');
  el.dataset.state = state;
  const text = {
    idle: 'Not connected',
    connecting: 'Connecting…',
    connected: 'Connected',
    disconnected: 'Offline: messages will be sent when the connection is back',
    reconnecting: 'Reconnecting…',
    closed: 'Closed',
    failed: 'Connection failed',
  }[state];
  $('connection-text').textContent = detail ? `${text} (${detail})` : text;
}

function notice(text) {
  const el = $('notice');
  el.textContent = text;
  el.hidden = !text;
}

// ---- chat ------------------------------------------------------------------------------------

/** Rendered messages by "epoch:offset": history and live delivery may overlap, show each once. */
const rendered = new Map();

function renderMessage(m) {
  const key = `${m.epoch}:${m.offset}`;
  if (rendered.has(key)) return;
  const li = document.createElement('li');
  li.dataset.epoch = m.epoch;
  li.dataset.offset = String(m.offset);
  const who = document.createElement('span');
  who.className = 'who';
  who.textContent = m.data?.name ?? m.clientId ?? 'server';
  who.style.color = colorFor(who.textContent);
  const text = document.createElement('span');
  text.textContent = typeof m.data?.text === 'string' ? m.data.text : JSON.stringify(m.data);
  const time = document.createElement('time');
  const at = new Date(m.ts || Date.now());
  time.dateTime = at.toISOString();
  time.textContent = at.toLocaleTimeString();
  li.append(who, text, time);
  // Keep offset order within the epoch (history can land after a live message).
  const list = $('messages');
  let before = null;
  for (const other of list.children) {
    if (other.dataset.epoch === m.epoch && Number(other.dataset.offset) > m.offset) {
      before = other;
      break;
    }
  }
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.insertBefore(li, before);
  rendered.set(key, li);
  if (atBottom) list.scrollTop = list.scrollHeight;
}

async function loadHistory(chat) {
  const page = await chat.history({ limit: HISTORY_LIMIT });
  for (const m of page.messages) renderMessage(m);
}

function addPending(text) {
  const li = document.createElement('li');
  li.textContent = `Sending: ${text}`;
  $('pending').append(li);
  return li;
}

// ---- presence --------------------------------------------------------------------------------

/** connection id -> member */
const members = new Map();

function renderPresence() {
  const list = $('presence-list');
  list.replaceChildren();
  const names = [...members.values()].sort((a, b) => String(a.data?.name).localeCompare(String(b.data?.name)));
  for (const m of names) {
    const li = document.createElement('li');
    const dot = document.createElement('span');
    dot.className = 'dot';
    dot.setAttribute('aria-hidden', 'true');
    dot.style.background = m.data?.color ?? colorFor(m.clientId);
    const name = document.createElement('span');
    name.textContent = m.data?.name ?? m.clientId;
    li.append(dot, name);
    list.append(li);
  }
  $('presence-count').textContent = String(members.size);
}

// ---- cursors ---------------------------------------------------------------------------------

const cursors = new Map(); // tab id -> { el, seen }

function showCursor(data) {
  if (!data || data.tab === TAB || typeof data.x !== 'number' || typeof data.y !== 'number') return;
  const board = $('board');
  let c = cursors.get(data.tab);
  if (!c) {
    const el = document.createElement('div');
    el.className = 'cursor';
    el.setAttribute('aria-hidden', 'true');
    const label = document.createElement('span');
    el.append(label);
    board.append(el);
    c = { el, label, seen: 0 };
    cursors.set(data.tab, c);
  }
  c.label.textContent = String(data.name ?? '?');
  c.el.style.setProperty('--c', data.color ?? '#333');
  const x = Math.min(1, Math.max(0, data.x)) * board.clientWidth;
  const y = Math.min(1, Math.max(0, data.y)) * board.clientHeight;
  c.el.style.transform = `translate(${x}px, ${y}px)`;
  c.seen = Date.now();
}

function pruneCursors() {
  const now = Date.now();
  for (const [tab, c] of cursors) {
    if (now - c.seen > CURSOR_STALE_MS) {
      c.el.remove();
      cursors.delete(tab);
    }
  }
}

/** Publishes the latest pointer position at most every CURSOR_INTERVAL_MS (trailing edge kept). */
function cursorPublisher(channel, me) {
  let latest = null;
  let timer = null;
  const flush = () => {
    timer = null;
    if (!latest) return;
    const position = latest;
    latest = null;
    // Stale cursor positions are worthless: never queue them while offline.
    channel.publish({ ...position, ...me, tab: TAB }, { queue: false }).catch(() => {});
    timer = setTimeout(flush, CURSOR_INTERVAL_MS);
  };
  return (x, y) => {
    latest = { x, y };
    if (!timer) flush();
  };
}

// ---- wiring ----------------------------------------------------------------------------------

function start(name) {
  const me = { name, color: colorFor(name) };
  sessionStorage.setItem('aviary-demo-name', name);
  $('join').hidden = true;
  $('room').hidden = false;

  const client = new Aviary({ url: location.origin, getToken: () => fetchToken(name) });
  window.aviaryDemo = { client };
  client.on('statechange', ({ current }) => showState(current));
  client.on('reconnecting', ({ delayMs }) => showState('reconnecting', `next try in ${Math.ceil(delayMs / 1000)} s`));
  client.on('failed', ({ reason }) => showState('failed', reason.message));
  client.on('connected', () => notice(''));

  const chat = client.channel(CHAT);
  chat.subscribe(renderMessage).then(() => loadHistory(chat)).catch((err) => notice(`Could not join ${CHAT}: ${err.message}`));
  chat.on('discontinuity', () => {
    notice('recovered:false, reloading history: some messages could not be replayed after the reconnect.');
    $('messages').replaceChildren();
    rendered.clear();
    loadHistory(chat).catch((err) => notice(`Reloading history failed: ${err.message}`));
  });

  chat.presence.on('sync', (list) => {
    members.clear();
    for (const m of list) members.set(m.connectionId, m);
    renderPresence();
  });
  chat.presence.on('join', (m) => (members.set(m.connectionId, m), renderPresence()));
  chat.presence.on('update', (m) => (members.set(m.connectionId, m), renderPresence()));
  chat.presence.on('leave', (m) => {
    members.delete(m.connectionId);
    renderPresence();
  });
  chat.presence.enter(me).catch((err) => notice(`Presence failed: ${err.message}`));

  $('message-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const input = $('message-input');
    const text = input.value.trim();
    if (!text) return;
    input.value = '';
    const pending = addPending(text);
    chat
      .publish({ text, name })
      .then(() => pending.remove())
      .catch((err) => {
        pending.textContent = `Not sent (${err.code ?? 'error'}): ${text}`;
      });
  });

  const cursorChannel = client.channel(CURSORS);
  cursorChannel.subscribe((m) => showCursor(m.data)).catch(() => {});
  const moveCursor = cursorPublisher(cursorChannel, me);
  const board = $('board');
  board.addEventListener('pointermove', (event) => {
    const rect = board.getBoundingClientRect();
    moveCursor((event.clientX - rect.left) / rect.width, (event.clientY - rect.top) / rect.height);
  });
  setInterval(pruneCursors, 2_000);
  $('message-input').focus();
}

const fromQuery = new URLSearchParams(location.search).get('name');
const saved = fromQuery || sessionStorage.getItem('aviary-demo-name');
if (saved && /^[A-Za-z0-9_.-]{1,40}$/.test(saved)) {
  start(saved);
} else {
  $('name').value = `guest-${Math.random().toString(36).slice(2, 6)}`;
  $('name').select();
  $('name-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const name = $('name').value.trim();
    if (/^[A-Za-z0-9_.-]{1,40}$/.test(name)) start(name);
  });
}
