// The Webhooks tab of an app: its endpoints (create with the secret shown once, delete), a test
// event per endpoint with its outcome, and each endpoint's recent delivery attempts. Everything
// goes through the control plane's REST API (/v1/apps/{app}/webhooks...), as a backend would.
import { $, h, append, field, checkbox, clearErrors, setFieldError, fmtNumber, flash, confirmAction, secretPanel } from './dom.js';
import { api, listAll, describe, showProblem, SessionEnded } from './api.js';

/** Event names, as the API (and Pusher) names them; message_published is opt-in. */
const EVENTS = ['channel_occupied', 'channel_vacated', 'member_added', 'member_removed', 'client_event', 'message_published'];

function fmtMs(ms) {
  const at = new Date(ms);
  return h('time', { datetime: at.toISOString(), title: at.toISOString() }, at.toLocaleString());
}

/** One attempt as a table row: time, events, HTTP status, latency, error. */
function attemptRow(a) {
  const ok = !a.error;
  const names = [...new Set(a.events.map((e) => e.name))].join(', ');
  return h(
    'tr',
    { class: 'attempt' },
    h('td', {}, fmtMs(a.time_ms)),
    h('td', {}, a.test ? h('span', { class: 'badge' }, 'test') : null, ` ${fmtNumber(a.events.length)} × ${names}`),
    h('td', {}, h('span', { class: `badge ${ok ? 'on' : 'off'}` }, a.status ?? 'no answer')),
    h('td', {}, `${fmtNumber(a.latency_ms)} ms`),
    h('td', {}, a.error ?? ''),
  );
}

/** The deliveries panel of one endpoint (loaded on demand). */
async function showDeliveries(app, hook, slot) {
  slot.replaceChildren(h('p', { class: 'muted' }, 'Loading deliveries…'));
  try {
    const { attempts } = await api('GET', `/v1/apps/${encodeURIComponent(app.id)}/webhooks/${encodeURIComponent(hook.id)}/deliveries`);
    slot.replaceChildren(
      h('h3', {}, `Recent deliveries of ${hook.url}`),
      h(
        'div',
        { class: 'table-wrap' },
        h(
          'table',
          { class: 'deliveries', 'aria-label': `Recent deliveries of ${hook.url}` },
          h('thead', {}, h('tr', {}, ['Time', 'Events', 'Status', 'Latency', 'Error'].map((c) => h('th', { scope: 'col' }, c)))),
          h('tbody', {}, attempts.length ? attempts.map(attemptRow) : h('tr', {}, h('td', { colspan: 5 }, 'No attempts yet.'))),
        ),
      ),
      h('p', { class: 'hint' }, 'The last 50 attempts from every node, newest first.'),
    );
  } catch (err) {
    if (!(err instanceof SessionEnded)) slot.replaceChildren(h('p', { class: 'error', role: 'alert' }, describe(err)));
  }
}

export async function webhooksTab(view, app, render) {
  const base = `/v1/apps/${encodeURIComponent(app.id)}/webhooks`;
  const hooks = await listAll(base);
  const secretSlot = h('div', { id: 'webhook-secret-slot' });
  const detail = h('section', { id: 'webhook-detail', 'aria-live': 'polite' });
  const listError = h('p', { class: 'error', role: 'alert' });
  const hookRow = (hook) =>
    h(
      'tr',
      { dataset: { webhookId: hook.id } },
      h('th', { scope: 'row', class: 'mono' }, hook.url),
      h('td', {}, hook.events.join(', ')),
      h('td', { class: 'mono' }, hook.channels ?? '*'),
      h('td', {}, hook.format),
      h(
        'td',
        { class: 'actions' },
        h('button', {
          type: 'button',
          class: 'secondary',
          'aria-label': `Send a test event to ${hook.url}`,
          onclick: async () => {
            listError.textContent = '';
            try {
              const a = await api('POST', `${base}/${encodeURIComponent(hook.id)}/test`);
              if (a.error) flash(`Test to ${hook.url} failed: ${a.error}.`);
              else flash(`Test delivered to ${hook.url}: HTTP ${a.status} in ${a.latency_ms} ms.`, 'ok');
              await showDeliveries(app, hook, detail);
            } catch (err) {
              if (!(err instanceof SessionEnded)) listError.textContent = describe(err);
            }
          },
        }, 'Test'),
        h('button', {
          type: 'button',
          class: 'secondary',
          'aria-label': `Show deliveries of ${hook.url}`,
          onclick: () => showDeliveries(app, hook, detail),
        }, 'Deliveries'),
        h('button', {
          type: 'button',
          class: 'danger',
          'aria-label': `Delete webhook ${hook.url}`,
          onclick: async () => {
            const ok = await confirmAction({
              title: 'Delete this webhook?',
              text: `${hook.url} gets no more events; events queued for it are dropped.`,
              ok: 'Delete webhook',
            });
            if (!ok) return;
            try {
              await api('DELETE', `${base}/${encodeURIComponent(hook.id)}`);
              flash('Webhook deleted.', 'ok');
              render();
            } catch (err) {
              if (!(err instanceof SessionEnded)) listError.textContent = describe(err);
            }
          },
        }, 'Delete'),
      ),
    );

  const eventsError = h('p', { class: 'error', id: 'webhook-events-error' });
  const formError = h('p', { class: 'error', role: 'alert' });
  const form = h(
    'form',
    { id: 'new-webhook-form', novalidate: true, 'aria-labelledby': 'new-webhook-title' },
    h('h2', { id: 'new-webhook-title' }, 'New webhook'),
    h('p', { class: 'hint' }, 'Your backend hears what happens in this app’s channels. Deliveries are signed; verify them with the secret shown once.'),
    field({ id: 'webhook-url', label: 'URL', type: 'url', required: true, hint: 'http or https, e.g. https://api.example.com/aviary-hooks.' }),
    h(
      'fieldset',
      { 'aria-describedby': 'webhook-events-error' },
      h('legend', {}, 'Events'),
      EVENTS.map((e) => checkbox({ id: `webhook-event-${e}`, label: e, checked: e !== 'message_published' })),
      eventsError,
    ),
    field({ id: 'webhook-channels', label: 'Channels (optional)', hint: 'A glob such as chat:*; empty for every channel.' }),
    h(
      'div',
      { class: 'field' },
      h('label', { for: 'webhook-format' }, 'Format'),
      h('select', { id: 'webhook-format' }, h('option', { value: 'aviary' }, 'aviary'), h('option', { value: 'pusher' }, 'pusher')),
    ),
    formError,
    h('button', { type: 'submit', id: 'create-webhook' }, 'Create webhook'),
  );
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    formError.textContent = '';
    eventsError.textContent = '';
    const url = $('webhook-url').value.trim();
    if (!url) return setFieldError($('webhook-url'), 'Enter the URL events are sent to.');
    const events = EVENTS.filter((e) => $(`webhook-event-${e}`).checked);
    if (!events.length) {
      eventsError.textContent = 'Choose at least one event.';
      return;
    }
    const channels = $('webhook-channels').value.trim();
    const body = { url, events, format: $('webhook-format').value };
    if (channels) body.channels = channels;
    try {
      const created = await api('POST', base, { body });
      form.reset();
      secretSlot.replaceChildren(
        secretPanel({ title: `Signing secret of ${created.url}`, secret: created.secret, what: 'webhook secrets', onDone: () => render() }),
      );
      const tbody = view.querySelector('#webhooks-table tbody');
      if (!hooks.length) tbody.replaceChildren();
      hooks.push(created);
      tbody.append(hookRow(created));
    } catch (err) {
      if (err instanceof SessionEnded) return;
      if (/event/i.test(err.detail ?? '')) eventsError.textContent = describe(err);
      else showProblem(err, [[/url/i, $('webhook-url')], [/channels/i, $('webhook-channels')]], formError);
    }
  });

  append(view, [
    secretSlot,
    h(
      'section',
      { 'aria-labelledby': 'webhooks-title' },
      h('h2', { id: 'webhooks-title' }, 'Webhooks'),
      listError,
      h(
        'div',
        { class: 'table-wrap' },
        h(
          'table',
          { id: 'webhooks-table' },
          h('thead', {}, h('tr', {}, ['URL', 'Events', 'Channels', 'Format', 'Actions'].map((c) => h('th', { scope: 'col' }, c)))),
          h('tbody', {}, hooks.length ? hooks.map(hookRow) : h('tr', {}, h('td', { colspan: 5 }, 'No webhooks yet.'))),
        ),
      ),
    ),
    detail,
    h('section', {}, form),
  ]);
}
