// Pulse live surge map: draws H3 cells, available drivers and drivers on a ride from
// /api/v1/surge/stream (SSE) into an inline SVG, and a ride's trail (/api/v1/orders/{id}/trail)
// when one of its drivers is clicked. No dependencies, no network access but same-origin endpoints.
'use strict';
(() => {
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const CELLS_URL = '/api/v1/surge/cells';
  const STREAM_URL = '/api/v1/surge/stream';
  const MIN_MULT = 1.0;
  const MAX_MULT = 3.5; // the engine's cap
  // On-screen radius of a driver dot: constant when zoomed in, shrinking when zoomed far out so
  // thousands of drivers do not bury the cells (30 m of ground per px of radius).
  const dotRadiusPx = (k) => clamp(30 * k, 1.4, 3.2);
  const GLIDE_LIMIT = 1500; // above this many drivers, skip the position transition (too costly)
  const FADE_LIMIT = 800; // above this many cells, skip the colour transition (repaints every frame)
  const FIT_PADDING = { top: 96, right: 48, bottom: 150, left: 48 }; // keeps data clear of the cards
  const MIN_FIT_SPAN_M = 600; // a single cell should not fill the whole screen
  const $ = (id) => document.getElementById(id);

  // ---------- colour scale ----------
  // Sequential: calm teal -> yellow -> orange -> red -> magenta at the cap.
  const STOPS = [
    [1.0, [29, 154, 138]], [1.5, [242, 209, 61]], [2.0, [247, 161, 51]],
    [2.5, [240, 100, 42]], [3.0, [224, 38, 79]], [3.5, [176, 18, 122]],
  ];
  const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
  const toMult = (m) => clamp(Number.isFinite(Number(m)) ? Number(m) : 1, MIN_MULT, MAX_MULT);
  function colourFor(mult) {
    const v = Math.round(toMult(mult) * 100) / 100; // near-equal multipliers share one colour string
    let i = 1;
    while (i < STOPS.length - 1 && v > STOPS[i][0]) i++;
    const [m0, c0] = STOPS[i - 1], [m1, c1] = STOPS[i];
    const t = (v - m0) / (m1 - m0);
    return '#' + c0.map((c, j) => Math.round(c + (c1[j] - c) * t).toString(16).padStart(2, '0')).join('');
  }
  // Calm cells recede a little so surging ones stand out.
  const opacityFor = (mult) => (toMult(mult) <= MIN_MULT ? 0.5 : 0.8 + 0.15 * (toMult(mult) - MIN_MULT) / (MAX_MULT - MIN_MULT)).toFixed(2);

  // ---------- projection (Web Mercator, metres) ----------
  // Coordinates are stored relative to the first projected point: renderers use 32-bit floats,
  // and raw Mercator metres (~1e6) would lose sub-metre precision.
  const R = 6378137, RAD = Math.PI / 180;
  let origin = null;
  function project(lat, lng) {
    const x = R * lng * RAD;
    const y = -R * Math.log(Math.tan(Math.PI / 4 + clamp(lat, -85.05, 85.05) * RAD / 2));
    if (!origin) origin = [x, y];
    return [x - origin[0], y - origin[1]];
  }
  const latAt = (wy) => (2 * Math.atan(Math.exp(-(wy + origin[1]) / R)) - Math.PI / 2) / RAD;

  // ---------- state ----------
  const svg = $('map'), world = $('world'), cellsG = $('cells'), driversG = $('drivers');
  const ridingG = $('riding'), trailEl = $('trail');
  const cells = new Map(); // h3 -> { el, data, fill, bbox: [x0, y0, x1, y1] }
  const drivers = new Map(); // id -> { el, x, y }
  const riders = new Map(); // driver id on a ride -> { el, x, y, order }
  let selectedOrder = null, trailFetchedAt = 0;
  const colourCounts = new Map(); // fill -> number of cells drawn with it
  let totals = null, truncated = false;
  let serverSkew = 0; // client clock minus server clock, seconds
  let lastEventAt = 0; // client ms of the last snapshot/update
  let gotData = false, fitted = false, streamSnapshotSeen = false;
  let hovered = null, pinned = null; // h3 strings

  const pulseMap = (window.pulseMap = { hexagons: 0, colours: [], sseEvents: 0, drivers: 0, riding: 0, trailPoints: 0, connected: false, ledger: null });

  // ---------- data application ----------
  function countColour(fill, delta) {
    if (!fill) return;
    const n = (colourCounts.get(fill) || 0) + delta;
    if (n > 0) colourCounts.set(fill, n); else colourCounts.delete(fill);
  }

  function upsertCell(c) {
    if (!c || typeof c.h3 !== 'string' || !Array.isArray(c.boundary) || c.boundary.length < 3) return;
    let rec = cells.get(c.h3);
    if (!rec) {
      // An H3 id fixes its boundary, so the polygon geometry is written once.
      const pts = c.boundary.map(([lat, lng]) => project(lat, lng));
      const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
      const el = document.createElementNS(SVG_NS, 'polygon');
      el.setAttribute('class', 'cell');
      el.setAttribute('data-h3', c.h3);
      el.setAttribute('points', pts.map((p) => p[0].toFixed(1) + ',' + p[1].toFixed(1)).join(' '));
      rec = { el, fill: null, bbox: [Math.min(...xs), Math.min(...ys), Math.max(...xs), Math.max(...ys)] };
      cells.set(c.h3, rec);
      cellsG.appendChild(el);
    }
    const mult = String(toMult(c.multiplier));
    if (!rec.data || String(toMult(rec.data.multiplier)) !== mult) rec.el.setAttribute('data-multiplier', mult);
    rec.data = c;
    const fill = colourFor(c.multiplier);
    if (fill !== rec.fill) {
      countColour(rec.fill, -1);
      countColour(fill, +1);
      rec.fill = fill;
      rec.el.setAttribute('fill', fill);
      rec.el.setAttribute('fill-opacity', opacityFor(c.multiplier));
    }
  }

  function removeCell(h3) {
    const rec = cells.get(h3);
    if (!rec) return;
    countColour(rec.fill, -1);
    rec.el.remove();
    cells.delete(h3);
    if (hovered === h3) hideTooltip();
  }

  // Draws `list` into `group`, one dot per driver id, reusing the dots already drawn.
  function setDots(list, dots, group, className) {
    const seen = new Set();
    for (const d of Array.isArray(list) ? list : []) {
      if (!d || !Number.isFinite(d.lat) || !Number.isFinite(d.lng)) continue;
      const id = d.id != null ? String(d.id) : d.lat + ',' + d.lng;
      if (seen.has(id)) continue;
      seen.add(id);
      const [x, y] = project(d.lat, d.lng);
      let rec = dots.get(id);
      if (!rec) {
        const el = document.createElementNS(SVG_NS, 'circle');
        el.setAttribute('class', className);
        el.setAttribute('r', '3');
        rec = { el };
        dots.set(id, rec);
        group.appendChild(el);
      }
      if (typeof d.order_id === 'string' && rec.order !== d.order_id) {
        rec.order = d.order_id;
        rec.el.setAttribute('data-order', d.order_id);
        rec.el.classList.toggle('selected', d.order_id === selectedOrder);
      }
      if (rec.x !== x || rec.y !== y) {
        rec.x = x; rec.y = y;
        rec.el.setAttribute('cx', x.toFixed(1));
        rec.el.setAttribute('cy', y.toFixed(1));
      }
    }
    for (const [id, rec] of dots) if (!seen.has(id)) { rec.el.remove(); dots.delete(id); }
    group.classList.toggle('no-glide', dots.size > GLIDE_LIMIT);
  }
  const setDrivers = (list) => setDots(list, drivers, driversG, 'driver');
  function setRiding(list) {
    setDots(list, riders, ridingG, 'driver rider');
    if (selectedOrder && ![...riders.values()].some((rec) => rec.order === selectedOrder)) {
      // The ride ended: its trail stays drawn until another is picked or Esc.
      trailEl.classList.add('ended');
    } else if (selectedOrder && Date.now() - trailFetchedAt > 2000) {
      showTrail(selectedOrder);
    }
  }

  // ---------- a ride's trail ----------
  function showTrail(order) {
    selectedOrder = order;
    trailFetchedAt = Date.now();
    for (const rec of riders.values()) rec.el.classList.toggle('selected', rec.order === order);
    if (!order) {
      trailEl.hidden = true;
      pulseMap.trailPoints = 0;
      return;
    }
    fetch(`/api/v1/orders/${encodeURIComponent(order)}/trail`, { headers: AUTH, cache: 'no-store' })
      .then((res) => (res.ok ? res.json() : null))
      .then((trail) => {
        if (!trail || selectedOrder !== order || !Array.isArray(trail.points)) return;
        const pts = trail.points
          .filter((p) => Number.isFinite(p.lat) && Number.isFinite(p.lng))
          .map((p) => project(p.lat, p.lng));
        const rider = [...riders.values()].find((rec) => rec.order === order);
        if (rider) pts.push([rider.x, rider.y]);
        trailEl.setAttribute('points', pts.map((p) => p[0].toFixed(1) + ',' + p[1].toFixed(1)).join(' '));
        trailEl.classList.remove('ended');
        trailEl.hidden = pts.length < 2;
        pulseMap.trailPoints = trail.points.length;
      })
      .catch(() => {}); // a trail is a nicety; the map goes on without it
  }
  ridingG.addEventListener('click', (e) => {
    const order = e.target && e.target.getAttribute && e.target.getAttribute('data-order');
    if (order) showTrail(order === selectedOrder ? null : order);
  });

  // `full` = snapshot semantics (replace everything); otherwise an update diff.
  function apply(msg, full) {
    if (!msg || typeof msg !== 'object') return;
    if (Number.isFinite(msg.generated_at)) serverSkew = Date.now() / 1000 - msg.generated_at;
    const incoming = Array.isArray(msg.cells) ? msg.cells : [];
    if (full) {
      const keep = new Set(incoming.map((c) => c && c.h3));
      for (const h3 of [...cells.keys()]) if (!keep.has(h3)) removeCell(h3);
    }
    incoming.forEach(upsertCell);
    if (!full && Array.isArray(msg.removed)) msg.removed.forEach(removeCell);
    if (full || Array.isArray(msg.drivers)) setDrivers(msg.drivers);
    if (full || Array.isArray(msg.riding)) setRiding(msg.riding);
    if (msg.totals && typeof msg.totals === 'object') totals = msg.totals;
    else if (full) totals = null; // fall back to totals computed from what is drawn
    truncated = !!msg.drivers_truncated;
    gotData = true;
    cellsG.classList.toggle('no-fade', cells.size > FADE_LIMIT);
    if (!fitted && (cells.size || drivers.size)) { fit(false); fitted = true; }
    render();
  }

  // ---------- rendering of everything that is not geometry ----------
  const fmt = (n) => (Number.isFinite(Number(n)) ? Number(n).toLocaleString('en-US') : '–');
  const fmtMult = (m) => '×' + toMult(m).toFixed(2);
  const esc = (s) => String(s).replace(/[&<>"']/g, (ch) => '&#' + ch.charCodeAt(0) + ';');
  const agoSecs = (s) => (s < 60 ? s + ' s ago' : s < 3600 ? Math.floor(s / 60) + ' min ago' : Math.floor(s / 3600) + ' h ago');
  // Server timestamps are compared on the server's clock (via serverSkew), so a skewed laptop
  // clock does not show "-40 s ago".
  const ago = (unixSeconds) => (Number.isFinite(unixSeconds)
    ? agoSecs(Math.max(0, Math.round(Date.now() / 1000 - serverSkew - unixSeconds))) : '–');

  function render() {
    pulseMap.hexagons = cells.size;
    pulseMap.drivers = drivers.size;
    pulseMap.riding = riders.size;
    pulseMap.colours = [...colourCounts.keys()];

    // Totals come from the server; fall back to what is drawn if they are missing.
    let surging = 0, demand = 0, supply = 0, max = 0;
    const bins = new Array(10).fill(0);
    for (const { data } of cells.values()) {
      const m = toMult(data.multiplier);
      if (m > MIN_MULT) surging++;
      demand += Number(data.demand) || 0;
      supply += Number(data.supply) || 0;
      max = Math.max(max, m);
      bins[Math.min(9, Math.floor((m - MIN_MULT) / 0.25 + 1e-9))]++;
    }
    const t = totals || {};
    $('t-cells').textContent = fmt(t.cells ?? cells.size);
    const surgingCells = t.surging_cells ?? surging;
    $('t-surging').textContent = fmt(surgingCells);
    $('t-surging').classList.toggle('hot', surgingCells > 0);
    $('t-demand').textContent = fmt(t.demand ?? demand);
    $('t-supply').textContent = fmt(t.supply ?? supply);
    $('t-drivers').textContent = fmt(t.drivers ?? drivers.size);
    $('t-riding').textContent = fmt(t.riding ?? riders.size);
    const maxMult = cells.size ? t.max_multiplier ?? max : null;
    $('t-max').textContent = maxMult == null ? '–' : fmtMult(maxMult);
    $('t-max').style.color = maxMult == null ? '' : colourFor(maxMult);
    $('truncated').hidden = !truncated;

    // Histogram: sqrt scale so a few surging cells stay visible next to many calm ones.
    const peak = Math.sqrt(Math.max(1, ...bins));
    histBars.forEach((bar, i) => {
      bar.style.height = (bins[i] ? 10 + 90 * Math.sqrt(bins[i]) / peak : 0) + '%';
      bar.title = `${(1 + i * 0.25).toFixed(2)}–${(1.25 + i * 0.25).toFixed(2)}×: ${bins[i]} cell${bins[i] === 1 ? '' : 's'}`;
    });

    // Empty state.
    $('empty').hidden = cells.size > 0;
    if (gotData) {
      $('empty-title').textContent = 'Waiting for surge data';
      $('empty-text').innerHTML = 'No active cells yet — run <code>pulse simulate</code> or <code>pulse demo</code> to watch the city come alive.';
    }
    if (hovered) tooltip.innerHTML = details(hovered, false);
    renderPinned();
    tick();
  }

  function details(h3, full) {
    const rec = cells.get(h3);
    const c = rec ? rec.data : (pinnedData && pinnedData.h3 === h3 ? pinnedData : null);
    if (!c) return '';
    const m = toMult(c.multiplier);
    const [cls, label] = !rec ? ['gone', 'no longer active'] : m >= MAX_MULT ? ['cap', 'at cap'] : m > MIN_MULT ? ['surging', 'surging'] : ['calm', 'calm'];
    const demand = Number(c.demand) || 0, supply = Number(c.supply) || 0;
    let html = `<div class="d-mult"><span class="chip" style="background:${colourFor(m)}"></span><b>${fmtMult(m)}</b><span class="tag ${cls}">${label}</span></div>
      <div class="d-h3">${esc(c.h3)}</div>
      <dl class="d-grid"><dt>Demand</dt><dd>${fmt(demand)}</dd><dt>Supply</dt><dd>${fmt(supply)}</dd><dt>Updated</dt><dd data-ago="${esc(c.updated_at)}">${ago(c.updated_at)}</dd>`;
    if (full && Array.isArray(c.center)) html += `<dt>Centre</dt><dd>${Number(c.center[0]).toFixed(5)}, ${Number(c.center[1]).toFixed(5)}</dd>`;
    html += '</dl>';
    if (full) {
      const sum = demand + supply || 1;
      html += `<div class="ratio"><span class="dem" style="width:${(100 * demand) / sum}%"></span><span class="sup" style="width:${(100 * supply) / sum}%"></span></div>
        <div class="ratio-legend"><span>demand</span><span>${supply ? (demand / supply).toFixed(1) + ' requests per driver' : demand ? 'no supply' : 'idle'}</span><span>supply</span></div>`;
    } else {
      html += '<div class="hint">Click to pin</div>';
    }
    return html;
  }

  // ---------- tooltip & pinned panel ----------
  const tooltip = $('tooltip'), panel = $('panel');
  const hoverOutline = $('hover-outline'), pinOutline = $('pin-outline');
  let pinnedData = null; // last known data of the pinned cell, kept if it disappears

  function showTooltip(h3, clientX, clientY) {
    if (hovered !== h3) {
      hovered = h3;
      tooltip.innerHTML = details(h3, false);
      hoverOutline.setAttribute('points', cells.get(h3).el.getAttribute('points'));
      hoverOutline.style.display = '';
    }
    tooltip.hidden = false;
    // Keep the tooltip on screen: flip to the other side of the cursor near the edges.
    const w = tooltip.offsetWidth, h = tooltip.offsetHeight;
    const x = clientX + 16 + w > innerWidth ? clientX - 16 - w : clientX + 16;
    const y = clientY + 16 + h > innerHeight ? clientY - 16 - h : clientY + 16;
    tooltip.style.transform = `translate(${Math.max(4, x)}px, ${Math.max(4, y)}px)`;
  }
  function hideTooltip() {
    hovered = null;
    tooltip.hidden = true;
    hoverOutline.style.display = 'none';
  }

  function pin(h3) {
    pinned = h3;
    pinnedData = h3 && cells.get(h3) ? cells.get(h3).data : null;
    renderPinned();
  }
  function renderPinned() {
    const rec = pinned && cells.get(pinned);
    if (rec) pinnedData = rec.data;
    panel.hidden = !pinned;
    pinOutline.style.display = rec ? '' : 'none';
    if (!pinned) return;
    if (rec) pinOutline.setAttribute('points', rec.el.getAttribute('points'));
    panel.classList.toggle('stale', !rec);
    $('panel-body').innerHTML = details(pinned, true);
  }

  // ---------- view: pan / zoom / fit ----------
  const view = { k: 0.5, tx: 0, ty: 0 };
  const MIN_K = 1e-5, MAX_K = 8; // pixels per metre
  let viewFrame = 0;
  function applyView() {
    if (viewFrame) return;
    viewFrame = requestAnimationFrame(() => {
      viewFrame = 0;
      world.setAttribute('transform', `translate(${view.tx} ${view.ty}) scale(${view.k})`);
      driversG.style.setProperty('--r', dotRadiusPx(view.k) / view.k + 'px');
      ridingG.style.setProperty('--r', (dotRadiusPx(view.k) * 1.3) / view.k + 'px');
      // Dot grid spacing stays constant in metres within a zoom octave, so it moves with the ground.
      const g = 48 * Math.pow(2, ((Math.log2(view.k) % 1) + 1) % 1);
      const stage = $('stage').style;
      stage.backgroundSize = `${g}px ${g}px`;
      stage.backgroundPosition = `${view.tx % g}px ${view.ty % g}px`;
      updateScaleBar();
    });
  }

  function updateScaleBar() {
    $('scalebar').hidden = !origin;
    if (!origin) return;
    const { height } = svg.getBoundingClientRect();
    const lat = latAt((height / 2 - view.ty) / view.k);
    const metresPerPx = Math.cos(lat * RAD) / view.k; // Mercator metres are stretched by 1/cos(lat)
    let len = Math.pow(10, Math.floor(Math.log10(metresPerPx * 120)));
    for (const f of [5, 2]) if (len * f / metresPerPx <= 120) { len *= f; break; }
    $('scale-bar').style.width = Math.round(len / metresPerPx) + 'px';
    $('scale-label').textContent = len >= 1000 ? len / 1000 + ' km' : len + ' m';
  }

  function zoomAt(sx, sy, factor) {
    const k = clamp(view.k * factor, MIN_K, MAX_K);
    const f = k / view.k;
    view.tx = sx - (sx - view.tx) * f;
    view.ty = sy - (sy - view.ty) * f;
    view.k = k;
    applyView();
  }

  let fitAnimation = 0;
  function fit(animate) {
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (const { bbox } of cells.values()) {
      x0 = Math.min(x0, bbox[0]); y0 = Math.min(y0, bbox[1]); x1 = Math.max(x1, bbox[2]); y1 = Math.max(y1, bbox[3]);
    }
    for (const { x, y } of drivers.values()) {
      x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x); y1 = Math.max(y1, y);
    }
    if (!(x1 >= x0)) return;
    const { width, height } = svg.getBoundingClientRect();
    const p = FIT_PADDING;
    const availW = Math.max(100, width - p.left - p.right), availH = Math.max(100, height - p.top - p.bottom);
    const k = clamp(Math.min(availW / Math.max(x1 - x0, MIN_FIT_SPAN_M), availH / Math.max(y1 - y0, MIN_FIT_SPAN_M)), MIN_K, MAX_K);
    const target = { k, tx: p.left + availW / 2 - k * (x0 + x1) / 2, ty: p.top + availH / 2 - k * (y0 + y1) / 2 };
    cancelAnimationFrame(fitAnimation);
    if (!animate) { Object.assign(view, target); applyView(); return; }
    // Ease in log-space for zoom so large zoom changes feel uniform.
    const from = { ...view }, start = performance.now(), DURATION = 450;
    const step = (now) => {
      const t = Math.min(1, (now - start) / DURATION), e = 1 - Math.pow(1 - t, 3);
      view.k = from.k * Math.pow(target.k / from.k, e);
      // Interpolate the world point at the screen centre, so the motion is a straight glide.
      const cx = width / 2, cy = height / 2;
      const fx = (cx - from.tx) / from.k, fy = (cy - from.ty) / from.k;
      const tx = (cx - target.tx) / target.k, ty = (cy - target.ty) / target.k;
      view.tx = cx - (fx + (tx - fx) * e) * view.k;
      view.ty = cy - (fy + (ty - fy) * e) * view.k;
      applyView();
      if (t < 1) fitAnimation = requestAnimationFrame(step);
    };
    fitAnimation = requestAnimationFrame(step);
  }

  // Pointer handling: drag pans; a click without movement pins (or unpins on empty space).
  let drag = null;
  svg.addEventListener('pointerdown', (e) => {
    if (e.button !== 0) return;
    drag = { id: e.pointerId, x: e.clientX, y: e.clientY, tx: view.tx, ty: view.ty, moved: false };
  });
  svg.addEventListener('pointermove', (e) => {
    if (drag && drag.id === e.pointerId) {
      const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      if (!drag.moved && Math.hypot(dx, dy) > 4) {
        drag.moved = true;
        svg.setPointerCapture(e.pointerId);
        svg.classList.add('dragging');
        hideTooltip();
        cancelAnimationFrame(fitAnimation);
      }
      if (drag.moved) { view.tx = drag.tx + dx; view.ty = drag.ty + dy; applyView(); return; }
    }
    const cell = e.target.closest && e.target.closest('.cell');
    if (cell) showTooltip(cell.getAttribute('data-h3'), e.clientX, e.clientY);
    else if (hovered) hideTooltip();
  });
  const endDrag = (e) => {
    if (!drag || drag.id !== e.pointerId) return;
    if (!drag.moved && e.type === 'pointerup') {
      const cell = e.target.closest && e.target.closest('.cell');
      pin(cell ? cell.getAttribute('data-h3') : null);
    }
    drag = null;
    svg.classList.remove('dragging');
  };
  svg.addEventListener('pointerup', endDrag);
  svg.addEventListener('pointercancel', endDrag);
  svg.addEventListener('pointerleave', () => { if (!drag) hideTooltip(); });
  svg.addEventListener('wheel', (e) => {
    e.preventDefault();
    const px = e.deltaY * (e.deltaMode === 1 ? 16 : e.deltaMode === 2 ? 400 : 1); // normalise lines/pages
    const r = svg.getBoundingClientRect();
    zoomAt(e.clientX - r.left, e.clientY - r.top, Math.exp(-clamp(px, -300, 300) * 0.002));
  }, { passive: false });
  svg.addEventListener('dblclick', (e) => {
    const r = svg.getBoundingClientRect();
    zoomAt(e.clientX - r.left, e.clientY - r.top, e.shiftKey ? 0.5 : 2);
  });
  const zoomCentre = (f) => { const r = svg.getBoundingClientRect(); zoomAt(r.width / 2, r.height / 2, f); };
  $('zoom-in').addEventListener('click', () => zoomCentre(1.6));
  $('zoom-out').addEventListener('click', () => zoomCentre(1 / 1.6));
  $('fit').addEventListener('click', () => fit(true));
  $('panel-close').addEventListener('click', () => pin(null));
  document.addEventListener('keydown', (e) => {
    if (e.target instanceof HTMLInputElement || e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === 'Escape') { pin(null); showTrail(null); }
    else if (e.key === 'f' || e.key === 'F') fit(true);
    else if (e.key === '+' || e.key === '=') zoomCentre(1.6);
    else if (e.key === '-' || e.key === '_') zoomCentre(1 / 1.6);
  });
  addEventListener('resize', applyView);

  // ---------- relative times, refreshed every second ----------
  function tick() {
    $('last-update').textContent = lastEventAt ? '· updated ' + agoSecs(Math.round((Date.now() - lastEventAt) / 1000)) : '';
    for (const el of document.querySelectorAll('[data-ago]')) el.textContent = ago(Number(el.dataset.ago));
  }
  setInterval(tick, 1000);

  // ---------- connection ----------
  const STATE_LABELS = {
    connecting: 'Connecting…',
    live: 'Live',
    reconnecting: 'Reconnecting…',
    'no-key': 'No API key: open the URL pulse demo printed (…/map#key=pk_…)',
    refused: 'API key refused (revoked?)',
  };
  function setState(state) {
    pulseMap.connected = state === 'live';
    document.body.dataset.state = state;
    $('conn').textContent = STATE_LABELS[state];
  }

  function onEvent(full) {
    return (e) => {
      let msg;
      try { msg = JSON.parse(e.data); } catch (err) { console.warn('pulse map: ignoring malformed event', err); return; }
      if (full) streamSnapshotSeen = true;
      pulseMap.sseEvents++;
      document.body.dataset.sseEvents = String(pulseMap.sseEvents);
      lastEventAt = Date.now();
      setState('live');
      apply(msg, full);
    };
  }

  // The API key comes in the URL's fragment (`/map#key=pk_…`, as `pulse demo` prints it): a
  // fragment never reaches the server, and the page keeps the key only in this tab's session.
  function apiKey() {
    const fromHash = new URLSearchParams(location.hash.slice(1)).get('key');
    if (fromHash) {
      sessionStorage.setItem('pulse.apiKey', fromHash);
      history.replaceState(null, '', location.pathname + location.search);
      return fromHash;
    }
    return sessionStorage.getItem('pulse.apiKey');
  }
  const KEY = apiKey();
  const AUTH = KEY ? { 'X-API-Key': KEY } : {};

  // Server-Sent Events over fetch (EventSource cannot send the key header): `event:` and
  // `data:` lines, a blank line ends an event, `:` lines are keep-alives.
  async function readStream(res, handlers) {
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    let name = 'message';
    let data = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let newline;
      while ((newline = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, newline).replace(/\r$/, '');
        buffer = buffer.slice(newline + 1);
        if (line === '') {
          if (data.length && handlers[name]) handlers[name]({ data: data.join('\n') });
          name = 'message';
          data = [];
        } else if (line.startsWith('event:')) {
          name = line.slice(6).trim();
        } else if (line.startsWith('data:')) {
          data.push(line.slice(5).replace(/^ /, ''));
        }
      }
    }
  }

  let retryDelay = 1000;
  function retry() {
    setState('reconnecting');
    setTimeout(connect, retryDelay * (0.75 + Math.random() * 0.5));
    retryDelay = Math.min(retryDelay * 2, 15000);
  }
  function connect() {
    if (!KEY) {
      setState('no-key');
      return;
    }
    fetch(STREAM_URL, { headers: { ...AUTH, Accept: 'text/event-stream' }, cache: 'no-store' })
      .then((res) => {
        if (res.status === 401 || res.status === 403) {
          setState('refused');
          return null;
        }
        if (!res.ok || !res.body) throw new Error(`stream answered ${res.status}`);
        retryDelay = 1000;
        setState('live');
        return readStream(res, { snapshot: onEvent(true), update: onEvent(false) }).then(retry);
      })
      .catch(retry);
  }

  // ---------- the ledger ----------
  // The tenant's money, read every few seconds beside the stream: fares charged for finished
  // rides and the platform's commission on them (GET /api/v1/ledger/totals).
  const LEDGER_EVERY_MS = 5000;
  function money(minor, currency) {
    try {
      // Cents while the sums are small, whole units once they are not.
      const digits = Math.abs(minor) < 100000 ? 2 : 0;
      return new Intl.NumberFormat(undefined, { style: 'currency', currency, minimumFractionDigits: digits, maximumFractionDigits: digits }).format(minor / 100);
    } catch {
      return `${(minor / 100).toFixed(0)} ${currency}`;
    }
  }
  function readLedger() {
    if (!KEY) return;
    fetch('/api/v1/ledger/totals', { headers: AUTH, cache: 'no-store' })
      .then((res) => (res.ok ? res.json() : null))
      .then((totals) => {
        if (!totals) return;
        pulseMap.ledger = totals;
        $('t-charged').textContent = money(totals.charged_minor, totals.currency);
        $('t-charged').parentElement.title = `${fmt(totals.rides_charged)} rides charged; ${money(totals.held_minor, totals.currency)} held for rides under way; ${money(totals.topped_up_minor, totals.currency)} topped up`;
        $('t-revenue').textContent = money(totals.revenue_minor, totals.currency);
      })
      .catch(() => {}) // the map works without the wallet; the next read tries again
      .finally(() => setTimeout(readLedger, LEDGER_EVERY_MS));
  }

  // ---------- boot ----------
  const histBars = Array.from({ length: 10 }, (_, i) => {
    const bar = document.createElement('div');
    bar.style.background = colourFor(1.125 + i * 0.25);
    return $('histogram').appendChild(bar);
  });
  $('ramp').style.background = `linear-gradient(to right, ${STOPS.map(([m]) => `${colourFor(m)} ${((m - MIN_MULT) / (MAX_MULT - MIN_MULT)) * 100}%`).join(', ')})`;
  $('ticks').innerHTML = STOPS.map(([m]) => `<span style="left:${((m - MIN_MULT) / (MAX_MULT - MIN_MULT)) * 100}%">${m.toFixed(1)}×</span>`).join('');
  hideTooltip();
  applyView();
  render();

  // One plain fetch for a fast first paint; the stream's snapshot then takes over (no polling).
  fetch(CELLS_URL, { headers: AUTH, cache: 'no-store' })
    .then((res) => (res.ok ? res.json() : null))
    .then((msg) => { if (msg && !streamSnapshotSeen) apply(msg, true); })
    .catch(() => {}); // the stream is authoritative; a failed first paint is harmless
  connect();
  readLedger();
})();
