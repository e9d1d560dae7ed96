// DOM building blocks of the console: elements, labelled fields with error slots, the banner,
// the confirmation dialog and the shown-once secret panel. Text always goes through
// textContent, never innerHTML.

export const $ = (id) => document.getElementById(id);

// ---- DOM helpers --------------------------------------------------------------------------------

/** h('button', { type: 'button', onclick }, 'Save'): attributes, `on*` listeners, children. */
export function h(tag, attrs = {}, ...children) {
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

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export const SVG_NS = 'http://www.w3.org/2000/svg';
export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, String(value));
  for (const child of children) el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return el;
}

let uid = 0;
/** A page-unique number for element ids. */
export const nextId = () => ++uid;
/** A labelled input with its hint and error slot, wired with aria-describedby. */
export function field({ id, label, type = 'text', value, hint, required, attrs = {}, multiline = false }) {
  id ??= `f${nextId()}`;
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

export function checkbox({ id, label, checked, hint }) {
  id ??= `f${nextId()}`;
  return h(
    'label',
    { class: 'check', for: id },
    h('input', { id, type: 'checkbox', checked, 'aria-describedby': hint ? `${id}-hint` : undefined }),
    label,
  );
}

export function setFieldError(control, message) {
  const slot = document.getElementById(`${control.id}-error`);
  if (slot) slot.textContent = message ?? '';
  if (message) control.setAttribute('aria-invalid', 'true');
  else control.removeAttribute('aria-invalid');
}

export function clearErrors(form) {
  for (const el of form.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
  for (const el of form.querySelectorAll('.error')) el.textContent = '';
}

export function fmtTime(iso) {
  if (!iso) return h('span', { class: 'muted' }, 'never');
  const at = new Date(iso);
  return h('time', { datetime: at.toISOString(), title: at.toISOString() }, at.toLocaleString());
}

export function fmtNumber(n) {
  return Number(n ?? 0).toLocaleString();
}

export function fmtBytes(n) {
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

export function flash(message, kind = 'error') {
  flashKeep = Boolean(message);
  const el = $('flash');
  el.textContent = message ?? '';
  el.dataset.kind = kind;
  el.hidden = !message;
}

// ---- confirmation dialog ------------------------------------------------------------------------

/** Resolves true when the user confirms; `typed` demands typing that exact text first. */
export function confirmAction({ title, text, ok = 'Confirm', typed }) {
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

export function secretPanel({ title, secret, what, onDone }) {
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

/** Called on navigation: a message shown just before navigating is about the new view; an older one is stale. */
export function clearStaleFlash() {
  if (!flashKeep) flash('');
  flashKeep = false;
}
