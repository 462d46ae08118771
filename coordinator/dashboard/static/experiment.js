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
  let epochsReported = true; // whether any trial reported per-epoch metrics (from the server)
  let paramScales = {}; // params column -> 'log' | 'categorical' | 'linear', from the space
  let columns = [];
  let cursor = { cache: '', seq: 0 };
  // logLoss: null until the reader ticks the box (then the axis follows the data)
  const ui = { sortCol: 'tid', sortDesc: false, filter: '', state: '', page: 0, logLoss: null, elapsed: false };
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
    epochsReported = body.epochs_reported;
    paramScales = body.param_scales || {};
    const keep = new Set(curveTids);
    for (const tid of [...curves.keys()]) if (!keep.has(tid)) curves.delete(tid);
    renderSummary(body.summary);
    renderCharts();
    renderImportance(body.importance);
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
    field('rate').textContent = s.rate;
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
      const number = s.best_number ? `, trial ${s.best_number}` : '';
      best.replaceChildren(a, document.createTextNode(` (tid ${s.best_tid}${number})`));
    }
  }

  // -- charts ----------------------------------------------------------------------------------
  // Times are UTC in the page's ISO 24-hour format (as every date the server renders), or the
  // time elapsed since the first trial started; epochs are whole numbers; each axis has one unit.
  const pad = (n) => String(n).padStart(2, '0');
  const iso = (sec) => new Date(sec * 1000).toISOString();
  const isoTime = (sec) => iso(sec).replace('T', ' ').slice(0, 19);
  function clockTicks(u, splits, axisIdx, space, incr) {
    const sc = u.scales.x;
    const days = iso(sc.min).slice(0, 10) !== iso(sc.max).slice(0, 10);
    return splits.map((v) => {
      const t = iso(v);
      if (incr >= 86400) return t.slice(0, 10);
      if (days) return `${t.slice(5, 10)} ${t.slice(11, 16)}`;
      if (incr < 1) return t.slice(11, 21);
      return incr % 60 === 0 ? t.slice(11, 16) : t.slice(11, 19);
    });
  }
  function elapsedText(sec) {
    const a = Math.round(Math.abs(sec));
    const h = Math.floor(a / 3600);
    const m = Math.floor((a % 3600) / 60);
    const text = h ? `${h}:${pad(m)}:${pad(a % 60)}` : `${m}:${pad(a % 60)}`;
    return sec < 0 ? `-${text}` : text;
  }
  const ELAPSED_INCRS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800,
    21600, 43200, 86400, 172800, 604800];
  const EPOCH_INCRS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000];
  const utc = (ts) => uPlot.tzDate(new Date(ts * 1e3), 'Etc/UTC');

  // the x axis of the time charts: {scale, axis, series (the cursor's x value), shift}
  function timeAxis(origin) {
    if (ui.elapsed) {
      return {
        shift: origin,
        scale: { time: false },
        axis: { label: 'elapsed since the first trial started (h:mm:ss)', incrs: ELAPSED_INCRS, space: 50,
          values: (u, splits) => splits.map(elapsedText) },
        series: { label: 'elapsed', value: (u, v) => (v === null ? '—' : elapsedText(v)) },
      };
    }
    return {
      shift: 0,
      scale: { time: true },
      axis: { label: 'time (UTC)', values: clockTicks, space: 80 },
      series: { label: 'time (UTC)', value: (u, v) => (v === null ? '—' : isoTime(v)) },
    };
  }
  // the loss axis: log when the reader ticked it, or (until then) when the positive losses
  // span more than two decades, as `hyperfleet plot` decides; never with a loss <= 0
  function lossIsLog(values) {
    const box = document.getElementById('log-loss');
    const positive = values.length > 0 && values.every((v) => v > 0);
    box.disabled = !positive;
    box.parentElement.title = positive ? '' : 'a log axis needs every loss above 0';
    if (!positive) box.checked = false;
    else if (ui.logLoss === null) box.checked = Math.max(...values) / Math.min(...values) > 100;
    else box.checked = ui.logLoss;
    return box.checked;
  }
  const lossAxis = (log, name) => ({ label: `${name || 'loss'}${log ? ' (log)' : ''}`, size: 60 });

  function size(container) {
    return { width: Math.max(300, container.clientWidth - 4), height: 260 };
  }
  // draw a chart; rebuilt when its shape (the series, scales) changes, otherwise only its data;
  // without data, ``empty`` says why
  function draw(id, shape, makeOpts, data, empty) {
    const container = document.getElementById(id);
    const old = plots[id];
    if (!data[0].length) {
      if (old) old.plot.destroy();
      delete plots[id];
      container.replaceChildren(el('div', empty || 'no data yet', { class: 'placeholder' }));
      return;
    }
    if (old && old.shape === shape) {
      old.plot.setData(data);
      return;
    }
    if (old) old.plot.destroy();
    container.replaceChildren();
    plots[id] = { shape, plot: new uPlot({ ...size(container), tzDate: utc, ...makeOpts() }, data, container) };
  }
  window.hf.plots = plots; // the browser tests read the charts' scales and ticks
  const dots = (c) => ({ stroke: c, paths: () => null, points: { show: true, size: 5, stroke: c, fill: c } });
  const nonNull = (ys) => ys.reduce((n, v) => n + (v === null || v === undefined ? 0 : 1), 0);

  function renderCharts() {
    const all = [...trials.values()];
    const origin = Math.min(...all.map((t) => (t.t0 !== null ? t.t0 : t.t1 !== null ? t.t1 : Infinity)));
    const ta = timeAxis(Number.isFinite(origin) ? origin : 0);
    const mode = ui.elapsed ? 'elapsed' : 'clock';
    const losses = all.filter((t) => t.loss !== null && t.loss !== undefined).map((t) => t.loss);
    const log = lossIsLog(losses);
    const yScale = { y: { distr: log ? 3 : 1 } };

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
      bx.push(t.t1 - ta.shift);
      by.push(step >= 0 ? line.best[step] : null);
      pts.push(t.ok);
    }
    const prunedOnly = all.some((t) => t.state === 'pruned');
    draw('chart-best', `best|${mode}|${log}`, () => ({
      scales: { x: ta.scale, ...yScale },
      axes: [ta.axis, lossAxis(log)],
      series: [ta.series, { label: 'best so far', stroke: color('done'), width: 2,
        paths: uPlot.paths.stepped({ align: 1 }) },
      { label: 'full trial loss', ...dots('#9fb7cc') }],
    }), [bx, by, pts], prunedOnly ? 'no full trial has finished yet (a pruned trial never counts)' : 'no trial has finished yet');

    // loss against time, one series per state present (colours from the states table)
    const withLoss = all.filter((t) => t.loss !== null && (t.t1 !== null || t.t0 !== null))
      .map((t) => ({ x: (t.t1 !== null ? t.t1 : t.t0) - ta.shift, y: t.loss, s: t.state }))
      .sort((a, b) => a.x - b.x);
    const present = [...new Set(withLoss.map((p) => p.s))].sort();
    const lx = withLoss.map((p) => p.x);
    const ly = present.map((s) => withLoss.map((p) => (p.s === s ? p.y : null)));
    draw('chart-loss', `${present.join(',')}|${mode}|${log}`, () => ({
      scales: { x: ta.scale, ...yScale },
      axes: [ta.axis, lossAxis(log)],
      series: [ta.series, ...present.map((s) => ({ label: label(s), ...dots(color(s)) }))],
    }), [lx, ...ly], 'no trial has a loss yet');

    renderCurves();
    renderParams(all);
  }

  // an x where a pruned trial's curve stops (its last point), in the curve's colour
  function stopMarks(container, pruned) {
    return (u) => {
      const ctx = u.ctx;
      const r = 4 * devicePixelRatio;
      let marks = 0;
      ctx.save();
      ctx.lineWidth = 2 * devicePixelRatio;
      for (const si of pruned) {
        const ys = u.data[si];
        let j = ys.length - 1;
        while (j >= 0 && (ys[j] === null || ys[j] === undefined)) j -= 1;
        if (j < 0) continue;
        const x = u.valToPos(u.data[0][j], 'x', true);
        const y = u.valToPos(ys[j], 'y', true);
        ctx.strokeStyle = color('pruned');
        ctx.beginPath();
        ctx.moveTo(x - r, y - r);
        ctx.lineTo(x + r, y + r);
        ctx.moveTo(x + r, y - r);
        ctx.lineTo(x - r, y + r);
        ctx.stroke();
        marks += 1;
      }
      ctx.restore();
      container.dataset.stopMarks = String(marks);
    };
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
    const stateOf = (tid) => (trials.get(tid) ? trials.get(tid).state : 'done');
    const values = ys.flat().filter((v) => v !== null);
    const log = /loss/i.test(metric) && document.getElementById('log-loss').checked && values.every((v) => v > 0);
    const pruned = tids.map((tid, i) => (stateOf(tid) === 'pruned' ? i + 1 : 0)).filter((i) => i);
    const container = document.getElementById('chart-curves');
    const shape = `${metric}|${log}|${tids.map((tid) => `${tid}:${stateOf(tid)}`).join(',')}`;
    const finished = [...trials.values()].some((t) => ['done', 'pruned', 'error'].includes(t.state));
    const empty = !epochsReported && finished ? 'this space reports no per-epoch metrics' : 'no data yet';
    draw('chart-curves', shape, () => ({
      legend: { show: false },
      scales: { x: { time: false, range: (u, lo, hi) => (lo === hi ? [lo - 1, hi + 1] : [lo, hi]) },
        y: { distr: log ? 3 : 1 } },
      axes: [{ label: 'epoch', incrs: EPOCH_INCRS, values: (u, splits) => splits.map((v) => (Number.isInteger(v) ? String(v) : '')) },
        { label: `${metric}${log ? ' (log)' : ''}`, size: 60 }],
      series: [{ label: 'epoch' }, ...tids.map((tid) => {
        const state = stateOf(tid);
        return {
          label: `trial ${tid}`,
          stroke: color(state),
          width: STATES[state] && STATES[state].live ? 2 : 1,
          // a curve of one epoch is a point (a line needs two)
          points: { show: (u, si) => nonNull(u.data[si]) === 1, size: 6, fill: color(state) },
        };
      })],
      hooks: { draw: [stopMarks(container, pruned)] },
    }), [xs, ...ys], empty);
    renderCurveLegend(tids.map(stateOf));
  }

  function renderCurveLegend(drawn) {
    const box = document.getElementById('curves-legend');
    const counts = new Map();
    for (const s of drawn) counts.set(s, (counts.get(s) || 0) + 1);
    const keys = Object.keys(STATES).filter((s) => counts.has(s))
      .concat([...counts.keys()].filter((s) => !STATES[s]));
    box.replaceChildren(...keys.map((s) => {
      const key = el('span', null, { class: 'key' });
      key.dataset.state = s;
      const swatch = el('span', s === 'pruned' ? '×' : null, { class: s === 'pruned' ? 'swatch mark' : 'swatch' });
      swatch.style.background = s === 'pruned' ? 'transparent' : color(s);
      swatch.style.color = color(s);
      const text = s === 'pruned' ? `pruned: stopped early at the × (${counts.get(s)})` : `${label(s)} (${counts.get(s)})`;
      key.append(swatch, document.createTextNode(text));
      return key;
    }));
  }

  // a parameter's axis: the space's declared scale (the server reads it), else a guess from the
  // values as `hyperfleet plot` makes (positive numbers over more than two decades: log)
  function paramScale(param, values, numeric) {
    const known = paramScales[param];
    if (known === 'log' && numeric && values.every((v) => v > 0)) return 'log';
    if (known === 'categorical' || !numeric) return 'categorical';
    if (known === 'linear') return 'linear';
    return values.length && values.every((v) => v > 0) && Math.max(...values) / Math.min(...values) > 100 ? 'log' : 'linear';
  }

  function renderParams(all) {
    const select = document.getElementById('param');
    syncOptions(select, columns.filter((c) => c.startsWith('params.')), []);
    const param = select.value;
    const rows = all.filter((t) => t.ok !== null && t.row[param] !== undefined && t.row[param] !== null);
    const numeric = rows.every((t) => typeof t.row[param] === 'number');
    const scale = paramScale(param, rows.map((t) => t.row[param]), numeric);
    const cats = scale === 'categorical'
      ? [...new Set(rows.map((t) => String(t.row[param])))].sort((a, b) => cmp(a, b)) : [];
    const xOf = (t) => (scale === 'categorical' ? cats.indexOf(String(t.row[param])) : t.row[param]);
    const pts = rows.map((t) => ({ x: xOf(t), y: t.ok, pruned: t.state === 'pruned' })).sort((a, b) => a.x - b.x);
    const name = `${param.replace(/^params\./, '')}${scale === 'log' ? ' (log)' : scale === 'categorical' ? ' (choice)' : ''}`;
    const axisX = scale !== 'categorical' ? { label: name } : {
      label: name,
      values: (u, splits) => splits.map((v) => (Number.isInteger(v) && cats[v] !== undefined ? cats[v] : '')),
    };
    const log = document.getElementById('log-loss').checked && pts.every((p) => p.y > 0);
    draw('chart-params', `${param}|${scale}|${log}|${cats.join('\u0000')}`, () => ({
      scales: { x: { time: false, distr: scale === 'log' ? 3 : 1, ...(scale === 'categorical' ? { range: [-0.5, cats.length - 0.5] } : {}) },
        y: { distr: log ? 3 : 1 } },
      axes: [axisX, lossAxis(log)],
      series: [{ label: name }, { label: 'full trial', ...dots(color('done')) },
        { label: 'pruned (partial loss)', ...dots(color('pruned')) }],
    }), [pts.map((p) => p.x), pts.map((p) => (p.pruned ? null : p.y)), pts.map((p) => (p.pruned ? p.y : null))],
    'no successful trial with parameters yet');
  }

  // which hyperparameters mattered (coordinator.importance, as `hyperfleet importance`)
  let importanceShown = '';
  function renderImportance(panel) {
    const text = JSON.stringify(panel || null);
    if (text === importanceShown) return;
    importanceShown = text;
    const box = document.getElementById('importance');
    if (!panel || panel.note) {
      box.replaceChildren(el('p', panel ? panel.note : 'not computed yet', { class: 'muted' }));
      return;
    }
    const table = el('table', null, { class: 'importance' });
    for (const r of panel.rows) {
      const tr = el('tr');
      tr.dataset.param = r.label;
      const bar = el('div', null, { class: 'bar' });
      bar.style.width = `${Math.round(r.share * 200)}px`;
      const cell = el('td');
      cell.appendChild(bar);
      tr.append(el('th', r.label), el('td', `${(r.share * 100).toFixed(1)} %`, { class: 'num' }), cell,
        el('td', r.active === panel.trials ? '' : `active in ${r.active} trials`, { class: 'muted' }));
      table.appendChild(tr);
    }
    const skipped = Object.entries(panel.skipped || {}).map(([k, why]) => `${k}: ${why}`).join('; ');
    box.replaceChildren(table, el('p',
      `${panel.method} (Optuna) over ${panel.trials} full trials` +
      (panel.pruned ? `; ${panel.pruned} pruned left out` : '') + (skipped ? `; not assessed: ${skipped}` : '') +
      '. Same numbers as `hyperfleet importance`.', { class: 'muted' }));
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
  document.getElementById('log-loss').addEventListener('change', (event) => {
    ui.logLoss = event.target.checked;
    renderCharts();
  });
  document.getElementById('time-axis').addEventListener('change', (event) => {
    ui.elapsed = event.target.value === 'elapsed';
    renderCharts();
  });
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
