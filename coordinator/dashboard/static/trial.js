// The trial page's per-epoch chart, redrawn when the live region (a running trial) refreshes.
(function () {
  'use strict';
  let plot = null;
  const PALETTE = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f'];

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
    // accuracies (0..1) on their own axis, everything else (losses) on the left one
    const scaleOf = (name) => (/acc/i.test(name) ? 'acc' : 'y');
    plot = new uPlot({
      width: Math.max(300, container.clientWidth - 4),
      height: 260,
      scales: { x: { time: false } },
      axes: [{ label: 'epoch' }, { scale: 'y', label: 'loss' }, { scale: 'acc', side: 1, label: 'accuracy', grid: { show: false } }],
      series: [{}, ...names.map((name, i) => ({ label: name, scale: scaleOf(name), stroke: PALETTE[i % PALETTE.length], width: 2 }))],
    }, [xs, ...names.map((name) => curve[name])], container);
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
