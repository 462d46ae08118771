// The experiment page: polls /api/trials for the trials changed since the last poll, keeps every
// trial in memory, and redraws the charts (uPlot) and the trial table. Strings from the database
// reach the page only through textContent, never as HTML.
(function () {
  'use strict';
  const boot = JSON.parse(document.getElementById('boot').textContent);
  const STATES = boot.states;
  const UNKNOWN = '#bcbd22';
  const PAGE = 100;
  const color = (s) => (STATES[s] && STATES[s].color) || UNKNOWN;
  const label = (s) => (STATES[s] && STATES[s].label) || s;

  const trials = new Map(); // tid -> trial
  const curves = new Map(); // tid -> {epoch: [...], metric: [...]}
  let curveTids = [];
  let bestLine = null; // {t: [...], best: [...]}: where the best so far improved, from the server
  let columns = [];
  let cursor = { cache: '', seq: 0 };
  const ui = { sortCol: 'tid', sortDesc: false, filter: '', state: '', page: 0 };
  const plots = {};

  // -- helpers ---------------------------------------------------------------------------------
  function el(tag, text, attrs) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    return node;
  }
  function fmt(v) {
    if (v === null || v === undefined) return '—';
    if (typeof v === 'number') {
      if (Number.isInteger(v)) return String(v);
      const a = Math.abs(v);
      return a !== 0 && (a >= 1e5 || a < 1e-3) ? v.toExponential(3) : String(Number(v.toPrecision(5)));
    }
    return String(v);
  }
  function trialHref(tid) {
    return `/trial?key=${encodeURIComponent(boot.key)}&tid=${encodeURIComponent(tid)}`;
  }
  function chip(state, n) {
    const c = el('span', n === undefined ? label(state) : `${label(state)} ${n}`, { class: 'chip' });
    c.dataset.state = state;
    c.style.background = color(state);
    return c;
  }
  function cmp(a, b) {
    const na = a === null || a === undefined;
    const nb = b === null || b === undefined;
    if (na || nb) return na === nb ? 0 : na ? 1 : -1;
    if (typeof a === 'number' && typeof b === 'number') return a - b;
    return String(a).localeCompare(String(b), undefined, { numeric: true });
  }

  // -- polling ---------------------------------------------------------------------------------
  async function poll() {
    if (document.hidden && cursor.seq) return;
    try {
      const url = `${boot.api}&since=${cursor.seq}&cache=${encodeURIComponent(cursor.cache)}`;
      const response = await fetch(url);
      const body = await response.json();
      if (!response.ok) {
        window.hf.banner(body.error || `dashboard answered ${response.status}`);
        return;
      }
      window.hf.banner(null);
      apply(body);
    } catch (error) {
      window.hf.banner(`dashboard unreachable: ${error.message}`);
    }
  }
  async function loop() {
    await poll();
    setTimeout(loop, boot.poll_ms);
  }

  function apply(body) {
    if (body.full) {
      trials.clear();
      curves.clear();
    }
    cursor = { cache: body.cache, seq: body.seq };
    columns = body.columns;
    for (const t of body.trials) {
      trials.set(t.tid, t);
      if (t.curve) curves.set(t.tid, t.curve);
    }
    curveTids = body.curve_tids;
    bestLine = body.best_so_far;
    const keep = new Set(curveTids);
    for (const tid of [...curves.keys()]) if (!keep.has(tid)) curves.delete(tid);
    renderSummary(body.summary);
    renderCharts();
    renderTable();
    document.body.dataset.seq = String(body.seq);
    document.body.dataset.trials = String(trials.size);
  }

  // -- summary ---------------------------------------------------------------------------------
  function field(name) {
    return document.querySelector(`#summary [data-field="${name}"], .facts [data-field="${name}"]`);
  }
  function renderSummary(s) {
    field('status').textContent = s.status;
    field('finished').textContent = String(s.finished);
    field('finished_at').textContent = s.finished_at;
    field('max_evals').textContent = s.max_evals === null ? '?' : String(s.max_evals);
    field('rate').textContent = s.rate_per_min === null ? '—' : s.rate_per_min.toFixed(2);
    field('eta').textContent = s.eta;
    field('workers').textContent = String(s.workers);
    const chips = field('chips');
    chips.replaceChildren(
      ...Object.entries(s.counts).filter(([, n]) => n > 0).map(([name, n]) => chip(name, n)));
    const best = field('best');
    if (s.best_tid === null) {
      best.replaceChildren(document.createTextNode('—'));
    } else {
      const a = el('a', fmt(s.best_loss), { href: trialHref(s.best_tid) });
      best.replaceChildren(a, document.createTextNode(` (trial ${s.best_tid})`));
    }
  }

  // -- charts ----------------------------------------------------------------------------------
  function size(container) {
    return { width: Math.max(300, container.clientWidth - 4), height: 260 };
  }
  // draw a chart; rebuilt when its shape (the series) changes, otherwise only its data
  function draw(id, shape, makeOpts, data) {
    const container = document.getElementById(id);
    const old = plots[id];
    if (!data[0].length) {
      if (old) old.plot.destroy();
      delete plots[id];
      container.replaceChildren(el('div', 'no data yet', { class: 'placeholder' }));
      return;
    }
    if (old && old.shape === shape) {
      old.plot.setData(data);
      return;
    }
    if (old) old.plot.destroy();
    container.replaceChildren();
    plots[id] = { shape, plot: new uPlot({ ...size(container), ...makeOpts() }, data, container) };
  }
  const dots = (c) => ({ stroke: c, paths: () => null, points: { show: true, size: 5, stroke: c, fill: c } });

  function renderCharts() {
    const all = [...trials.values()];
    // best loss so far: the server's line (coordinator.rules.best_so_far: full successful
    // trials only, so it starts at and ends on trials `best` would name), with their losses
    const counted = all.filter((t) => t.counted && t.t1 !== null).sort((a, b) => a.t1 - b.t1);
    const line = bestLine || { t: [], best: [] };
    const bx = [];
    const by = [];
    const pts = [];
    let step = -1;
    for (const t of counted) {
      while (step + 1 < line.t.length && line.t[step + 1] <= t.t1) step += 1;
      bx.push(t.t1);
      by.push(step >= 0 ? line.best[step] : null);
      pts.push(t.ok);
    }
    draw('chart-best', 'best', () => ({
      scales: { x: { time: true } },
      series: [{}, { label: 'best so far', stroke: color('done'), width: 2,
        paths: uPlot.paths.stepped({ align: 1 }) },
      { label: 'trial loss', ...dots('#9fb7cc') }],
    }), [bx, by, pts]);

    // loss against time, one series per state present (colours from the states table)
    const withLoss = all.filter((t) => t.loss !== null && (t.t1 !== null || t.t0 !== null))
      .map((t) => ({ x: t.t1 !== null ? t.t1 : t.t0, y: t.loss, s: t.state }))
      .sort((a, b) => a.x - b.x);
    const present = [...new Set(withLoss.map((p) => p.s))].sort();
    const lx = withLoss.map((p) => p.x);
    const ly = present.map((s) => withLoss.map((p) => (p.s === s ? p.y : null)));
    draw('chart-loss', present.join(','), () => ({
      scales: { x: { time: true } },
      series: [{}, ...present.map((s) => ({ label: label(s), ...dots(color(s)) }))],
    }), [lx, ...ly]);

    renderCurves();
    renderParams(all);
  }

  function renderCurves() {
    const select = document.getElementById('metric');
    const metrics = new Set();
    for (const c of curves.values()) for (const k of Object.keys(c)) if (k !== 'epoch') metrics.add(k);
    const names = [...metrics].sort();
    syncOptions(select, names, ['val_loss', 'loss']);
    const metric = select.value;
    const tids = curveTids.filter((tid) => curves.has(tid) && curves.get(tid)[metric]);
    const epochs = new Set();
    for (const tid of tids) for (const e of curves.get(tid).epoch) epochs.add(e);
    const xs = [...epochs].sort((a, b) => a - b);
    const ys = tids.map((tid) => {
      const c = curves.get(tid);
      const at = new Map(c.epoch.map((e, i) => [e, c[metric][i]]));
      return xs.map((e) => (at.has(e) ? at.get(e) : null));
    });
    const shape = `${metric}|${tids.map((tid) => `${tid}:${trials.get(tid) && trials.get(tid).state}`).join(',')}`;
    draw('chart-curves', shape, () => ({
      legend: { show: false },
      scales: { x: { time: false } },
      axes: [{ label: 'epoch' }, { label: metric }],
      series: [{}, ...tids.map((tid) => {
        const state = trials.get(tid) ? trials.get(tid).state : 'done';
        return { label: `trial ${tid}`, stroke: color(state), width: STATES[state] && STATES[state].live ? 2 : 1, points: { show: false } };
      })],
    }), [xs, ...ys]);
  }

  function renderParams(all) {
    const select = document.getElementById('param');
    syncOptions(select, columns.filter((c) => c.startsWith('params.')), []);
    const param = select.value;
    const rows = all.filter((t) => t.ok !== null && t.row[param] !== undefined && t.row[param] !== null);
    const numeric = rows.every((t) => typeof t.row[param] === 'number');
    const cats = numeric ? [] : [...new Set(rows.map((t) => String(t.row[param])))].sort();
    const xOf = (t) => (numeric ? t.row[param] : cats.indexOf(String(t.row[param])));
    const pts = rows.map((t) => ({ x: xOf(t), y: t.ok })).sort((a, b) => a.x - b.x);
    const axisX = numeric ? { label: param } : {
      label: param,
      values: (u, splits) => splits.map((v) => (Number.isInteger(v) && cats[v] !== undefined ? cats[v] : '')),
    };
    draw('chart-params', `${param}|${cats.join('\u0000')}`, () => ({
      legend: { show: false },
      scales: { x: { time: false } },
      axes: [axisX, { label: 'loss' }],
      series: [{}, { label: 'loss', ...dots(color('done')) }],
    }), [pts.map((p) => p.x), pts.map((p) => p.y)]);
  }

  function syncOptions(select, names, preferred) {
    const current = [...select.options].map((o) => o.value);
    if (current.join('\u0000') === names.join('\u0000')) return;
    const chosen = select.value;
    select.replaceChildren(...names.map((n) => el('option', n, { value: n })));
    const pick = names.includes(chosen) ? chosen : preferred.find((p) => names.includes(p)) || names[0];
    if (pick !== undefined) select.value = pick;
  }

  // -- the trial table -------------------------------------------------------------------------
  function renderTable() {
    const stateSelect = document.getElementById('state-filter');
    const states = [...new Set([...trials.values()].map((t) => t.state))].sort();
    const have = [...stateSelect.options].slice(1).map((o) => o.value);
    if (have.join(',') !== states.join(',')) {
      const chosen = stateSelect.value;
      stateSelect.replaceChildren(el('option', 'every state', { value: '' }),
        ...states.map((s) => el('option', label(s), { value: s })));
      stateSelect.value = states.includes(chosen) ? chosen : '';
    }
    const q = ui.filter.toLowerCase();
    let rows = [...trials.values()];
    if (ui.state) rows = rows.filter((t) => t.state === ui.state);
    if (q) {
      rows = rows.filter((t) => Object.values(t.row).some(
        (v) => v !== null && String(v).toLowerCase().includes(q)));
    }
    const dir = ui.sortDesc ? -1 : 1;
    rows.sort((a, b) => {
      const va = a.row[ui.sortCol];
      const vb = b.row[ui.sortCol];
      const nulls = (va === null || va === undefined) - (vb === null || vb === undefined);
      return nulls || cmp(va, vb) * dir || cmp(a.tid, b.tid);
    });
    const pages = Math.max(1, Math.ceil(rows.length / PAGE));
    ui.page = Math.min(ui.page, pages - 1);
    const shown = rows.slice(ui.page * PAGE, (ui.page + 1) * PAGE);
    document.getElementById('range').textContent = rows.length
      ? `${ui.page * PAGE + 1}–${ui.page * PAGE + shown.length} of ${rows.length}` : 'no trials';

    const table = document.getElementById('trials');
    const head = el('tr');
    for (const c of columns) {
      const th = el('th', c + (c === ui.sortCol ? (ui.sortDesc ? ' ▼' : ' ▲') : ''), { class: 'sortable' });
      th.dataset.col = c;
      head.appendChild(th);
    }
    table.tHead.replaceChildren(head);
    const body = document.createDocumentFragment();
    for (const t of shown) {
      const tr = el('tr');
      tr.dataset.tid = String(t.tid);
      for (const c of columns) {
        const v = t.row[c];
        const td = el('td');
        if (c === 'tid') td.appendChild(el('a', fmt(v), { href: trialHref(t.tid) }));
        else if (c === 'state') td.appendChild(chip(t.state));
        else td.textContent = fmt(v);
        if (typeof v === 'number') td.className = 'num';
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
    table.tBodies[0].replaceChildren(body);
  }

  document.getElementById('trials').tHead.addEventListener('click', (event) => {
    const th = event.target.closest('th');
    if (!th) return;
    const col = th.dataset.col;
    ui.sortDesc = ui.sortCol === col ? !ui.sortDesc : false;
    ui.sortCol = col;
    renderTable();
  });
  document.getElementById('filter').addEventListener('input', (event) => {
    ui.filter = event.target.value;
    ui.page = 0;
    renderTable();
  });
  document.getElementById('state-filter').addEventListener('change', (event) => {
    ui.state = event.target.value;
    ui.page = 0;
    renderTable();
  });
  document.getElementById('prev').addEventListener('click', () => { ui.page = Math.max(0, ui.page - 1); renderTable(); });
  document.getElementById('next').addEventListener('click', () => { ui.page += 1; renderTable(); });
  document.getElementById('metric').addEventListener('change', renderCurves);
  document.getElementById('param').addEventListener('change', () => renderParams([...trials.values()]));
  window.addEventListener('resize', () => {
    for (const [id, p] of Object.entries(plots)) p.plot.setSize(size(document.getElementById(id)));
  });
  const cancel = document.getElementById('cancel-form');
  if (cancel) {
    cancel.addEventListener('submit', (event) => {
      if (!window.confirm(`Cancel experiment ${boot.key}? Queued trials are cancelled, running ones stop.`)) event.preventDefault();
    });
  }
  loop();
})();
