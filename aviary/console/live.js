// The Live tab of an app: active channels, presence members, a live tail through a short-lived
// token, and a test publish. All of it needs an app API key, so the console makes its own
// (named "console") for the app, keeps the secret in sessionStorage and revokes it on sign-out.
import { ApiError, OPERATIONS, SessionEnded, api, appKey, describe, setAppKey, showProblem } from './api.js';
import { $, append, clearErrors, field, fmtNumber, h, setFieldError } from './dom.js';

const POLL_MS = 5000;
const TAIL_LIMIT = 200; // messages kept on screen per tail
const HISTORY_LIMIT = 20; // recent messages shown when a tail starts

/** The console's own API key of `app`, created on first use (secret kept in sessionStorage). */
async function ensureConsoleKey(app) {
  const existing = appKey(app.id);
  if (existing) return existing;
  const created = await api('POST', `/v1/apps/${encodeURIComponent(app.id)}/keys`, {
    body: { name: 'console', capabilities: { '*': OPERATIONS } },
  });
  const key = { id: created.key.id, secret: created.secret };
  setAppKey(app.id, key);
  return key;
}

const KEY_GONE = 'The console’s API key for this app was revoked or deleted. Open the Live tab again to create a new one.';

/** Calls the data plane with the console key; a refused key is forgotten so the tab can make another. */
async function appApi(app, method, path, body) {
  const key = appKey(app.id);
  if (!key) throw new ApiError(401, { title: 'Unauthorized', detail: KEY_GONE });
  try {
    return await api(method, path, { body, auth: key });
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      setAppKey(app.id, null);
      throw new ApiError(401, {
        title: 'Unauthorized',
        detail: KEY_GONE,
      });
    }
    throw err;
  }
}

const CLOSE_REASONS = {
  credentials_revoked: 'the API key that minted its token was revoked',
  app_disabled: 'the app was disabled or deleted',
  forbidden: 'this page’s Origin is not in the app’s allowed Origins',
  token_expired: 'its token expired',
  invalid_token: 'its token was refused',
};

/** Renders the Live tab into `view`; `onCleanup` registers what to stop when the view changes. */
export async function liveTab(view, app, onCleanup) {
  let key;
  try {
    key = await ensureConsoleKey(app);
  } catch (err) {
    if (err instanceof SessionEnded) throw err;
    append(view, h('div', { class: 'panel' }, h('p', { class: 'error', role: 'alert' }, `The console could not create its API key for this app: ${describe(err)}`)));
    return;
  }
  // The panels call each other through these: a channel row opens its tail or presence, a sent
  // message refreshes the channel list.
  const presence = presencePanel(app);
  const tail = tailPanel(app, onCleanup);
  const channels = channelsPanel(app, { tail: tail.start, presence: presence.load });
  const send = sendPanel(app, channels.load);

  append(view, [
    h('p', { class: 'muted' }, 'Live features use an API key named “console” (', h('code', {}, key.id), '), kept only in this tab and revoked when you sign out.'),
    originWarning(app),
    h('div', { class: 'grid2' }, channels.section, presence.section),
    h('div', { class: 'grid2' }, tail.section, send.section),
  ]);
  channels.load();
  // A render that was superseded while it awaited never shows its view: stop polling for it.
  const timer = setInterval(() => {
    if (!view.isConnected) return;
    if (document.visibilityState === 'visible') channels.load();
  }, POLL_MS);
  onCleanup(() => clearInterval(timer));
}

/** A warning when the app's allowed Origins refuse this page (the tail would be refused). */
function originWarning(app) {
  const origin = location.origin;
  return app.allowed_origins.length && !app.allowed_origins.includes('*') && !app.allowed_origins.includes(origin)
    ? h('p', { class: 'warn' }, `The app allows only ${app.allowed_origins.join(', ')}: the live tail from this page (${origin}) will be refused. Add ${origin} to its allowed Origins to use it.`)
    : null;
}

/** Active channels: a filterable table; each row opens the channel's tail or presence. */
function channelsPanel(app, open) {
  const prefixField = field({ id: 'channels-prefix', label: 'Channel prefix', hint: 'Only channels whose name starts with this; empty lists all.', attrs: { spellcheck: 'false' } });
  const body = h('tbody', {});
  const status = h('p', { class: 'hint', role: 'status' });
  const error = h('p', { class: 'error', role: 'alert' });
  const row = (c) =>
    h(
      'tr',
      {},
      h('th', { scope: 'row', class: 'mono' }, c.channel),
      h('td', { class: 'num' }, fmtNumber(c.subscribers)),
      h(
        'td',
        {},
        h('button', { type: 'button', class: 'link', onclick: () => { $('tail-channel').value = c.channel; open.tail(); } }, `Tail ${c.channel}`),
        h('button', { type: 'button', class: 'link', onclick: () => { $('presence-channel').value = c.channel; open.presence(); } }, `Presence of ${c.channel}`),
      ),
    );
  const load = async () => {
    try {
      const prefix = $('channels-prefix')?.value.trim() ?? '';
      const data = await appApi(app, 'GET', `/v1/apps/${encodeURIComponent(app.id)}/channels?prefix=${encodeURIComponent(prefix)}`);
      error.textContent = '';
      const list = data.channels ?? [];
      body.replaceChildren(
        ...(list.length ? list.map(row) : [h('tr', {}, h('td', { colspan: 3 }, 'No active channels (none has a subscriber on this node).'))]),
      );
      status.textContent = `Updated ${new Date().toLocaleTimeString()}; refreshes every ${POLL_MS / 1000} s.`;
    } catch (err) {
      if (err instanceof SessionEnded) return;
      error.textContent =
        err instanceof ApiError && err.status === 404 && /route/.test(err.detail)
          ? 'This server runs only the control plane: the Live tab needs the data plane on the same origin ' +
            '(aviary dev, or both planes behind one reverse proxy).'
          : describe(err);
    }
  };
  const form = h('form', { novalidate: true, class: 'inline' }, prefixField, h('button', { type: 'submit' }, 'Filter'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    load();
  });
  const section = h('section', { 'aria-labelledby': 'channels-title' }, h('h2', { id: 'channels-title' }, 'Active channels'), form, error,
    h('div', { class: 'table-wrap' }, h('table', { id: 'channels-table' }, h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Channel'), h('th', { scope: 'col', class: 'num' }, 'Subscribers'), h('th', { scope: 'col' }, 'Look'))), body)),
    status);
  return { section, load };
}

/** Presence: the members of one channel. */
function presencePanel(app) {
  const list = h('ul', { id: 'presence-members' });
  const error = h('p', { class: 'error', role: 'alert' });
  const load = async () => {
    const input = $('presence-channel');
    const channel = input.value.trim();
    setFieldError(input, '');
    error.textContent = '';
    if (!channel) return setFieldError(input, 'Enter a channel name.');
    try {
      const data = await appApi(app, 'GET', `/v1/apps/${encodeURIComponent(app.id)}/channels/${encodeURIComponent(channel)}/presence`);
      const members = data.members ?? [];
      list.replaceChildren(
        ...(members.length
          ? members.map((m) => h('li', {}, h('strong', {}, m.client_id), ' ', h('span', { class: 'hint mono' }, m.connection_id), m.data ? ` ${JSON.stringify(m.data)}` : ''))
          : [h('li', { class: 'muted' }, `Nobody is present on ${channel}.`)]),
      );
    } catch (err) {
      if (!(err instanceof SessionEnded)) showProblem(err, [[/channel|namespace/i, input]], error);
    }
  };
  const form = h('form', { novalidate: true, class: 'inline' }, field({ id: 'presence-channel', label: 'Channel', attrs: { spellcheck: 'false' } }), h('button', { type: 'submit' }, 'Show members'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    load();
  });
  const section = h('section', { 'aria-labelledby': 'presence-title' }, h('h2', { id: 'presence-title' }, 'Presence'), form, error, list);
  return { section, load };
}

/** Tail: a realtime client subscribed to one channel, showing recent history then live messages. */
function tailPanel(app, onCleanup) {
  const list = h('ol', { class: 'tail', id: 'tail', 'aria-live': 'polite', 'aria-label': 'Messages received' });
  const state = h('p', { class: 'state', id: 'tail-state', role: 'status', dataset: { state: 'idle' } }, 'Not tailing.');
  const error = h('p', { class: 'error', role: 'alert', id: 'tail-error' });
  let client = null;
  const stop = () => {
    client?.close();
    client = null;
  };
  onCleanup(stop);
  const setState = (name, text) => {
    state.dataset.state = name;
    state.textContent = text;
  };
  async function start() {
    const input = $('tail-channel');
    const channel = input.value.trim();
    setFieldError(input, '');
    error.textContent = '';
    if (!channel) return setFieldError(input, 'Enter a channel name.');
    stop();
    list.replaceChildren();
    let Aviary;
    try {
      ({ Aviary } = await import('/console/aviary-client.js'));
    } catch {
      error.textContent = 'Could not load the realtime client (/console/aviary-client.js).';
      return;
    }
    const clientId = `console-${Math.random().toString(36).slice(2, 10)}`;
    const getToken = tailTokens(app, channel, clientId);
    // Mint once up front so a refused key or channel shows as a message, not a retry loop.
    let first;
    try {
      first = await getToken();
    } catch (err) {
      if (!(err instanceof SessionEnded)) showProblem(err, [[/capabilit|channel|glob/i, input]], error);
      return;
    }
    let pending = first;
    const c = new Aviary({
      url: location.origin,
      getToken: async () => {
        if (pending) {
          const t = pending;
          pending = null;
          return t;
        }
        return getToken();
      },
    });
    client = c;
    watchTailClient(c, { current: () => client, stop, setState, error, channel, clientId });
    const ch = c.channel(channel);
    try {
      const show = tailRenderer(list);
      await ch.subscribe(show);
      try {
        const recent = await ch.history({ limit: HISTORY_LIMIT });
        for (const m of recent.messages) show(m);
      } catch {
        // No history capability or none kept for the namespace: live messages only.
      }
    } catch (err) {
      if (client === c) error.textContent = `Could not subscribe to ${channel}: ${err?.message ?? err}`;
    }
  }
  const form = h(
    'form',
    { novalidate: true, class: 'inline', id: 'tail-form' },
    field({ id: 'tail-channel', label: 'Channel', attrs: { spellcheck: 'false' } }),
    h('button', { type: 'submit', id: 'start-tail' }, 'Start tail'),
    h('button', { type: 'button', class: 'secondary', onclick: () => { stop(); setState('closed', 'Stopped.'); } }, 'Stop'),
  );
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    start();
  });
  const section = h('section', { 'aria-labelledby': 'tail-title' }, h('h2', { id: 'tail-title' }, 'Tail a channel'), h('p', { class: 'hint' }, 'Shows the last 20 messages, then new ones as they arrive, through a 5-minute token the console mints for itself (refreshed while it runs).'), form, state, error, list);
  return { section, start };
}

/** Mints the tail's short-lived tokens: subscribe and history on `channel` only. */
function tailTokens(app, channel, clientId) {
  const ttl = Math.max(1, Math.min(300, app.max_token_ttl_s || 300));
  return async () => {
    const issued = await appApi(app, 'POST', `/v1/apps/${encodeURIComponent(app.id)}/tokens`, {
      client_id: clientId,
      ttl_s: ttl,
      capabilities: { [channel]: ['subscribe', 'history'] },
    });
    return issued.token;
  };
}

/** Shows the tail client's state; `tail.current()` is the client the panel runs now (events of
 * a replaced one are ignored). */
function watchTailClient(c, tail) {
  const { stop, setState, error, channel, clientId } = tail;
  c.on('statechange', ({ current }) => {
    if (tail.current() !== c) return;
    if (current === 'connected') setState('connected', `Tailing ${channel} (connected as ${clientId}).`);
    else if (current === 'failed' || current === 'closed') return;
    else setState(current, `${current[0].toUpperCase()}${current.slice(1)}…`);
  });
  // 4010/4004/4003 need the admin's action: stop instead of letting the client retry with
  // tokens the console can no longer mint.
  c.on('disconnected', ({ reason }) => {
    if (tail.current() !== c || !['credentials_revoked', 'app_disabled', 'forbidden'].includes(reason?.code)) return;
    stop();
    setState('failed', `Disconnected: ${CLOSE_REASONS[reason.code]}${reason.closeCode ? ` (close code ${reason.closeCode})` : ''}.`);
  });
  c.on('failed', ({ reason }) => {
    if (tail.current() !== c) return;
    const why = CLOSE_REASONS[reason?.code] ?? reason?.message ?? 'unknown reason';
    setState('failed', `Disconnected: ${why}${reason?.closeCode ? ` (close code ${reason.closeCode})` : ''}.`);
  });
  c.on('error', (err) => {
    if (tail.current() === c) error.textContent = `Realtime client: ${err?.message ?? err}`;
  });
}

/** Returns `show(message)`, which puts a message into `list` once per offset, in offset order
 * (live messages and the recent history may overlap), keeping the last `TAIL_LIMIT`. */
function tailRenderer(list) {
  const shown = new Set();
  return (m) => {
    const key = `${m.epoch}:${m.offset}`;
    if (shown.has(key)) return;
    shown.add(key);
    const at = new Date(m.ts || Date.now());
    const li = h(
      'li',
      { dataset: { epoch: m.epoch, offset: m.offset } },
      h('span', { class: 'hint mono' }, `#${m.offset} `),
      h('time', { datetime: at.toISOString() }, at.toLocaleTimeString()),
      ' ',
      h('strong', {}, m.clientId ?? 'backend'),
      ' ',
      h('code', {}, JSON.stringify(m.data)),
    );
    const after = [...list.children].find((el) => el.dataset.epoch === m.epoch && Number(el.dataset.offset) > m.offset);
    list.insertBefore(li, after ?? null);
    while (list.children.length > TAIL_LIMIT) list.firstElementChild.remove();
    list.scrollTop = list.scrollHeight;
  };
}

/** Send a test message: published over REST like a backend would; `onPublished` runs after. */
function sendPanel(app, onPublished) {
  const error = h('p', { class: 'error', role: 'alert' });
  const result = h('p', { class: 'ok', role: 'status', id: 'send-result' });
  const form = h(
    'form',
    { novalidate: true, id: 'send-form' },
    field({ id: 'send-channel', label: 'Channel', attrs: { spellcheck: 'false' } }),
    field({ id: 'send-data', label: 'Message data (JSON)', multiline: true, value: '{"text": "hello from the console"}', attrs: { spellcheck: 'false' } }),
    error,
    result,
    h('button', { type: 'submit', id: 'send-message' }, 'Send test message'),
  );
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    error.textContent = '';
    result.textContent = '';
    const channelInput = $('send-channel');
    const dataInput = $('send-data');
    const channel = channelInput.value.trim();
    if (!channel) return setFieldError(channelInput, 'Enter a channel name.');
    let data;
    try {
      data = JSON.parse(dataInput.value);
    } catch (err) {
      return setFieldError(dataInput, `Not valid JSON: ${err.message}`);
    }
    try {
      const pos = await appApi(app, 'POST', `/v1/apps/${encodeURIComponent(app.id)}/channels/${encodeURIComponent(channel)}/messages`, { data });
      result.textContent = `Published to ${channel} at offset ${pos.offset}.`;
      onPublished();
    } catch (err) {
      if (!(err instanceof SessionEnded)) showProblem(err, [[/channel|namespace/i, channelInput], [/data|payload|large|bytes/i, dataInput]], error);
    }
  });
  const section = h('section', { 'aria-labelledby': 'send-title' }, h('h2', { id: 'send-title' }, 'Send a test message'), h('p', { class: 'hint' }, 'Published over REST like your backend would (client id “backend”).'), form);
  return { section };
}
