// The Usage view: per-app usage over the last 24 hours (hourly) or 30 days (daily) from
// GET /v1/tenants/{id}/usage, the tenant's quota use, and inline-SVG charts. No chart library:
// each chart is a few SVG elements with a text alternative, and the table holds every figure.
//
// Periods without usage are absent from the API's series; the charts fill them with zeros so
// the time axis stays honest. A server that predates metering answers current counters only
// (no `granularity`); the view then shows those figures and says so.
import { SessionEnded, api, describe, listAll } from './api.js';
import { append, fmtBytes, fmtNumber, h, s } from './dom.js';

const REFRESH_MS = 10_000;
const RANGES = {
  '24h': { label: 'Last 24 hours', granularity: 'hour', stepMs: 3_600_000, periods: 24 },
  '30d': { label: 'Last 30 days', granularity: 'day', stepMs: 86_400_000, periods: 30 },
};
const FIGURES = [
  ['messages_published', 'Published', fmtNumber],
  ['messages_delivered', 'Delivered', fmtNumber],
  ['bytes_in', 'Bytes in', fmtBytes],
  ['bytes_out', 'Bytes out', fmtBytes],
  ['connection_minutes', 'Connection minutes', (n) => fmtNumber(Math.round(n ?? 0))],
  ['peak_connections', 'Peak connections', fmtNumber],
];

// ---- charts -------------------------------------------------------------------------------------

function axisLabel(ms, range) {
  const at = new Date(ms);
  return range.granularity === 'hour'
    ? at.toLocaleString([], { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' })
    : at.toLocaleDateString([], { month: 'short', day: 'numeric' });
}

/** A line chart of `series` (arrays of equal length, one value per period starting at `starts`). */
function lineChart({ id, title, starts, series, format, range, peak = false }) {
  const W = 600;
  const H = 190;
  const pad = { l: 56, r: 12, t: 12, b: 26 };
  const n = starts.length;
  const max = Math.max(1, ...series.flatMap((sr) => sr.values));
  const x = (i) => pad.l + (n <= 1 ? 0 : (i / (n - 1)) * (W - pad.l - pad.r));
  const y = (v) => H - pad.b - (v / max) * (H - pad.t - pad.b);
  const summary = series
    .map((sr) =>
      peak
        ? `${sr.label}: highest period ${format(Math.max(0, ...sr.values))}`
        : `${sr.label}: total ${format(sr.values.reduce((a, b) => a + b, 0))}, highest period ${format(Math.max(0, ...sr.values))}`,
    )
    .join('; ');
  const svg = s(
    'svg',
    { id, class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `${title}, ${range.label.toLowerCase()}. ${summary}.` },
    s('line', { class: 'axis', x1: pad.l, y1: H - pad.b, x2: W - pad.r, y2: H - pad.b }),
    s('line', { class: 'axis', x1: pad.l, y1: pad.t, x2: pad.l, y2: H - pad.b }),
    s('text', { x: pad.l - 6, y: pad.t + 10, 'text-anchor': 'end' }, format(max)),
    s('text', { x: pad.l - 6, y: H - pad.b, 'text-anchor': 'end' }, '0'),
    s('text', { x: pad.l, y: H - 8 }, n ? axisLabel(starts[0], range) : ''),
    s('text', { x: W - pad.r, y: H - 8, 'text-anchor': 'end' }, n ? axisLabel(starts[n - 1], range) : ''),
  );
  series.forEach((sr, k) => {
    const d = sr.values.map((v, i) => `${i ? 'L' : 'M'}${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
    if (d) svg.append(s('path', { class: `s${k + 1}`, d }));
  });
  return h(
    'figure',
    {},
    h('figcaption', {}, h('strong', {}, title)),
    svg,
    h(
      'ul',
      { class: 'legend' },
      // Peaks do not add up over periods: their legend gives the highest one instead of a sum.
      series.map((sr, k) =>
        h('li', { class: `k${k + 1}` }, peak ? `${sr.label}: ${format(Math.max(0, ...sr.values))} at most` : `${sr.label}: ${format(sr.values.reduce((a, b) => a + b, 0))} in total`),
      ),
    ),
  );
}

/** Horizontal bars: one group per row, one bar per key. */
function barChart({ id, title, rows, keys }) {
  const W = 600;
  const rowH = 26;
  const labelW = 150;
  const H = Math.max(1, rows.length) * rowH * keys.length + 8;
  const max = Math.max(1, ...rows.flatMap((r) => keys.map(([k]) => r[k] ?? 0)));
  const summary = rows.map((r) => `${r.label}: ${keys.map(([k, l]) => `${l.toLowerCase()} ${fmtNumber(r[k])}`).join(', ')}`).join('; ');
  const svg = s('svg', { id, class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `${title}. ${summary || 'No apps'}.` });
  rows.forEach((r, i) => {
    keys.forEach(([k], j) => {
      const top = (i * keys.length + j) * rowH + 4;
      const w = Math.max(1, ((r[k] ?? 0) / max) * (W - labelW - 80));
      if (j === 0) svg.append(s('text', { x: 0, y: top + 15 }, r.label.length > 20 ? `${r.label.slice(0, 19)}…` : r.label));
      svg.append(s('rect', { class: `b${j + 1}`, x: labelW, y: top + 4, width: w, height: rowH - 10 }));
      svg.append(s('text', { x: labelW + w + 6, y: top + 15 }, fmtNumber(r[k] ?? 0)));
    });
  });
  return h('figure', {}, h('figcaption', {}, h('strong', {}, title)), svg, h('ul', { class: 'legend' }, keys.map(([, l], k) => h('li', { class: `k${k + 1}` }, l))));
}

// ---- figures ------------------------------------------------------------------------------------

/** Period starts of the report, oldest first (the API's `from`/`to` are already aligned). */
function periodStarts(usage, range) {
  const from = Date.parse(usage.from);
  const to = Date.parse(usage.to);
  const starts = [];
  if (Number.isFinite(from) && Number.isFinite(to)) {
    for (let t = from; t < to && starts.length < 500; t += range.stepMs) starts.push(t);
  }
  return starts;
}

/** Tenant-wide values of `key` per period: counters sum over apps, as do peaks (the API's rule). */
function tenantSeries(usage, starts, key) {
  const index = new Map(starts.map((t, i) => [t, i]));
  const values = starts.map(() => 0);
  for (const app of usage.apps ?? []) {
    for (const point of app.series ?? []) {
      const i = index.get(Date.parse(point.start));
      if (i !== undefined) values[i] += Number(point[key] ?? 0);
    }
  }
  return values;
}

// ---- view ---------------------------------------------------------------------------------------

/** Renders the Usage view into `view`; `onCleanup` registers what to stop when the view changes. */
export async function usageView(view, session, onCleanup, rangeKey = '24h') {
  const range = RANGES[rangeKey] ?? RANGES['24h'];
  const tid = encodeURIComponent(session.tenantId);
  const query = () => {
    const to = new Date();
    const from = new Date(to.getTime() - range.periods * range.stepMs);
    return `/v1/tenants/${tid}/usage?granularity=${range.granularity}&from=${encodeURIComponent(from.toISOString())}&to=${encodeURIComponent(to.toISOString())}`;
  };
  const [tenant, apps, first] = await Promise.all([api('GET', `/v1/tenants/${tid}`), listAll(`/v1/tenants/${tid}/apps`), api('GET', query())]);
  const names = new Map(apps.map((a) => [a.id, a.name]));
  const body = h('div', { id: 'usage-body' });
  const status = h('p', { class: 'hint', role: 'status', id: 'usage-status' });
  const error = h('p', { class: 'error', role: 'alert' });

  const draw = (usage) => {
    body.replaceChildren(...(usage.granularity ? metered(usage, tenant, names, range) : counters(usage, tenant, names)));
    status.textContent = `Updated ${new Date().toLocaleTimeString()}; refreshes every ${REFRESH_MS / 1000} s.`;
  };
  draw(first);
  const timer = setInterval(async () => {
    if (!view.isConnected || document.visibilityState !== 'visible') return;
    try {
      draw(await api('GET', query()));
      error.textContent = '';
    } catch (err) {
      if (!(err instanceof SessionEnded)) error.textContent = `Could not refresh usage: ${describe(err)}`;
    }
  }, REFRESH_MS);
  onCleanup(() => clearInterval(timer));

  append(view, [
    h('h1', {}, `Usage of ${tenant.name}`),
    h(
      'nav',
      { class: 'tabs', 'aria-label': 'Usage range' },
      Object.entries(RANGES).map(([key, r]) => h('a', { href: `#/usage/${key}`, 'aria-current': r === range ? 'page' : undefined }, r.label)),
    ),
    status,
    error,
    body,
  ]);
}

function zeroNotice(totals) {
  return Object.values(totals ?? {}).every((v) => !Number(v))
    ? h('p', { class: 'warn', id: 'usage-zero' }, 'No usage in this range: no traffic yet, or this server does not report usage yet (metering not enabled).')
    : null;
}

function quotaTable(rows) {
  return h('div', { class: 'table-wrap' }, h(
    'table',
    { id: 'quota-table' },
    h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Limit'), h('th', { scope: 'col', class: 'num' }, 'Used'), h('th', { scope: 'col', class: 'num' }, 'Quota'), h('th', { scope: 'col' }, 'Use'))),
    h(
      'tbody',
      {},
      rows.map(([label, used, max]) =>
        h(
          'tr',
          {},
          h('th', { scope: 'row' }, label),
          h('td', { class: 'num' }, fmtNumber(used)),
          h('td', { class: 'num' }, fmtNumber(max)),
          h('td', {}, h('meter', { min: 0, max: Math.max(1, max), value: Math.min(used, Math.max(1, max)), 'aria-label': `${label}: ${fmtNumber(used)} of ${fmtNumber(max)}` })),
        ),
      ),
    ),
  ));
}

/** The metered report: quota use, per-app table, three charts. */
function metered(usage, tenant, names, range) {
  const starts = periodStarts(usage, range);
  const t = usage.totals ?? {};
  const q = tenant.quotas ?? {};
  const peaks = tenantSeries(usage, starts, 'peak_connections');
  const published = tenantSeries(usage, starts, 'messages_published');
  const periodSeconds = range.stepMs / 1000;
  const busiestRate = Math.round(Math.max(0, ...published) / periodSeconds);
  const appRows = (usage.apps ?? []).map((a) => ({ label: names.get(a.app_id) ?? `${a.app_id} (deleted)`, ...a.totals }));
  return [
    zeroNotice(t),
    h(
      'div',
      { class: 'grid2' },
      h(
        'section',
        { 'aria-labelledby': 'quota-use-title' },
        h('h2', { id: 'quota-use-title' }, 'Quota use'),
        quotaTable([
          ['Concurrent connections (highest peak)', Math.max(0, ...peaks), q.max_connections ?? 0],
          [`Messages per second (busiest ${range.granularity}, average)`, busiestRate, q.max_messages_per_s ?? 0],
        ]),
        h('p', { class: 'hint' }, `Other limits: messages up to ${fmtBytes(q.max_message_bytes)}, ${fmtNumber(q.max_subscriptions_per_connection)} subscriptions per connection, ${fmtNumber(q.max_presence_members)} presence members per channel.`),
      ),
      h('section', {}, lineChart({ id: 'chart-connections', title: 'Peak concurrent connections', starts, range, peak: true, format: fmtNumber, series: [{ label: 'Peak connections', values: peaks }] })),
    ),
    h(
      'section',
      { 'aria-labelledby': 'per-app-title' },
      h('h2', { id: 'per-app-title' }, `Per app, ${range.label.toLowerCase()}`),
      h(
        'div',
        { class: 'table-wrap' },
        h(
          'table',
          { id: 'usage-table' },
          h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'App'), FIGURES.map(([, label]) => h('th', { scope: 'col', class: 'num' }, label)))),
          h(
            'tbody',
            {},
            appRows.map((r) => h('tr', {}, h('th', { scope: 'row' }, r.label), FIGURES.map(([k, , fmt]) => h('td', { class: 'num' }, fmt(r[k]))))),
            h('tr', {}, h('th', { scope: 'row' }, 'Total'), FIGURES.map(([k, , fmt]) => h('td', { class: 'num', dataset: { total: k } }, fmt(t[k])))),
          ),
        ),
      ),
      h('p', { class: 'hint' }, 'Nodes report usage every few seconds; the latest figures may lag by that much. Peaks of several nodes are summed (an upper bound).'),
    ),
    h(
      'div',
      { class: 'grid2' },
      h('section', {}, lineChart({ id: 'chart-messages', title: `Messages per ${range.granularity}`, starts, range, format: fmtNumber, series: [
        { label: 'Published', values: published },
        { label: 'Delivered', values: tenantSeries(usage, starts, 'messages_delivered') },
      ] })),
      h('section', {}, lineChart({ id: 'chart-bytes', title: `Bytes per ${range.granularity}`, starts, range, format: fmtBytes, series: [
        { label: 'In', values: tenantSeries(usage, starts, 'bytes_in') },
        { label: 'Out', values: tenantSeries(usage, starts, 'bytes_out') },
      ] })),
    ),
    h('section', {}, barChart({ id: 'chart-apps', title: `Messages per app, ${range.label.toLowerCase()}`, rows: appRows, keys: [['messages_published', 'Published'], ['messages_delivered', 'Delivered']] })),
  ];
}

/** A server without metering: current counters only, said plainly, no charts to imply history. */
function counters(usage, tenant, names) {
  const t = usage.totals ?? {};
  const keys = [['connections', 'Connections'], ['subscriptions', 'Subscriptions'], ['messages_published', 'Published'], ['messages_delivered', 'Delivered']];
  return [
    h('p', { class: 'warn', id: 'usage-zero' }, 'This server reports current counters only (it does not report usage yet): no 24-hour or 30-day history.'),
    h('section', {}, h('h2', {}, 'Quota use'), quotaTable([['Concurrent connections', t.connections ?? 0, tenant.quotas?.max_connections ?? 0]])),
    h(
      'section',
      {},
      h('h2', {}, 'Right now'),
      h(
        'table',
        { id: 'usage-table' },
        h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'App'), keys.map(([, l]) => h('th', { scope: 'col', class: 'num' }, l)))),
        h(
          'tbody',
          {},
          (usage.apps ?? []).map((a) => h('tr', {}, h('th', { scope: 'row' }, names.get(a.app_id) ?? a.app_id), keys.map(([k]) => h('td', { class: 'num' }, fmtNumber(a[k]))))),
          h('tr', {}, h('th', { scope: 'row' }, 'Total'), keys.map(([k]) => h('td', { class: 'num', dataset: { total: k } }, fmtNumber(t[k])))),
        ),
      ),
    ),
  ];
}
