// The Aviary admin console: a small single-page app over the REST API of the same origin.
//
// - Credentials (a tenant admin key or the operator token) live in sessionStorage only: never in
//   a URL, never in localStorage, forgotten when the tab closes. Routes are URL fragments
//   (#/apps/<id>/keys) that carry ids, never secrets.
// - Live features need an app API key (minting tokens, listing channels, publishing are app-key
//   operations). The console creates one named "console" per app when the Live tab opens, keeps
//   its secret in sessionStorage, and revokes it on sign-out.
// - Every failure ends as a visible message: API problems (application/problem+json) show their
//   `detail` next to the field they are about, a refused credential signs out with an
//   explanation, and uncaught errors land in the banner. No view is ever left blank.
// - No innerHTML with data: every text goes through textContent.

const SESSION_KEY = 'aviary-console:session';
const APP_KEY_PREFIX = 'aviary-console:app-key:';
const OPERATIONS = ['subscribe', 'publish', 'presence', 'history'];
const POLL_MS = 5000;
const MAX_SAMPLES = 120; // ten minutes of 5 s samples
const TAIL_LIMIT = 200; // messages kept on screen per tail

const $ = (id) => document.getElementById(id);

// ---- DOM helpers --------------------------------------------------------------------------------

/** h('button', { type: 'button', onclick }, 'Save'): attributes, `on*` listeners, children. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') el.addEventListener(name.slice(2), value);
    else if (name === 'dataset') Object.assign(el.dataset, value);
    else if (name === 'value') el.value = value;
    else if (name === 'checked') el.checked = el.defaultChecked = Boolean(value);
    else el.setAttribute(name, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const SVG_NS = 'http://www.w3.org/2000/svg';
function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, String(value));
  for (const child of children) el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return el;
}

let uid = 0;
/** A labelled input with its hint and error slot, wired with aria-describedby. */
function field({ id, label, type = 'text', value, hint, required, attrs = {}, multiline = false }) {
  id ??= `f${++uid}`;
  const hintId = `${id}-hint`;
  const errorId = `${id}-error`;
  const control = multiline
    ? h('textarea', { id, name: id, required, 'aria-describedby': `${hint ? hintId : ''} ${errorId}`.trim(), ...attrs })
    : h('input', { id, name: id, type, required, 'aria-describedby': `${hint ? hintId : ''} ${errorId}`.trim(), ...attrs });
  if (value !== undefined && value !== null) control.value = String(value);
  return h(
    'div',
    { class: 'field' },
    h('label', { for: id }, label),
    control,
    hint ? h('p', { class: 'hint', id: hintId }, hint) : null,
    h('p', { class: 'error', id: errorId }),
  );
}

function checkbox({ id, label, checked, hint }) {
  id ??= `f${++uid}`;
  return h(
    'label',
    { class: 'check', for: id },
    h('input', { id, type: 'checkbox', checked, 'aria-describedby': hint ? `${id}-hint` : undefined }),
    label,
  );
}

function setFieldError(control, message) {
  const slot = document.getElementById(`${control.id}-error`);
  if (slot) slot.textContent = message ?? '';
  if (message) control.setAttribute('aria-invalid', 'true');
  else control.removeAttribute('aria-invalid');
}

function clearErrors(form) {
  for (const el of form.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
  for (const el of form.querySelectorAll('.error')) el.textContent = '';
}

/** Shows an API error next to the field it is about (first matching rule), else in `fallback`. */
function showProblem(err, rules, fallback) {
  if (err instanceof SessionEnded) return;
  const message = describe(err);
  for (const [pattern, control] of rules) {
    if (control && pattern.test(err.detail ?? '')) {
      setFieldError(control, message);
      control.focus();
      return;
    }
  }
  fallback.textContent = message;
}

function fmtTime(iso) {
  if (!iso) return h('span', { class: 'muted' }, 'never');
  const at = new Date(iso);
  return h('time', { datetime: at.toISOString(), title: at.toISOString() }, at.toLocaleString());
}

function fmtNumber(n) {
  return Number(n ?? 0).toLocaleString();
}

function fmtBytes(n) {
  n = Number(n ?? 0);
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let i = -1;
  do {
    n /= 1024;
    i += 1;
  } while (n >= 1024 && i < units.length - 1);
  return `${n.toFixed(1)} ${units[i]}`;
}

/** Whether the banner should survive the next navigation (set when a message is shown). */
let flashKeep = false;

function flash(message, kind = 'error') {
  flashKeep = Boolean(message);
  const el = $('flash');
  el.textContent = message ?? '';
  el.dataset.kind = kind;
  el.hidden = !message;
}

// ---- session ------------------------------------------------------------------------------------

function loadSession() {
  try {
    const session = JSON.parse(sessionStorage.getItem(SESSION_KEY) ?? 'null');
    return session && typeof session.token === 'string' ? session : null;
  } catch {
    return null;
  }
}

function saveSession(session) {
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
}

function appKey(appId) {
  try {
    return JSON.parse(sessionStorage.getItem(APP_KEY_PREFIX + appId) ?? 'null');
  } catch {
    return null;
  }
}

function setAppKey(appId, key) {
  if (key) sessionStorage.setItem(APP_KEY_PREFIX + appId, JSON.stringify(key));
  else sessionStorage.removeItem(APP_KEY_PREFIX + appId);
}

function consoleKeys() {
  const keys = [];
  for (let i = 0; i < sessionStorage.length; i += 1) {
    const name = sessionStorage.key(i);
    if (name?.startsWith(APP_KEY_PREFIX)) keys.push([name.slice(APP_KEY_PREFIX.length), appKey(name.slice(APP_KEY_PREFIX.length))]);
  }
  return keys;
}

// ---- API ----------------------------------------------------------------------------------------

/** An API answer that was not 2xx, with the problem document's fields. */
class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.type = problem.type ?? '';
    this.title = problem.title ?? '';
    this.detail = problem.detail ?? '';
  }
}

/** Raised after the admin credential was refused: the console has already signed out. */
class SessionEnded extends Error {}

function describe(err) {
  if (err instanceof ApiError) {
    if (err.status === 0) return err.detail;
    if (err.status === 429) return `Too many requests: ${err.detail || 'slow down and try again in a moment'}.`;
    if (err.status >= 500) return `The server failed (${err.status} ${err.title}): ${err.detail}`;
    return err.detail || err.title || `HTTP ${err.status}`;
  }
  return err?.message ?? String(err);
}

/**
 * Calls the API. `auth` is 'admin' (the signed-in credential: refusal ends the session),
 * an app key object `{ secret }`, or null.
 */
async function api(method, path, { body, auth = 'admin' } = {}) {
  const headers = { accept: 'application/json' };
  const session = loadSession();
  if (auth === 'admin') {
    if (!session) throw signOutExpired();
    headers.authorization = `Bearer ${session.token}`;
  } else if (auth) {
    headers.authorization = `Bearer ${auth.secret}`;
  }
  if (body !== undefined) headers['content-type'] = 'application/json';
  let res;
  try {
    res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'omit',
      cache: 'no-store',
    });
  } catch {
    throw new ApiError(0, {
      title: 'Network error',
      detail: 'Could not reach the Aviary server. Check that it is running and that you are online, then try again.',
    });
  }
  if (res.status === 204) return null;
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!res.ok) {
    const problem = data && typeof data === 'object' ? data : { title: res.statusText, detail: text.slice(0, 200) };
    if (res.status === 401 && auth === 'admin') throw signOutExpired();
    throw new ApiError(res.status, problem);
  }
  return data;
}

/** Lists every page of a `{items, next_cursor}` listing (bounded: 20 pages). */
async function listAll(path) {
  const items = [];
  let cursor = null;
  for (let page = 0; page < 20; page += 1) {
    const sep = path.includes('?') ? '&' : '?';
    const data = await api('GET', `${path}${sep}limit=200${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
    items.push(...(data.items ?? []));
    cursor = data.next_cursor;
    if (!cursor) break;
  }
  return items;
}

/** The tenant id of a session that just ended (not a secret), to prefill the sign-in form. */
let lastTenantId = '';

function signOutExpired() {
  lastTenantId = loadSession()?.tenantId ?? '';
  sessionStorage.clear();
  flash(
    'Your session has ended: the server no longer accepts your key (it was revoked, the tenant was deleted, ' +
      'or the key is wrong). Sign in again.',
  );
  if (location.hash !== '#/sign-in') location.hash = '#/sign-in';
  else render();
  return new SessionEnded('session ended');
}

// ---- confirmation dialog ------------------------------------------------------------------------

/** Resolves true when the user confirms; `typed` demands typing that exact text first. */
function confirmAction({ title, text, ok = 'Confirm', typed }) {
  const dialog = $('confirm');
  $('confirm-title').textContent = title;
  $('confirm-text').textContent = text;
  $('confirm-ok').textContent = ok;
  $('confirm-typed').hidden = !typed;
  $('confirm-expected').textContent = typed ?? '';
  const input = $('confirm-input');
  input.value = '';
  const sync = () => ($('confirm-ok').disabled = Boolean(typed) && input.value !== typed);
  sync();
  input.oninput = sync;
  return new Promise((resolve) => {
    const done = (answer) => {
      dialog.onclose = null;
      if (dialog.open) dialog.close();
      resolve(answer);
    };
    $('confirm-cancel').onclick = () => done(false);
    $('confirm-form').onsubmit = (event) => {
      event.preventDefault();
      done(!typed || input.value === typed);
    };
    dialog.onclose = () => done(false);
    dialog.showModal();
    (typed ? input : $('confirm-cancel')).focus();
  });
}

// ---- secrets shown once -------------------------------------------------------------------------

function secretPanel({ title, secret, what, onDone }) {
  const input = h('input', { id: 'new-secret', type: 'text', readonly: true, value: secret, 'aria-describedby': 'new-secret-warning', spellcheck: 'false' });
  const status = h('span', { role: 'status', class: 'ok' });
  const panel = h(
    'div',
    { class: 'secret', role: 'region', 'aria-labelledby': 'new-secret-title' },
    h('h2', { id: 'new-secret-title' }, title),
    h(
      'p',
      { id: 'new-secret-warning' },
      h('strong', {}, 'Copy it now: this is the only time it is shown. '),
      `Aviary keeps only a hash of ${what}. If you lose it, revoke it and create another.`,
    ),
    h('label', { for: 'new-secret' }, 'Secret'),
    input,
    h(
      'div',
      { class: 'actions' },
      h('button', {
        type: 'button',
        id: 'copy-secret',
        onclick: async () => {
          try {
            await navigator.clipboard.writeText(secret);
            status.textContent = 'Copied to the clipboard.';
          } catch {
            input.select();
            status.textContent = 'Select the text and copy it (Ctrl+C / Cmd+C): the browser refused clipboard access.';
          }
        },
      }, 'Copy'),
      h('button', { type: 'button', class: 'secondary', id: 'secret-done', onclick: () => { panel.remove(); onDone?.(); } }, 'I have stored it'),
      status,
    ),
  );
  queueMicrotask(() => input.focus());
  input.addEventListener('focus', () => input.select());
  return panel;
}

// ---- routing ------------------------------------------------------------------------------------

/** Intervals, SDK clients and listeners of the current view; stopped when the view changes. */
let cleanups = [];
let renderSeq = 0;

function onCleanup(fn) {
  cleanups.push(fn);
}

function route() {
  const parts = location.hash.replace(/^#\/?/, '').split('/').filter(Boolean).map(decodeURIComponent);
  return parts;
}

function navigate(hash) {
  if (location.hash === hash) render();
  else location.hash = hash;
}

async function render() {
  for (const fn of cleanups.splice(0)) {
    try {
      fn();
    } catch {
      /* a failing cleanup must not block the next view */
    }
  }
  const seq = ++renderSeq;
  const main = $('main');
  const session = loadSession();
  renderHeader(session);
  const parts = route();
  const view = h('div', {});
  let focusHeading = true;
  try {
    if (!session) {
      focusHeading = false;
      main.replaceChildren(view);
      signInView(view);
      return;
    }
    main.replaceChildren(h('p', { role: 'status' }, 'Loading…'));
    if (session.kind === 'operator' && (parts[0] === 'tenants' || !session.tenantId)) {
      await tenantsView(view, session);
    } else if (parts[0] === 'usage') {
      await usageView(view, session);
    } else if (parts[0] === 'apps' && parts[1]) {
      await appView(view, session, parts[1], parts[2] ?? 'settings');
    } else {
      await appsView(view, session);
    }
  } catch (err) {
    if (err instanceof SessionEnded) return;
    view.replaceChildren(
      h('h1', { tabindex: '-1' }, 'Something went wrong'),
      h('div', { class: 'panel' }, h('p', { class: 'error', id: 'view-error' }, describe(err)), h('button', { type: 'button', onclick: () => render() }, 'Try again')),
    );
  }
  if (seq !== renderSeq) return; // a newer render took over while this one awaited
  main.replaceChildren(view);
  if (focusHeading) {
    const heading = view.querySelector('h1');
    if (heading) {
      heading.tabIndex = -1;
      heading.focus({ preventScroll: true });
    }
  }
}

function renderHeader(session) {
  const nav = $('nav');
  const who = $('who');
  $('sign-out').hidden = !session;
  if (!session) {
    nav.hidden = true;
    who.textContent = '';
    return;
  }
  const parts = route();
  const links = [];
  if (session.kind === 'operator') links.push(['#/tenants', 'Tenants', parts[0] === 'tenants']);
  if (session.tenantId) {
    links.push(['#/apps', 'Apps', parts[0] === 'apps' || (!parts[0] && session.kind !== 'operator')]);
    links.push(['#/usage', 'Usage', parts[0] === 'usage']);
  }
  nav.replaceChildren(...links.map(([href, text, current]) => h('a', { href, 'aria-current': current ? 'page' : undefined }, text)));
  nav.hidden = false;
  who.textContent =
    session.kind === 'operator'
      ? `Operator${session.tenantId ? `, managing ${session.tenantName ?? session.tenantId}` : ''}`
      : `Tenant admin of ${session.tenantName ?? session.tenantId}`;
}

async function signOut() {
  const session = loadSession();
  // Best effort: the console's own app keys should not outlive the session that made them.
  if (session) {
    await Promise.allSettled(consoleKeys().map(([appId, key]) => key && api('DELETE', `/v1/apps/${encodeURIComponent(appId)}/keys/${encodeURIComponent(key.id)}`)));
  }
  sessionStorage.clear();
  flash('Signed out. Your key was removed from this tab.', 'ok');
  navigate('#/sign-in');
}

// ---- sign in ------------------------------------------------------------------------------------

function signInView(view) {
  const kindAdmin = h('input', { type: 'radio', name: 'kind', id: 'kind-admin', value: 'tenant', checked: true });
  const kindOperator = h('input', { type: 'radio', name: 'kind', id: 'kind-operator', value: 'operator' });
  const tenantField = field({ id: 'signin-tenant', label: 'Tenant id', value: lastTenantId, hint: 'ten_…, printed with the admin key when the tenant was created.', attrs: { autocomplete: 'off', spellcheck: 'false' } });
  const keyField = field({
    id: 'signin-key',
    label: 'Admin key',
    type: 'password',
    required: true,
    hint: 'avt_…. Kept only in this tab (session storage) and sent only to this server.',
    attrs: { autocomplete: 'off', spellcheck: 'false' },
  });
  const formError = h('p', { class: 'error', id: 'signin-error', role: 'alert' });
  const submit = h('button', { type: 'submit', id: 'signin-submit' }, 'Sign in');
  const syncKind = () => {
    const operator = kindOperator.checked;
    tenantField.hidden = operator;
    keyField.querySelector('label').textContent = operator ? 'Operator token' : 'Admin key';
    keyField.querySelector('.hint').textContent = operator
      ? 'AVIARY_OPERATOR_TOKEN, or the avo_… token `aviary dev` prints. Kept only in this tab.'
      : 'avt_…. Kept only in this tab (session storage) and sent only to this server.';
  };
  kindAdmin.addEventListener('change', syncKind);
  kindOperator.addEventListener('change', syncKind);
  const form = h(
    'form',
    { id: 'signin-form', novalidate: true, 'aria-labelledby': 'signin-title' },
    h('fieldset', {}, h('legend', {}, 'Sign in as'), h('label', { class: 'check', for: 'kind-admin' }, kindAdmin, 'Tenant admin'), h('label', { class: 'check', for: 'kind-operator' }, kindOperator, 'Operator')),
    tenantField,
    keyField,
    formError,
    h('div', { class: 'actions' }, submit),
  );
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    formError.textContent = '';
    const operator = kindOperator.checked;
    const key = $('signin-key').value.trim();
    const tenantId = $('signin-tenant').value.trim();
    if (!key) return setFieldError($('signin-key'), operator ? 'Enter the operator token.' : 'Enter an admin key.');
    if (!operator) {
      if (key.startsWith('avk_')) return setFieldError($('signin-key'), 'This is an app API key (avk_…). Sign in with a tenant admin key (avt_…).');
      if (!key.startsWith('avt_')) return setFieldError($('signin-key'), 'Tenant admin keys start with avt_.');
      if (!/^ten_[0-9a-f]+$/.test(tenantId)) return setFieldError($('signin-tenant'), 'Enter the tenant id (ten_ followed by hex digits).');
    }
    submit.disabled = true;
    submit.textContent = 'Signing in…';
    try {
      const path = operator ? '/v1/tenants?limit=1' : `/v1/tenants/${encodeURIComponent(tenantId)}`;
      let found;
      try {
        found = await api('GET', path, { auth: { secret: key } });
      } catch (err) {
        if (err instanceof ApiError && err.status === 401) {
          setFieldError(
            $('signin-key'),
            operator
              ? 'This operator token was not accepted.'
              : 'This admin key was not accepted: check that it was copied whole and has not been revoked.',
          );
          $('signin-key').focus();
          return;
        }
        if (err instanceof ApiError && err.status === 404 && !operator) {
          setFieldError($('signin-tenant'), 'No such tenant for this key: check the tenant id.');
          $('signin-tenant').focus();
          return;
        }
        formError.textContent = describe(err);
        return;
      }
      const session = operator
        ? { kind: 'operator', token: key }
        : { kind: 'tenant', token: key, tenantId: found.id, tenantName: found.name };
      saveSession(session);
      flash('');
      navigate(operator ? '#/tenants' : '#/apps');
    } finally {
      submit.disabled = false;
      submit.textContent = 'Sign in';
    }
  });
  append(view, [
    h('h1', { id: 'signin-title' }, 'Sign in to the Aviary console'),
    h('div', { class: 'panel' }, form),
    h('p', { class: 'muted' }, 'Admins of a tenant sign in with its admin key; the operator of this Aviary with the operator token.'),
  ]);
  syncKind();
  queueMicrotask(() => $(lastTenantId ? 'signin-key' : 'signin-tenant')?.focus());
}

// ---- operator: tenants --------------------------------------------------------------------------

const QUOTA_FIELDS = [
  ['max_connections', 'Connections'],
  ['max_messages_per_s', 'Messages / s'],
  ['max_message_bytes', 'Message bytes'],
  ['max_subscriptions_per_connection', 'Subscriptions / connection'],
  ['max_presence_members', 'Presence members / channel'],
];

async function tenantsView(view, session) {
  const tenants = await listAll('/v1/tenants');
  const editSlot = h('div', {});
  const createdSlot = h('div', {});
  const rows = tenants.map((t) =>
    h(
      'tr',
      {},
      h('th', { scope: 'row' }, t.name, h('div', { class: 'hint mono' }, t.id)),
      h('td', {}, h('span', { class: `badge ${t.enabled ? 'on' : 'off'}` }, t.enabled ? 'enabled' : 'disabled')),
      QUOTA_FIELDS.map(([k]) => h('td', { class: 'num' }, fmtNumber(t.quotas?.[k]))),
      h(
        'td',
        {},
        h('button', {
          type: 'button',
          class: 'link',
          onclick: () => {
            saveSession({ ...loadSession(), tenantId: t.id, tenantName: t.name });
            navigate('#/apps');
          },
          'aria-label': `Manage ${t.name}`,
        }, 'Manage'),
        h('button', { type: 'button', class: 'link', 'aria-label': `Edit quotas of ${t.name}`, onclick: () => editSlot.replaceChildren(quotaForm(t)) }, 'Edit quotas'),
      ),
    ),
  );
  const nameField = field({ id: 'tenant-name', label: 'Name', required: true, hint: 'Letters, digits, space, _ - . (1 to 64).' });
  const createError = h('p', { class: 'error', role: 'alert' });
  const createForm = h('form', { novalidate: true }, nameField, createError, h('button', { type: 'submit' }, 'Create tenant'));
  createForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(createForm);
    createError.textContent = '';
    try {
      const created = await api('POST', '/v1/tenants', { body: { name: $('tenant-name').value.trim() } });
      $('tenant-name').value = '';
      createdSlot.replaceChildren(
        h('p', { class: 'ok' }, `Tenant ${created.tenant.name} created: ${created.tenant.id}`),
        secretPanel({ title: `Admin key of ${created.tenant.name}`, secret: created.admin_key.secret, what: 'admin keys', onDone: () => render() }),
      );
    } catch (err) {
      showProblem(err, [[/name|exists/i, $('tenant-name')]], createError);
    }
  });
  append(view, [
    h('h1', {}, 'Tenants'),
    createdSlot,
    h(
      'section',
      { 'aria-labelledby': 'tenants-title' },
      h('h2', { id: 'tenants-title' }, `${tenants.length} tenant${tenants.length === 1 ? '' : 's'} and their quotas`),
      h(
        'div',
        { class: 'table-wrap' },
        h(
          'table',
          { id: 'tenants-table' },
          h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Tenant'), h('th', { scope: 'col' }, 'Status'), QUOTA_FIELDS.map(([, label]) => h('th', { scope: 'col', class: 'num' }, label)), h('th', { scope: 'col' }, 'Actions'))),
          h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colspan: 8 }, 'No tenants yet.'))),
        ),
      ),
    ),
    editSlot,
    h('section', { 'aria-labelledby': 'new-tenant-title' }, h('h2', { id: 'new-tenant-title' }, 'New tenant'), createForm),
  ]);
}

function quotaForm(tenant) {
  const fields = QUOTA_FIELDS.map(([k, label]) => field({ id: `quota-${k}`, label, type: 'number', value: tenant.quotas?.[k], attrs: { min: 0, step: 1 } }));
  const error = h('p', { class: 'error', role: 'alert' });
  const form = h(
    'form',
    { novalidate: true, 'aria-labelledby': 'quota-title' },
    h('h2', { id: 'quota-title' }, `Quotas of ${tenant.name}`),
    h('div', { class: 'grid2' }, fields),
    error,
    h('button', { type: 'submit' }, 'Save quotas'),
  );
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    const quotas = {};
    for (const [k] of QUOTA_FIELDS) {
      const input = $(`quota-${k}`);
      const n = Number(input.value);
      if (input.value.trim() === '' || !Number.isInteger(n) || n < 0) return setFieldError(input, 'Enter a whole number.');
      quotas[k] = n;
    }
    try {
      await api('PATCH', `/v1/tenants/${encodeURIComponent(tenant.id)}`, { body: { quotas } });
      flash(`Quotas of ${tenant.name} saved.`, 'ok');
      render();
    } catch (err) {
      showProblem(err, QUOTA_FIELDS.map(([k]) => [new RegExp(k), $(`quota-${k}`)]), error);
    }
  });
  return h('section', {}, form);
}

// ---- apps ---------------------------------------------------------------------------------------

async function appsView(view, session) {
  const apps = await listAll(`/v1/tenants/${encodeURIComponent(session.tenantId)}/apps`);
  const nameField = field({ id: 'new-app-name', label: 'Name', required: true, hint: 'Letters, digits, space, _ - . (1 to 64), unique in the tenant.' });
  const error = h('p', { class: 'error', role: 'alert' });
  const form = h('form', { id: 'new-app-form', novalidate: true }, nameField, error, h('button', { type: 'submit' }, 'Create app'));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    error.textContent = '';
    const name = $('new-app-name').value.trim();
    if (!name) return setFieldError($('new-app-name'), 'Enter a name.');
    try {
      const app = await api('POST', `/v1/tenants/${encodeURIComponent(session.tenantId)}/apps`, { body: { name } });
      flash(`App ${app.name} created. Add API keys for your backend under “API keys”.`, 'ok');
      navigate(`#/apps/${encodeURIComponent(app.id)}/settings`);
    } catch (err) {
      showProblem(err, [[/name|exists|unique/i, $('new-app-name')]], error);
    }
  });
  append(view, [
    h('h1', {}, `Apps of ${session.tenantName ?? session.tenantId}`),
    h(
      'section',
      { 'aria-labelledby': 'apps-title' },
      h('h2', { id: 'apps-title' }, `${apps.length} app${apps.length === 1 ? '' : 's'}`),
      h(
        'div',
        { class: 'table-wrap' },
        h(
          'table',
          { id: 'apps-table' },
          h('thead', {}, h('tr', {}, ['Name', 'App id', 'Status', 'Namespaces', 'Created'].map((c) => h('th', { scope: 'col' }, c)))),
          h(
            'tbody',
            {},
            apps.length
              ? apps.map((a) =>
                  h(
                    'tr',
                    {},
                    h('th', { scope: 'row' }, h('a', { href: `#/apps/${encodeURIComponent(a.id)}/settings` }, a.name)),
                    h('td', { class: 'mono' }, a.id),
                    h('td', {}, h('span', { class: `badge ${a.enabled ? 'on' : 'off'}` }, a.enabled ? 'enabled' : 'disabled')),
                    h('td', {}, a.namespaces.map((n) => (n.name === '' ? '(default)' : n.name)).join(', ') || '—'),
                    h('td', {}, fmtTime(a.created_at)),
                  ),
                )
              : h('tr', {}, h('td', { colspan: 5 }, 'No apps yet: create one below.')),
          ),
        ),
      ),
    ),
    h('section', { 'aria-labelledby': 'new-app-title' }, h('h2', { id: 'new-app-title' }, 'New app'), form),
  ]);
}

async function appView(view, session, appId, tab) {
  const app = await api('GET', `/v1/apps/${encodeURIComponent(appId)}`);
  const base = `#/apps/${encodeURIComponent(app.id)}`;
  const tabs = [
    ['settings', 'Settings'],
    ['keys', 'API keys'],
    ['live', 'Live'],
  ];
  append(view, [
    h('p', {}, h('a', { href: '#/apps' }, '← All apps')),
    h('h1', {}, `App ${app.name} `, h('span', { class: `badge ${app.enabled ? 'on' : 'off'}` }, app.enabled ? 'enabled' : 'disabled')),
    h('p', { class: 'muted' }, 'App id ', h('code', {}, app.id)),
    h('nav', { class: 'tabs', 'aria-label': 'App sections' }, tabs.map(([t, label]) => h('a', { href: `${base}/${t}`, 'aria-current': t === tab ? 'page' : undefined }, label))),
  ]);
  if (tab === 'keys') await keysTab(view, app);
  else if (tab === 'live') await liveTab(view, app);
  else settingsTab(view, app);
}

// ---- app settings -------------------------------------------------------------------------------

function namespaceRow(ns = { name: '', history_size: 0, history_ttl_s: 0, presence: false, client_publish: false }) {
  const i = ++uid;
  const row = h(
    'div',
    { class: 'ns-row', role: 'group', 'aria-label': `Namespace ${ns.name === '' ? '(default)' : ns.name}` },
    field({ id: `ns-name-${i}`, label: 'Name', value: ns.name, hint: 'Empty: the default namespace.', attrs: { class: 'ns-name', spellcheck: 'false' } }),
    field({ id: `ns-size-${i}`, label: 'History size', type: 'number', value: ns.history_size ?? 0, attrs: { class: 'ns-size', min: 0, step: 1 } }),
    field({ id: `ns-ttl-${i}`, label: 'History TTL (s)', type: 'number', value: ns.history_ttl_s ?? 0, attrs: { class: 'ns-ttl', min: 0, step: 1 } }),
    checkbox({ id: `ns-presence-${i}`, label: 'Presence', checked: ns.presence }),
    checkbox({ id: `ns-publish-${i}`, label: 'Client publish', checked: ns.client_publish }),
    h('button', { type: 'button', class: 'link', 'aria-label': `Remove namespace ${ns.name === '' ? '(default)' : ns.name}`, onclick: () => row.remove() }, 'Remove'),
  );
  row.dataset.i = String(i);
  return row;
}

function settingsTab(view, app) {
  const rows = h('div', { id: 'ns-rows' }, app.namespaces.map((ns) => namespaceRow(ns)));
  const nsError = h('p', { class: 'error', id: 'app-namespaces-error' });
  const formError = h('p', { class: 'error', role: 'alert' });
  const saved = h('p', { role: 'status', class: 'ok' });
  const form = h(
    'form',
    { id: 'settings-form', novalidate: true, 'aria-labelledby': 'settings-title' },
    h('h2', { id: 'settings-title' }, 'Settings'),
    field({ id: 'app-name', label: 'Name', value: app.name, hint: 'Rename the app: letters, digits, space, _ - . (1 to 64).' }),
    field({ id: 'app-origins', label: 'Allowed Origins', multiline: true, value: app.allowed_origins.join('\n'), hint: 'One per line, like https://example.com. Empty allows any Origin.', attrs: { spellcheck: 'false' } }),
    field({ id: 'app-ttl', label: 'Max token TTL (seconds)', type: 'number', value: app.max_token_ttl_s, hint: 'Longest lifetime of connection tokens minted for this app.', attrs: { min: 1, step: 1 } }),
    h(
      'fieldset',
      { id: 'app-namespaces', 'aria-describedby': 'app-namespaces-hint app-namespaces-error' },
      h('legend', {}, 'Channel namespaces'),
      h('p', { class: 'hint', id: 'app-namespaces-hint' }, 'The part of a channel name before the first “:”. Channels of unlisted namespaces use the default namespace.'),
      rows,
      nsError,
      h('button', { type: 'button', class: 'secondary', onclick: () => rows.append(namespaceRow({ name: '', history_size: 100, history_ttl_s: 3600, presence: true, client_publish: true })) }, 'Add namespace'),
    ),
    formError,
    saved,
    h('div', { class: 'actions' }, h('button', { type: 'submit', id: 'save-settings' }, 'Save settings')),
  );
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    formError.textContent = '';
    saved.textContent = '';
    const ttlInput = $('app-ttl');
    const ttl = Number(ttlInput.value);
    if (!Number.isInteger(ttl)) return setFieldError(ttlInput, 'Enter a whole number of seconds.');
    const namespaces = [];
    for (const row of rows.querySelectorAll('.ns-row')) {
      const i = row.dataset.i;
      const size = Number($(`ns-size-${i}`).value);
      const hTtl = Number($(`ns-ttl-${i}`).value);
      if (!Number.isInteger(size) || size < 0) return setFieldError($(`ns-size-${i}`), 'Enter a whole number, 0 or more.');
      if (!Number.isInteger(hTtl) || hTtl < 0) return setFieldError($(`ns-ttl-${i}`), 'Enter a whole number of seconds, 0 or more.');
      namespaces.push({
        name: $(`ns-name-${i}`).value.trim(),
        history_size: size,
        history_ttl_s: hTtl,
        presence: $(`ns-presence-${i}`).checked,
        client_publish: $(`ns-publish-${i}`).checked,
      });
    }
    const body = {
      name: $('app-name').value.trim(),
      allowed_origins: $('app-origins').value.split(/\s+/).map((o) => o.trim()).filter(Boolean),
      max_token_ttl_s: ttl,
      namespaces,
    };
    try {
      const updated = await api('PATCH', `/v1/apps/${encodeURIComponent(app.id)}`, { body });
      Object.assign(app, updated);
      saved.textContent = `Saved at ${new Date().toLocaleTimeString()}. The data plane applies it at once.`;
      view.querySelector('h1').firstChild.textContent = `App ${updated.name} `;
    } catch (err) {
      // Namespace and history rules first: "history_ttl_s" also contains "ttl".
      if (err instanceof SessionEnded) return;
      if (/namespace|history/i.test(err.detail ?? '')) {
        nsError.textContent = describe(err);
        $('app-namespaces').querySelector('input')?.focus();
        return;
      }
      showProblem(
        err,
        [
          [/origin/i, $('app-origins')],
          [/max_token_ttl|token ttl/i, ttlInput],
          [/name|exists|unique/i, $('app-name')],
        ],
        formError,
      );
    }
  });

  const toggle = h('button', {
    type: 'button',
    id: 'toggle-enabled',
    class: app.enabled ? 'danger' : '',
    onclick: async () => {
      const enabling = !app.enabled;
      if (!enabling) {
        const ok = await confirmAction({
          title: `Disable ${app.name}?`,
          text: 'Its connections are closed at once and it accepts no new connections or publishes until you enable it again.',
          ok: 'Disable app',
        });
        if (!ok) return;
      }
      try {
        await api('PATCH', `/v1/apps/${encodeURIComponent(app.id)}`, { body: { enabled: enabling } });
        flash(`App ${app.name} ${enabling ? 'enabled' : 'disabled'}.`, 'ok');
        render();
      } catch (err) {
        if (!(err instanceof SessionEnded)) flash(describe(err));
      }
    },
  }, app.enabled ? 'Disable app' : 'Enable app');

  const del = h('button', {
    type: 'button',
    class: 'danger',
    id: 'delete-app',
    onclick: async () => {
      const ok = await confirmAction({
        title: `Delete ${app.name}?`,
        text: 'This deletes the app and all its API keys and closes its connections. It cannot be undone.',
        ok: 'Delete app',
        typed: app.name,
      });
      if (!ok) return;
      try {
        await api('DELETE', `/v1/apps/${encodeURIComponent(app.id)}`);
        setAppKey(app.id, null);
        flash(`App ${app.name} deleted.`, 'ok');
        navigate('#/apps');
      } catch (err) {
        if (!(err instanceof SessionEnded)) flash(describe(err));
      }
    },
  }, 'Delete app…');

  append(view, [
    h('section', {}, form),
    h(
      'section',
      { 'aria-labelledby': 'status-title' },
      h('h2', { id: 'status-title' }, 'Status'),
      h('p', {}, app.enabled ? 'The app is enabled: it accepts connections and publishes.' : 'The app is disabled: it accepts no connections or publishes.'),
      toggle,
      h('h3', {}, 'Danger zone'),
      del,
    ),
  ]);
}

// ---- API keys -----------------------------------------------------------------------------------

function capabilityRow(glob = '*', ops = OPERATIONS) {
  const i = ++uid;
  const row = h(
    'div',
    { class: 'cap-row', role: 'group', 'aria-label': 'Capability rule' },
    field({ id: `cap-glob-${i}`, label: 'Channel glob', value: glob, hint: '* matches any run of characters, e.g. chat:*', attrs: { spellcheck: 'false' } }),
    h('fieldset', {}, h('legend', {}, 'Operations'), OPERATIONS.map((op) => checkbox({ id: `cap-${op}-${i}`, label: op, checked: ops.includes(op) }))),
    h('button', { type: 'button', class: 'link', onclick: () => row.remove() }, 'Remove rule'),
  );
  row.dataset.i = String(i);
  return row;
}

function capsText(caps) {
  return Object.entries(caps ?? {})
    .map(([glob, ops]) => `${glob}: ${ops.join(', ')}`)
    .join('; ');
}

async function keysTab(view, app) {
  const keys = await listAll(`/v1/apps/${encodeURIComponent(app.id)}/keys`);
  const own = appKey(app.id);
  const secretSlot = h('div', { id: 'secret-slot' });
  const listError = h('p', { class: 'error', role: 'alert' });
  const keyRow = (k) =>
    h(
      'tr',
      { dataset: { keyId: k.id } },
      h('th', { scope: 'row' }, k.name, own?.id === k.id ? h('div', { class: 'hint' }, 'used by this console session') : null),
      h('td', { class: 'mono' }, k.id),
      h('td', {}, capsText(k.capabilities)),
      h('td', {}, fmtTime(k.created_at)),
      h('td', {}, fmtTime(k.last_used_at)),
      h('td', {}, k.revoked_at ? h('span', { class: 'badge off' }, 'revoked') : h('span', { class: 'badge on' }, 'active')),
      h(
        'td',
        {},
        k.revoked_at
          ? fmtTime(k.revoked_at)
          : h('button', {
              type: 'button',
              class: 'danger',
              'aria-label': `Revoke key ${k.name} (${k.id})`,
              onclick: async () => {
                const ok = await confirmAction({
                  title: `Revoke key ${k.name}?`,
                  text: 'It stops working at once: it mints no more tokens, and connections using tokens it minted are closed.',
                  ok: 'Revoke key',
                });
                if (!ok) return;
                try {
                  await api('DELETE', `/v1/apps/${encodeURIComponent(app.id)}/keys/${encodeURIComponent(k.id)}`);
                  if (own?.id === k.id) setAppKey(app.id, null);
                  flash(`Key ${k.name} revoked.`, 'ok');
                  render();
                } catch (err) {
                  if (!(err instanceof SessionEnded)) listError.textContent = describe(err);
                }
              },
            }, 'Revoke'),
      ),
    );
  const rows = keys.map(keyRow);
  const caps = h('div', { id: 'cap-rows' }, capabilityRow('*', OPERATIONS));
  const capsError = h('p', { class: 'error', id: 'caps-error' });
  const formError = h('p', { class: 'error', role: 'alert' });
  const form = h(
    'form',
    { id: 'new-key-form', novalidate: true, 'aria-labelledby': 'new-key-title' },
    h('h2', { id: 'new-key-title' }, 'New API key'),
    h('p', { class: 'hint' }, 'Your backend uses it to mint connection tokens and publish. Tokens can never do more than the key allows.'),
    field({ id: 'key-name', label: 'Name', required: true, hint: 'A label, e.g. backend: letters, digits, space, _ - . (1 to 64).' }),
    h('fieldset', { 'aria-describedby': 'caps-error' }, h('legend', {}, 'Capabilities'), caps, capsError, h('button', { type: 'button', class: 'secondary', onclick: () => caps.append(capabilityRow('', [])) }, 'Add rule')),
    formError,
    h('button', { type: 'submit', id: 'create-key' }, 'Create key'),
  );
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    formError.textContent = '';
    const name = $('key-name').value.trim();
    if (!name) return setFieldError($('key-name'), 'Enter a name.');
    const capabilities = {};
    for (const row of caps.querySelectorAll('.cap-row')) {
      const i = row.dataset.i;
      const glob = $(`cap-glob-${i}`).value.trim();
      const ops = OPERATIONS.filter((op) => $(`cap-${op}-${i}`).checked);
      if (!glob) return setFieldError($(`cap-glob-${i}`), 'Enter a channel glob, e.g. chat:* or *.');
      if (!ops.length) {
        capsError.textContent = `Choose at least one operation for ${glob}.`;
        return;
      }
      capabilities[glob] = [...new Set([...(capabilities[glob] ?? []), ...ops])];
    }
    if (!Object.keys(capabilities).length) {
      capsError.textContent = 'Add at least one capability rule.';
      return;
    }
    try {
      const created = await api('POST', `/v1/apps/${encodeURIComponent(app.id)}/keys`, { body: { name, capabilities } });
      $('key-name').value = '';
      caps.replaceChildren(capabilityRow('*', OPERATIONS));
      secretSlot.replaceChildren(
        secretPanel({
          title: `Your new API key “${created.key.name}”`,
          secret: created.secret,
          what: 'API keys',
          onDone: () => render(),
        }),
      );
      // Add the new key to the list without re-rendering the panel away.
      const tbody = view.querySelector('#keys-table tbody');
      if (!keys.length) tbody.replaceChildren();
      keys.push(created.key);
      tbody.append(keyRow(created.key));
    } catch (err) {
      showProblem(err, [[/name/i, $('key-name')], [/capabilit|glob|operation|channel/i, null]], formError);
      if (/capabilit|glob|operation|channel/i.test(err.detail ?? '')) {
        capsError.textContent = describe(err);
        formError.textContent = '';
      }
    }
  });
  append(view, [
    secretSlot,
    h(
      'section',
      { 'aria-labelledby': 'keys-title' },
      h('h2', { id: 'keys-title' }, 'API keys'),
      listError,
      h(
        'div',
        { class: 'table-wrap' },
        h(
          'table',
          { id: 'keys-table' },
          h('thead', {}, h('tr', {}, ['Name', 'Key id', 'Capabilities', 'Created', 'Last used', 'Status', 'Revoke'].map((c) => h('th', { scope: 'col' }, c)))),
          h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colspan: 7 }, 'No keys yet.'))),
        ),
      ),
      h('p', { class: 'hint' }, '“Last used” is accurate to about a minute.'),
    ),
    h('section', {}, form),
  ]);
}

// ---- live ---------------------------------------------------------------------------------------

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

async function liveTab(view, app) {
  let key;
  try {
    key = await ensureConsoleKey(app);
  } catch (err) {
    if (err instanceof SessionEnded) throw err;
    append(view, h('div', { class: 'panel' }, h('p', { class: 'error', role: 'alert' }, `The console could not create its API key for this app: ${describe(err)}`)));
    return;
  }
  const origin = location.origin;
  const originWarning =
    app.allowed_origins.length && !app.allowed_origins.includes('*') && !app.allowed_origins.includes(origin)
      ? h('p', { class: 'warn' }, `The app allows only ${app.allowed_origins.join(', ')}: the live tail from this page (${origin}) will be refused. Add ${origin} to its allowed Origins to use it.`)
      : null;

  // Active channels.
  const prefixField = field({ id: 'channels-prefix', label: 'Channel prefix', hint: 'Only channels whose name starts with this; empty lists all.', attrs: { spellcheck: 'false' } });
  const channelsBody = h('tbody', {});
  const channelsStatus = h('p', { class: 'hint', role: 'status' });
  const channelsError = h('p', { class: 'error', role: 'alert' });
  const loadChannels = async () => {
    try {
      const prefix = $('channels-prefix')?.value.trim() ?? '';
      const data = await appApi(app, 'GET', `/v1/apps/${encodeURIComponent(app.id)}/channels?prefix=${encodeURIComponent(prefix)}`);
      channelsError.textContent = '';
      const list = data.channels ?? [];
      channelsBody.replaceChildren(
        ...(list.length
          ? list.map((c) =>
              h(
                'tr',
                {},
                h('th', { scope: 'row', class: 'mono' }, c.channel),
                h('td', { class: 'num' }, fmtNumber(c.subscribers)),
                h(
                  'td',
                  {},
                  h('button', { type: 'button', class: 'link', onclick: () => { $('tail-channel').value = c.channel; startTail(); } }, `Tail ${c.channel}`),
                  h('button', { type: 'button', class: 'link', onclick: () => { $('presence-channel').value = c.channel; loadPresence(); } }, `Presence of ${c.channel}`),
                ),
              ),
            )
          : [h('tr', {}, h('td', { colspan: 3 }, 'No active channels (none has a subscriber on this node).'))]),
      );
      channelsStatus.textContent = `Updated ${new Date().toLocaleTimeString()}; refreshes every ${POLL_MS / 1000} s.`;
    } catch (err) {
      if (!(err instanceof SessionEnded)) channelsError.textContent = describe(err);
    }
  };
  const channelsForm = h('form', { novalidate: true, class: 'inline' }, prefixField, h('button', { type: 'submit' }, 'Filter'));
  channelsForm.addEventListener('submit', (event) => {
    event.preventDefault();
    loadChannels();
  });

  // Presence.
  const presenceList = h('ul', { id: 'presence-members' });
  const presenceError = h('p', { class: 'error', role: 'alert' });
  const loadPresence = async () => {
    const input = $('presence-channel');
    const channel = input.value.trim();
    setFieldError(input, '');
    presenceError.textContent = '';
    if (!channel) return setFieldError(input, 'Enter a channel name.');
    try {
      const data = await appApi(app, 'GET', `/v1/apps/${encodeURIComponent(app.id)}/channels/${encodeURIComponent(channel)}/presence`);
      const members = data.members ?? [];
      presenceList.replaceChildren(
        ...(members.length
          ? members.map((m) => h('li', {}, h('strong', {}, m.client_id), ' ', h('span', { class: 'hint mono' }, m.connection_id), m.data ? ` ${JSON.stringify(m.data)}` : ''))
          : [h('li', { class: 'muted' }, `Nobody is present on ${channel}.`)]),
      );
    } catch (err) {
      if (!(err instanceof SessionEnded)) showProblem(err, [[/channel|namespace/i, input]], presenceError);
    }
  };
  const presenceForm = h('form', { novalidate: true, class: 'inline' }, field({ id: 'presence-channel', label: 'Channel', attrs: { spellcheck: 'false' } }), h('button', { type: 'submit' }, 'Show members'));
  presenceForm.addEventListener('submit', (event) => {
    event.preventDefault();
    loadPresence();
  });

  // Tail.
  const tailList = h('ol', { class: 'tail', id: 'tail', 'aria-live': 'polite', 'aria-label': 'Messages received' });
  const tailState = h('p', { class: 'state', id: 'tail-state', role: 'status', dataset: { state: 'idle' } }, 'Not tailing.');
  const tailError = h('p', { class: 'error', role: 'alert', id: 'tail-error' });
  let client = null;
  const stopTail = () => {
    client?.close();
    client = null;
  };
  onCleanup(stopTail);
  const setTailState = (state, text) => {
    tailState.dataset.state = state;
    tailState.textContent = text;
  };
  async function startTail() {
    const input = $('tail-channel');
    const channel = input.value.trim();
    setFieldError(input, '');
    tailError.textContent = '';
    if (!channel) return setFieldError(input, 'Enter a channel name.');
    stopTail();
    tailList.replaceChildren();
    let Aviary;
    try {
      ({ Aviary } = await import('/console/aviary-client.js'));
    } catch {
      tailError.textContent = 'Could not load the realtime client (/console/aviary-client.js).';
      return;
    }
    const clientId = `console-${Math.random().toString(36).slice(2, 10)}`;
    const ttl = Math.max(1, Math.min(300, app.max_token_ttl_s || 300));
    const getToken = async () => {
      const issued = await appApi(app, 'POST', `/v1/apps/${encodeURIComponent(app.id)}/tokens`, {
        client_id: clientId,
        ttl_s: ttl,
        capabilities: { [channel]: ['subscribe'] },
      });
      return issued.token;
    };
    // Mint once up front so a refused key or channel shows as a message, not a retry loop.
    let first;
    try {
      first = await getToken();
    } catch (err) {
      if (!(err instanceof SessionEnded)) showProblem(err, [[/capabilit|channel|glob/i, input]], tailError);
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
    c.on('statechange', ({ current }) => {
      if (client !== c) return;
      if (current === 'connected') setTailState('connected', `Tailing ${channel} (connected as ${clientId}).`);
      else if (current === 'failed' || current === 'closed') return;
      else setTailState(current, `${current[0].toUpperCase()}${current.slice(1)}…`);
    });
    // 4010/4004/4003 need the admin's action: stop instead of letting the client retry with
    // tokens the console can no longer mint.
    c.on('disconnected', ({ reason }) => {
      if (client !== c || !['credentials_revoked', 'app_disabled', 'forbidden'].includes(reason?.code)) return;
      stopTail();
      setTailState('failed', `Disconnected: ${CLOSE_REASONS[reason.code]}${reason.closeCode ? ` (close code ${reason.closeCode})` : ''}.`);
    });
    c.on('failed', ({ reason }) => {
      if (client !== c) return;
      const why = CLOSE_REASONS[reason?.code] ?? reason?.message ?? 'unknown reason';
      setTailState('failed', `Disconnected: ${why}${reason?.closeCode ? ` (close code ${reason.closeCode})` : ''}.`);
    });
    c.on('error', (err) => {
      if (client === c) tailError.textContent = `Realtime client: ${err?.message ?? err}`;
    });
    const ch = c.channel(channel);
    try {
      await ch.subscribe((m) => {
        const at = new Date(m.ts || Date.now());
        tailList.append(
          h(
            'li',
            { dataset: { offset: m.offset } },
            h('span', { class: 'hint mono' }, `#${m.offset} `),
            h('time', { datetime: at.toISOString() }, at.toLocaleTimeString()),
            ' ',
            h('strong', {}, m.clientId ?? 'backend'),
            ' ',
            h('code', {}, JSON.stringify(m.data)),
          ),
        );
        while (tailList.children.length > TAIL_LIMIT) tailList.firstElementChild.remove();
        tailList.scrollTop = tailList.scrollHeight;
      });
    } catch (err) {
      if (client === c) tailError.textContent = `Could not subscribe to ${channel}: ${err?.message ?? err}`;
    }
  }
  const tailForm = h(
    'form',
    { novalidate: true, class: 'inline', id: 'tail-form' },
    field({ id: 'tail-channel', label: 'Channel', attrs: { spellcheck: 'false' } }),
    h('button', { type: 'submit', id: 'start-tail' }, 'Start tail'),
    h('button', { type: 'button', class: 'secondary', onclick: () => { stopTail(); setTailState('closed', 'Stopped.'); } }, 'Stop'),
  );
  tailForm.addEventListener('submit', (event) => {
    event.preventDefault();
    startTail();
  });

  // Send a test message.
  const sendError = h('p', { class: 'error', role: 'alert' });
  const sendResult = h('p', { class: 'ok', role: 'status', id: 'send-result' });
  const sendForm = h(
    'form',
    { novalidate: true, id: 'send-form' },
    field({ id: 'send-channel', label: 'Channel', attrs: { spellcheck: 'false' } }),
    field({ id: 'send-data', label: 'Message data (JSON)', multiline: true, value: '{"text": "hello from the console"}', attrs: { spellcheck: 'false' } }),
    sendError,
    sendResult,
    h('button', { type: 'submit', id: 'send-message' }, 'Send test message'),
  );
  sendForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(sendForm);
    sendError.textContent = '';
    sendResult.textContent = '';
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
      sendResult.textContent = `Published to ${channel} at offset ${pos.offset}.`;
      loadChannels();
    } catch (err) {
      if (!(err instanceof SessionEnded)) showProblem(err, [[/channel|namespace/i, channelInput], [/data|payload|large|bytes/i, dataInput]], sendError);
    }
  });

  append(view, [
    h('p', { class: 'muted' }, 'Live features use an API key named “console” (', h('code', {}, key.id), '), kept only in this tab and revoked when you sign out.'),
    originWarning,
    h('div', { class: 'grid2' },
      h('section', { 'aria-labelledby': 'channels-title' }, h('h2', { id: 'channels-title' }, 'Active channels'), channelsForm, channelsError,
        h('div', { class: 'table-wrap' }, h('table', { id: 'channels-table' }, h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Channel'), h('th', { scope: 'col', class: 'num' }, 'Subscribers'), h('th', { scope: 'col' }, 'Look'))), channelsBody)),
        channelsStatus),
      h('section', { 'aria-labelledby': 'presence-title' }, h('h2', { id: 'presence-title' }, 'Presence'), presenceForm, presenceError, presenceList),
    ),
    h('div', { class: 'grid2' },
      h('section', { 'aria-labelledby': 'tail-title' }, h('h2', { id: 'tail-title' }, 'Tail a channel'), h('p', { class: 'hint' }, 'Receives new messages through a 5-minute token the console mints for itself (refreshed while it runs).'), tailForm, tailState, tailError, tailList),
      h('section', { 'aria-labelledby': 'send-title' }, h('h2', { id: 'send-title' }, 'Send a test message'), h('p', { class: 'hint' }, 'Published over REST like your backend would (client id “backend”).'), sendForm),
    ),
  ]);
  loadChannels();
  // A render that was superseded while it awaited never shows its view: stop polling for it.
  const timer = setInterval(() => {
    if (!view.isConnected) return;
    if (document.visibilityState === 'visible') loadChannels();
  }, POLL_MS);
  onCleanup(() => clearInterval(timer));
}

// ---- usage --------------------------------------------------------------------------------------

/** Samples the usage API took while the Usage view was open (kept across view changes). */
const samples = [];

function lineChart({ title, series, unit }) {
  const W = 600;
  const H = 180;
  const pad = { l: 48, r: 12, t: 12, b: 24 };
  const points = samples.length;
  const max = Math.max(1, ...series.flatMap((sr) => sr.values));
  const x = (i) => pad.l + (points <= 1 ? 0 : (i / (points - 1)) * (W - pad.l - pad.r));
  const y = (v) => H - pad.b - (v / max) * (H - pad.t - pad.b);
  const last = series.map((sr) => `${sr.label} ${fmtNumber(sr.values.at(-1) ?? 0)}${unit}`).join(', ');
  const svg = s(
    'svg',
    { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `${title}. Latest: ${last}. Peak ${fmtNumber(max)}${unit}.` },
    s('line', { class: 'axis', x1: pad.l, y1: H - pad.b, x2: W - pad.r, y2: H - pad.b }),
    s('line', { class: 'axis', x1: pad.l, y1: pad.t, x2: pad.l, y2: H - pad.b }),
    s('text', { x: pad.l - 6, y: pad.t + 10, 'text-anchor': 'end' }, fmtNumber(max)),
    s('text', { x: pad.l - 6, y: H - pad.b, 'text-anchor': 'end' }, '0'),
    s('text', { x: pad.l, y: H - 6 }, samples[0] ? new Date(samples[0].at).toLocaleTimeString() : ''),
    s('text', { x: W - pad.r, y: H - 6, 'text-anchor': 'end' }, samples.at(-1) ? new Date(samples.at(-1).at).toLocaleTimeString() : ''),
  );
  series.forEach((sr, k) => {
    if (!sr.values.length) return;
    const d = sr.values.map((v, i) => `${i ? 'L' : 'M'}${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
    svg.append(s('path', { class: `s${k + 1}`, d }));
  });
  return h('figure', {}, h('figcaption', {}, h('strong', {}, title)), svg, h('ul', { class: 'legend' }, series.map((sr, k) => h('li', { class: `k${k + 1}` }, `${sr.label}: ${fmtNumber(sr.values.at(-1) ?? 0)}${unit}`))));
}

function barChart({ title, rows, keys }) {
  const W = 600;
  const rowH = 28;
  const labelW = 140;
  const H = Math.max(1, rows.length) * rowH * keys.length + 8;
  const max = Math.max(1, ...rows.flatMap((r) => keys.map(([k]) => r[k] ?? 0)));
  const svg = s('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `${title}: ${rows.map((r) => `${r.label} ${keys.map(([k, l]) => `${l} ${fmtNumber(r[k])}`).join(', ')}`).join('; ')}` });
  rows.forEach((r, i) => {
    keys.forEach(([k], j) => {
      const top = (i * keys.length + j) * rowH + 4;
      const w = ((r[k] ?? 0) / max) * (W - labelW - 70);
      if (j === 0) svg.append(s('text', { x: 0, y: top + 16 }, r.label.length > 18 ? `${r.label.slice(0, 17)}…` : r.label));
      svg.append(s('rect', { class: `b${j + 1}`, x: labelW, y: top + 4, width: Math.max(w, 1), height: rowH - 10 }));
      svg.append(s('text', { x: labelW + Math.max(w, 1) + 6, y: top + 16 }, fmtNumber(r[k] ?? 0)));
    });
  });
  return h('figure', {}, h('figcaption', {}, h('strong', {}, title)), svg, h('ul', { class: 'legend' }, keys.map(([, l], k) => h('li', { class: `k${k + 1}` }, l))));
}

async function usageView(view, session) {
  const tid = encodeURIComponent(session.tenantId);
  const [tenant, apps, first] = await Promise.all([
    api('GET', `/v1/tenants/${tid}`),
    listAll(`/v1/tenants/${tid}/apps`),
    api('GET', `/v1/tenants/${tid}/usage`),
  ]);
  const names = new Map(apps.map((a) => [a.id, a.name]));
  const body = h('div', { id: 'usage-body' });
  const status = h('p', { class: 'hint', role: 'status', id: 'usage-status' });
  const error = h('p', { class: 'error', role: 'alert' });
  if (samples.length && samples[0].tenant !== session.tenantId) samples.length = 0;

  const draw = (usage) => {
    samples.push({ at: Date.now(), tenant: session.tenantId, totals: usage.totals });
    while (samples.length > MAX_SAMPLES) samples.shift();
    const rate = (k) =>
      samples.map((sm, i) => {
        if (i === 0) return 0;
        const dt = (sm.at - samples[i - 1].at) / 1000;
        return dt > 0 ? Math.max(0, Math.round((sm.totals[k] - samples[i - 1].totals[k]) / dt)) : 0;
      });
    const t = usage.totals;
    const q = tenant.quotas ?? {};
    const pubRate = rate('messages_published').at(-1) ?? 0;
    const allZero = Object.values(t).every((v) => !v);
    const quotaRow = (label, used, max) =>
      h('tr', {}, h('th', { scope: 'row' }, label), h('td', { class: 'num' }, fmtNumber(used)), h('td', { class: 'num' }, fmtNumber(max)),
        h('td', {}, h('meter', { min: 0, max: Math.max(1, max), value: Math.min(used, max), 'aria-label': `${label}: ${fmtNumber(used)} of ${fmtNumber(max)}` })));
    body.replaceChildren(
      allZero
        ? h('p', { class: 'warn', id: 'usage-zero' }, 'Every figure is zero: there has been no traffic since the node started, or this server does not report usage yet (metering not enabled).')
        : null,
      h('div', { class: 'grid2' },
        h('section', { 'aria-labelledby': 'quota-use-title' }, h('h2', { id: 'quota-use-title' }, 'Quota use'),
          h('table', { id: 'quota-table' },
            h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Limit'), h('th', { scope: 'col', class: 'num' }, 'Used'), h('th', { scope: 'col', class: 'num' }, 'Quota'), h('th', { scope: 'col' }, ''))),
            h('tbody', {},
              quotaRow('Concurrent connections', t.connections, q.max_connections ?? 0),
              quotaRow('Messages per second (measured here)', pubRate, q.max_messages_per_s ?? 0))),
          h('p', { class: 'hint' }, `Other limits: messages up to ${fmtBytes(q.max_message_bytes)}, ${fmtNumber(q.max_subscriptions_per_connection)} subscriptions per connection, ${fmtNumber(q.max_presence_members)} presence members per channel.`)),
        h('section', { class: 'wide', 'aria-labelledby': 'now-title' }, h('h2', { id: 'now-title' }, 'Right now'),
          h('div', { class: 'table-wrap' }, h('table', { id: 'usage-table' },
            h('thead', {}, h('tr', {}, ['App', 'Connections', 'Subscriptions', 'Published', 'Delivered', 'Bytes'].map((c, i) => h('th', { scope: 'col', class: i ? 'num' : undefined }, c)))),
            h('tbody', {},
              usage.apps.map((a) => h('tr', {}, h('th', { scope: 'row' }, names.get(a.app_id) ?? a.app_id),
                ['connections', 'subscriptions', 'messages_published', 'messages_delivered'].map((k) => h('td', { class: 'num' }, fmtNumber(a[k]))), h('td', { class: 'num' }, fmtBytes(a.bytes_published)))),
              h('tr', {}, h('th', { scope: 'row' }, 'Total'),
                ['connections', 'subscriptions', 'messages_published', 'messages_delivered'].map((k) => h('td', { class: 'num', dataset: { total: k } }, fmtNumber(t[k]))), h('td', { class: 'num' }, fmtBytes(t.bytes_published)))))),
          h('p', { class: 'hint' }, 'Published, delivered and bytes count since the node started.'))),
      h('div', { class: 'grid2' },
        h('section', {}, lineChart({ title: 'Connections and subscriptions', unit: '', series: [
          { label: 'Connections', values: samples.map((sm) => sm.totals.connections) },
          { label: 'Subscriptions', values: samples.map((sm) => sm.totals.subscriptions) },
        ] })),
        h('section', {}, lineChart({ title: 'Messages per second', unit: '/s', series: [
          { label: 'Published', values: rate('messages_published') },
          { label: 'Delivered', values: rate('messages_delivered') },
        ] }))),
      h('section', {}, barChart({
        title: 'Messages per app since the node started',
        rows: usage.apps.map((a) => ({ label: names.get(a.app_id) ?? a.app_id, ...a })),
        keys: [['messages_published', 'Published'], ['messages_delivered', 'Delivered']],
      })),
    );
    status.textContent = `Sampled ${samples.length} time${samples.length === 1 ? '' : 's'}; last at ${new Date().toLocaleTimeString()}.`;
  };
  draw(first);
  const timer = setInterval(async () => {
    if (!view.isConnected || document.visibilityState !== 'visible') return;
    try {
      draw(await api('GET', `/v1/tenants/${tid}/usage`));
      error.textContent = '';
    } catch (err) {
      if (!(err instanceof SessionEnded)) error.textContent = `Could not refresh usage: ${describe(err)}`;
    }
  }, POLL_MS);
  onCleanup(() => clearInterval(timer));
  append(view, [
    h('h1', {}, `Usage of ${tenant.name}`),
    h('p', { class: 'muted' },
      `The usage API reports current counters only; Aviary keeps no usage history yet, so there are no 24-hour or 30-day views. ` +
        `The line charts plot what this page sampled, every ${POLL_MS / 1000} s while it is open.`),
    status,
    error,
    body,
  ]);
}

// ---- boot ---------------------------------------------------------------------------------------

window.addEventListener('error', (event) => flash(`Something went wrong in the console: ${event.message}. Reload the page to continue.`));
window.addEventListener('unhandledrejection', (event) => {
  if (event.reason instanceof SessionEnded) return;
  flash(`Something went wrong in the console: ${describe(event.reason)}.`);
});
// Following a link to the page already shown reloads it (e.g. the Live tab after its key was revoked).
document.addEventListener('click', (event) => {
  const link = event.target instanceof Element ? event.target.closest('a[href^="#/"]') : null;
  if (link && link.getAttribute('href') === location.hash && !event.defaultPrevented) render();
});
// A new attempt makes an earlier banner stale (its form shows its own outcome).
document.addEventListener('submit', () => flash(''), true);
window.addEventListener('hashchange', () => {
  // A message shown just before navigating is about the new view; an older one is stale.
  if (!flashKeep) flash('');
  flashKeep = false;
  render();
});
$('sign-out').addEventListener('click', () => signOut());
render();
