// Live regions: elements marked data-live are re-read from the same page every few seconds
// (server-rendered, already escaped) and swapped in place; errors show in the banner.
(function () {
  'use strict';
  const banner = document.getElementById('banner');
  const every = Number(document.body.dataset.liveMs) || 4000;
  // the page polls on its own: an outage needs no action from the reader, only patience
  const RETRY = ' — this page keeps retrying and recovers by itself; nothing to rerun.';
  window.hf = {
    banner(message) {
      if (!banner) return;
      banner.hidden = !message;
      banner.textContent = message ? message + RETRY : '';
    },
  };
  if (!document.querySelector('[data-live]')) return;
  async function tick() {
    if (document.hidden || !document.querySelector('[data-live]')) return;
    try {
      const response = await fetch(location.href, { headers: { Accept: 'text/html' } });
      const doc = new DOMParser().parseFromString(await response.text(), 'text/html');
      if (!response.ok) {
        const message = doc.querySelector('.message');
        window.hf.banner(message ? message.textContent : `dashboard answered ${response.status}`);
        return;
      }
      window.hf.banner(null);
      for (const region of document.querySelectorAll('[data-live]')) {
        const fresh = doc.getElementById(region.id);
        if (fresh) region.replaceWith(document.importNode(fresh, true));
      }
      document.dispatchEvent(new Event('live:updated'));
    } catch (error) {
      window.hf.banner(`dashboard unreachable: ${error.message}`);
    }
  }
  setInterval(tick, every);
})();
