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
//
// Modules (plain ES modules, no build step): dom.js (elements, fields, banner, dialogs),
// api.js (credentials and REST calls), live.js (the Live tab), usage.js (the Usage view),
// webhooks.js (the Webhooks tab); this
// file routes between views and renders sign-in, tenants, apps, settings and API keys.

import {
  ApiError, OPERATIONS, SessionEnded, api, appKey, consoleKeys, describe, lastTenantId, listAll, loadSession,
  saveSession, setAppKey, showProblem,
} from './api.js';
import {
  $, append, checkbox, clearErrors, clearStaleFlash, confirmAction, field, flash, fmtNumber, fmtTime, h, nextId, secretPanel, setFieldError,
} from './dom.js';
import { liveTab } from './live.js';
import { usageView } from './usage.js';
import { webhooksTab } from './webhooks.js';

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
      await usageView(view, session, onCleanup, parts[1]);
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

/** The operator's list of tenants over a quota in recent hours, or null where the server has none. */
async function overQuota() {
  try {
    return await api('GET', '/v1/tenants/over-quota');
  } catch (err) {
    if (err instanceof ApiError && (err.status === 404 || err.status === 405)) return null; // server without metering
    throw err;
  }
}

function overQuotaSection(list) {
  if (!list) return null;
  return h(
    'section',
    { 'aria-labelledby': 'over-quota-title' },
    h('h2', { id: 'over-quota-title' }, 'Over quota in recent hours'),
    list.length
      ? h(
          'div',
          { class: 'table-wrap' },
          h(
            'table',
            { id: 'over-quota-table' },
            h('thead', {}, h('tr', {}, ['Tenant', 'Hour', 'Peak connections', 'Messages / s', 'Exceeded'].map((c) => h('th', { scope: 'col' }, c)))),
            h(
              'tbody',
              {},
              list.map((o) =>
                h(
                  'tr',
                  {},
                  h('th', { scope: 'row' }, o.name, h('div', { class: 'hint mono' }, o.tenant_id)),
                  h('td', {}, fmtTime(o.hour_start)),
                  h('td', { class: 'num' }, `${fmtNumber(o.peak_connections)} of ${fmtNumber(o.max_connections)}`),
                  h('td', { class: 'num' }, `${Number(o.messages_per_s ?? 0).toFixed(1)} of ${fmtNumber(o.max_messages_per_s)}`),
                  h('td', {}, (o.exceeded ?? []).join(', ')),
                ),
              ),
            ),
          ),
        )
      : h('p', { class: 'muted', id: 'over-quota-none' }, 'No tenant went over its quotas recently.'),
  );
}

async function tenantsView(view, session) {
  const [tenants, over] = await Promise.all([listAll('/v1/tenants'), overQuota()]);
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
    overQuotaSection(over),
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
    ['webhooks', 'Webhooks'],
  ];
  append(view, [
    h('p', {}, h('a', { href: '#/apps' }, '← All apps')),
    h('h1', {}, `App ${app.name} `, h('span', { class: `badge ${app.enabled ? 'on' : 'off'}` }, app.enabled ? 'enabled' : 'disabled')),
    h('p', { class: 'muted' }, 'App id ', h('code', {}, app.id)),
    h('nav', { class: 'tabs', 'aria-label': 'App sections' }, tabs.map(([t, label]) => h('a', { href: `${base}/${t}`, 'aria-current': t === tab ? 'page' : undefined }, label))),
  ]);
  if (tab === 'keys') await keysTab(view, app);
  else if (tab === 'live') await liveTab(view, app, onCleanup);
  else if (tab === 'webhooks') await webhooksTab(view, app, render);
  else settingsTab(view, app);
}

// ---- app settings -------------------------------------------------------------------------------

function namespaceRow(ns = { name: '', history_size: 0, history_ttl_s: 0, presence: false, client_publish: false }) {
  const i = nextId();
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
  append(view, [
    h('section', {}, settingsForm(view, app)),
    h(
      'section',
      { 'aria-labelledby': 'status-title' },
      h('h2', { id: 'status-title' }, 'Status'),
      h('p', {}, app.enabled ? 'The app is enabled: it accepts connections and publishes.' : 'The app is disabled: it accepts no connections or publishes.'),
      enableToggle(app),
      h('h3', {}, 'Danger zone'),
      deleteAppButton(app),
    ),
  ]);
}

/** The app's settings form: name, allowed Origins, token TTL and channel namespaces. */
function settingsForm(view, app) {
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
    const namespaces = readNamespaces(rows);
    if (!namespaces) return;
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
  return form;
}

/** The namespace rows as the API takes them, or `null` after marking the first invalid field. */
function readNamespaces(rows) {
  const namespaces = [];
  for (const row of rows.querySelectorAll('.ns-row')) {
    const i = row.dataset.i;
    const size = Number($(`ns-size-${i}`).value);
    const hTtl = Number($(`ns-ttl-${i}`).value);
    if (!Number.isInteger(size) || size < 0) {
      setFieldError($(`ns-size-${i}`), 'Enter a whole number, 0 or more.');
      return null;
    }
    if (!Number.isInteger(hTtl) || hTtl < 0) {
      setFieldError($(`ns-ttl-${i}`), 'Enter a whole number of seconds, 0 or more.');
      return null;
    }
    namespaces.push({
      name: $(`ns-name-${i}`).value.trim(),
      history_size: size,
      history_ttl_s: hTtl,
      presence: $(`ns-presence-${i}`).checked,
      client_publish: $(`ns-publish-${i}`).checked,
    });
  }
  return namespaces;
}

/** Enables or disables the app (disabling asks first: it closes the app's connections). */
function enableToggle(app) {
  return h('button', {
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
}

/** Deletes the app after the admin typed its name. */
function deleteAppButton(app) {
  return h('button', {
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
}

// ---- API keys -----------------------------------------------------------------------------------

function capabilityRow(glob = '*', ops = OPERATIONS) {
  const i = nextId();
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
  const listError = h('p', { class: 'error', role: 'alert' });
  const keyRow = keyRowOf(app, listError);
  const secretSlot = h('div', { id: 'secret-slot' });
  // A created key joins the list without re-rendering its secret panel away.
  const onCreated = (created) => {
    secretSlot.replaceChildren(
      secretPanel({
        title: `Your new API key “${created.key.name}”`,
        secret: created.secret,
        what: 'API keys',
        onDone: () => render(),
      }),
    );
    const tbody = view.querySelector('#keys-table tbody');
    if (!keys.length) tbody.replaceChildren();
    keys.push(created.key);
    tbody.append(keyRow(created.key));
  };
  const rows = keys.map(keyRow);
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
    h('section', {}, newKeyForm(app, onCreated)),
  ]);
}

/** Returns `keyRow(key)`: a key's table row, with its revoke button (errors go to `listError`). */
function keyRowOf(app, listError) {
  const own = appKey(app.id);
  return (k) =>
    h(
      'tr',
      { dataset: { keyId: k.id } },
      h('th', { scope: 'row' }, k.name, own?.id === k.id ? h('div', { class: 'hint' }, 'used by this console session') : null),
      h('td', { class: 'mono' }, k.id),
      h('td', {}, capsText(k.capabilities)),
      h('td', {}, fmtTime(k.created_at)),
      h('td', {}, fmtTime(k.last_used_at)),
      h('td', {}, k.revoked_at ? h('span', { class: 'badge off' }, 'revoked') : h('span', { class: 'badge on' }, 'active')),
      h('td', {}, k.revoked_at ? fmtTime(k.revoked_at) : revokeKeyButton(app, k, own, listError)),
    );
}

/** Revokes key `k` after asking (forgetting it if it is the console's own). */
function revokeKeyButton(app, k, own, listError) {
  return h('button', {
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
  }, 'Revoke');
}

/** The new-key form: a name and capability rules; `onCreated(created)` gets the API's answer. */
function newKeyForm(app, onCreated) {
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
    const capabilities = readCapabilities(caps, capsError);
    if (!capabilities) return;
    try {
      const created = await api('POST', `/v1/apps/${encodeURIComponent(app.id)}/keys`, { body: { name, capabilities } });
      $('key-name').value = '';
      caps.replaceChildren(capabilityRow('*', OPERATIONS));
      onCreated(created);
    } catch (err) {
      if (err instanceof SessionEnded) return;
      // Capability problems belong to the editor as a whole; test them before "name".
      if (/capabilit|glob|operation|channel/i.test(err.detail ?? '')) capsError.textContent = describe(err);
      else showProblem(err, [[/name/i, $('key-name')]], formError);
    }
  });
  return form;
}

/** The capability rules as the API takes them, or `null` after saying what is missing. */
function readCapabilities(caps, capsError) {
  const capabilities = {};
  for (const row of caps.querySelectorAll('.cap-row')) {
    const i = row.dataset.i;
    const glob = $(`cap-glob-${i}`).value.trim();
    const ops = OPERATIONS.filter((op) => $(`cap-${op}-${i}`).checked);
    if (!glob) {
      setFieldError($(`cap-glob-${i}`), 'Enter a channel glob, e.g. chat:* or *.');
      return null;
    }
    if (!ops.length) {
      capsError.textContent = `Choose at least one operation for ${glob}.`;
      return null;
    }
    capabilities[glob] = [...new Set([...(capabilities[glob] ?? []), ...ops])];
  }
  if (!Object.keys(capabilities).length) {
    capsError.textContent = 'Add at least one capability rule.';
    return null;
  }
  return capabilities;
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
  clearStaleFlash();
  render();
});
window.addEventListener('aviary:session-ended', () => render());
$('sign-out').addEventListener('click', () => signOut());
render();
