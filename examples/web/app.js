// The example page's script: asks the BFF who is logged in, then connects to Aviary with tokens
// the BFF mints (POST /api/aviary-token; the BFF holds the API key, the browser never sees it).
import { Aviary } from '/aviary-client.js';

const $ = (id) => document.getElementById(id);
const TAB = Math.random().toString(36).slice(2, 10);

const session = await fetch('/api/me');
if (!session.ok) {
  location.assign('/login');
  throw new Error('not logged in');
}
const { user, aviaryUrl } = await session.json();
$('me').textContent = user;

async function getToken() {
  const res = await fetch('/api/aviary-token', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
  if (res.status === 401) location.assign('/login');
  if (!res.ok) throw new Error(`token endpoint answered ${res.status}`);
  return (await res.json()).token;
}

const client = new Aviary({ url: aviaryUrl, getToken });
window.aviaryExample = { client };
client.on('statechange', ({ current }) => {
  $('state').dataset.state = current;
  $('state').textContent = current;
});

// ---- chat: each message rendered once, in offset order (history and live may overlap) ----------
const seen = new Set();
function render(m) {
  const key = `${m.epoch}:${m.offset}`;
  if (seen.has(key)) return;
  seen.add(key);
  const li = document.createElement('li');
  const who = document.createElement('span');
  who.className = 'who';
  who.textContent = m.clientId ?? 'server';
  li.append(who, document.createTextNode(typeof m.data?.text === 'string' ? m.data.text : JSON.stringify(m.data)));
  $('messages').append(li);
  $('messages').scrollTop = $('messages').scrollHeight;
}
const chat = client.channel('chat:lobby');
await chat.subscribe(render);
for (const m of (await chat.history({ limit: 50 })).messages) render(m);
chat.on('discontinuity', async () => {
  for (const m of (await chat.history({ limit: 50 })).messages) render(m);
});
$('message-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const text = $('message-input').value.trim();
  if (!text) return;
  $('message-input').value = '';
  chat.publish({ text }).catch((err) => console.warn('not sent', err.code));
});

// ---- presence ------------------------------------------------------------------------------------
const members = new Map();
function renderPresence() {
  $('presence-list').replaceChildren(
    ...[...members.values()].map((m) => Object.assign(document.createElement('li'), { textContent: m.clientId })),
  );
  $('presence-count').textContent = String(members.size);
}
chat.presence.on('sync', (list) => {
  members.clear();
  for (const m of list) members.set(m.connectionId, m);
  renderPresence();
});
chat.presence.on('join', (m) => (members.set(m.connectionId, m), renderPresence()));
chat.presence.on('update', (m) => (members.set(m.connectionId, m), renderPresence()));
chat.presence.on('leave', (m) => (members.delete(m.connectionId), renderPresence()));
await chat.presence.enter({ name: user });

// ---- live cursors: at most 20 publishes a second, never queued while offline ----------------------
const cursors = client.channel('cursors:lobby');
const shown = new Map();
await cursors.subscribe((m) => {
  const d = m.data;
  if (!d || d.tab === TAB || typeof d.x !== 'number' || typeof d.y !== 'number') return;
  let el = shown.get(d.tab);
  if (!el) {
    el = Object.assign(document.createElement('div'), { className: 'cursor' });
    $('board').append(el);
    shown.set(d.tab, el);
  }
  el.textContent = String(d.name ?? '?');
  const x = Math.min(1, Math.max(0, d.x)) * $('board').clientWidth;
  const y = Math.min(1, Math.max(0, d.y)) * $('board').clientHeight;
  el.style.transform = `translate(${x}px, ${y}px)`;
});
let latest = null;
let timer = null;
function flush() {
  timer = null;
  if (!latest) return;
  cursors.publish({ ...latest, name: user, tab: TAB }, { queue: false }).catch(() => {});
  latest = null;
  timer = setTimeout(flush, 50);
}
$('board').addEventListener('pointermove', (event) => {
  const rect = $('board').getBoundingClientRect();
  latest = { x: (event.clientX - rect.left) / rect.width, y: (event.clientY - rect.top) / rect.height };
  if (!timer) flush();
});
