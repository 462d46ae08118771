// The trial page's per-epoch chart, redrawn when the live region (a running trial) refreshes.
(function () {
  'use strict';
  let plot = null;
  const PALETTE = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f'];

  // one axis per unit: losses on the left, accuracies (0..1) and per-epoch seconds on the right
  const UNITS = [
    { scale: 'acc', test: (n) => /acc|auc|precision|recall/i.test(n), label: 'accuracy' },
    { scale: 's', test: (n) => /^seconds$|_s$|time/i.test(n), label: 'seconds' },
  ];
  const scaleOf = (name) => (UNITS.find((u) => u.test(name)) || { scale: 'y' }).scale;

  function render() {
    const data = document.getElementById('trial-curve');
    const container = document.getElementById('chart-epochs');
    if (plot) {
      plot.destroy();
      plot = null;
    }
    if (!data || !container) return;
    const curve = JSON.parse(data.textContent);
    const names = Object.keys(curve).filter((k) => k !== 'epoch' && curve[k].some((v) => v !== null));
    if (!names.length) return;
    const n = curve[names[0]].length;
    const xs = curve.epoch && curve.epoch.every((v) => v !== null) ? curve.epoch : [...Array(n).keys()].map((i) => i + 1);
    const used = new Set(names.map(scaleOf));
    const axes = [{ label: 'epoch', incrs: [1, 2, 5, 10, 20, 25, 50, 100, 200, 500, 1000],
      values: (u, splits) => splits.map((v) => (Number.isInteger(v) ? String(v) : '')) }];
    if (used.has('y')) axes.push({ scale: 'y', label: names.filter((k) => scaleOf(k) === 'y').join(', ') || 'loss', size: 60 });
    for (const unit of UNITS) {
      if (used.has(unit.scale)) axes.push({ scale: unit.scale, side: 1, label: unit.label, grid: { show: false }, size: 60 });
    }
    plot = new uPlot({
      width: Math.max(300, container.clientWidth - 4),
      height: 260,
      scales: { x: { time: false, range: (u, lo, hi) => (lo === hi ? [lo - 1, hi + 1] : [lo, hi]) } },
      axes,
      series: [{ label: 'epoch' }, ...names.map((name, i) => ({
        label: name,
        scale: scaleOf(name),
        stroke: PALETTE[i % PALETTE.length],
        width: 2,
        points: { show: n === 1 },
      }))],
    }, [xs, ...names.map((name) => curve[name])], container);
    window.hf.plot = plot; // the browser tests read its scales and ticks
  }
  render();
  document.addEventListener('live:updated', render);
  const requeue = document.querySelector('form[action="/actions/requeue"]');
  if (requeue) {
    requeue.addEventListener('submit', (event) => {
      if (!window.confirm('Requeue this trial? Its worker drops it at its next write.')) event.preventDefault();
    });
  }
})();
