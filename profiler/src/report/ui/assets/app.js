// rprof-bpf's profile viewer. Plain JavaScript, no build step, no
// dependencies: the server (report/ui/) aggregates, this page draws.
//
// Everything that selects what is shown lives in the page's URL, so a view
// can be shared: view, si (sample type), focus, ignore, hide, tf/ti (tag
// filters), noinlines, norm (normalized diff), z (flame graph zoom path,
// repeated), search, fn (function of the source and callers/callees views),
// sort, layout. Other parameters belong to the profile's source (the
// agent's pid and seconds) and are passed through untouched.
(function () {
  'use strict';

  const ROW = 18;
  const UI_ONLY = ['view', 'layout'];
  const VIEW_KEYS = ['si', 'focus', 'ignore', 'hide', 'tf', 'ti', 'noinlines', 'norm'];
  const $ = (id) => document.getElementById(id);

  let params = new URLSearchParams(location.search);
  let meta = null;
  let generation = 0;

  // --- URL state -----------------------------------------------------------

  function setParam(k, v) {
    if (v === null || v === undefined || v === '' || v === false) params.delete(k);
    else params.set(k, v === true ? '1' : String(v));
  }

  function pushState() {
    const q = params.toString();
    history.replaceState(null, '', q ? '?' + q : location.pathname);
  }

  function view() {
    return params.get('view') || 'overview';
  }

  function zoomPath() {
    return params.getAll('z');
  }

  // --- API -----------------------------------------------------------------

  function apiUrl(panel, extra) {
    const q = new URLSearchParams();
    for (const [k, v] of params) {
      if (!UI_ONLY.includes(k)) q.append(k, v);
    }
    if (meta) q.set('snap', meta.snap);
    for (const [k, v] of Object.entries(extra || {})) {
      q.delete(k);
      if (Array.isArray(v)) v.forEach((x) => q.append(k, x));
      else if (v !== null && v !== undefined) q.set(k, v);
    }
    return 'api/' + panel + '?' + q.toString();
  }

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function getJSON(url) {
    const r = await fetch(url, { credentials: 'same-origin' });
    let body;
    try {
      body = await r.json();
    } catch (e) {
      throw new ApiError(r.status, r.status + ' ' + r.statusText);
    }
    if (!r.ok) throw new ApiError(r.status, body.error || r.statusText);
    return body;
  }

  // --- Messages ------------------------------------------------------------

  function message(kind, text) {
    const d = document.createElement('div');
    d.className = kind;
    d.textContent = text;
    $('messages').appendChild(d);
  }

  function clearMessages() {
    $('messages').textContent = '';
  }

  // --- Value formatting (tooltips; tables use the server's strings) --------

  const TIME = [['ns', 1], ['us', 1e3], ['ms', 1e6], ['s', 1e9], ['hrs', 3.6e12]];
  const BYTES = [['B', 1], ['kB', 1024], ['MB', 1048576], ['GB', 1073741824], ['TB', 1099511627776]];

  function fmtValue(v, unit) {
    const u = (unit || '').toLowerCase();
    let table = null;
    let base = 1;
    if (/^(nanosecond|ns)/.test(u)) table = TIME;
    else if (/^(microsecond|us)/.test(u)) { table = TIME; base = 1e3; }
    else if (/^(millisecond|ms)/.test(u)) { table = TIME; base = 1e6; }
    else if (/^(second|s)$|^seconds$/.test(u)) { table = TIME; base = 1e9; }
    else if (/^(byte|b)s?$/.test(u)) table = BYTES;
    if (!table) {
      const n = Number(v).toLocaleString('en-US');
      return u && u !== 'count' ? n + ' ' + unit : n;
    }
    const x = v * base;
    let best = table[0];
    for (const t of table) if (Math.abs(x) >= t[1]) best = t;
    const s = (x / best[1]).toFixed(2).replace(/\.?0+$/, '');
    return s + best[0];
  }

  function pct(v, total) {
    if (!total) return '';
    return (100 * v / total).toFixed(2) + '%';
  }

  // --- Colours ---------------------------------------------------------------

  function hash(s) {
    let h = 2166136261;
    for (let i = 0; i < s.length; i++) {
      h ^= s.charCodeAt(i);
      h = Math.imul(h, 16777619);
    }
    return h >>> 0;
  }

  function plainName(label) {
    return label.replace(/ \(inline\)$/, '');
  }

  // Warm colours by name; inlined frames in violet so they stand out;
  // search matches in magenta.
  function frameColor(fr, diff, normTotals) {
    if (fr.matched) return '#e040c8';
    if (fr.name === 'root') return '#c8c8c8';
    if (diff) {
      // Red grew, blue shrank, grey unchanged; stronger is more change.
      const a = fr.value;
      const b = fr.base;
      const m = Math.max(a, b);
      const r = m ? (a - b) / m : 0;
      const k = Math.min(1, Math.abs(r));
      if (Math.abs(r) < 0.02) return 'rgb(200,200,200)';
      if (r > 0) return 'rgb(' + Math.round(255) + ',' + Math.round(200 - 160 * k) + ',' + Math.round(200 - 160 * k) + ')';
      return 'rgb(' + Math.round(200 - 160 * k) + ',' + Math.round(200 - 120 * k) + ',255)';
    }
    const h = hash(plainName(fr.name));
    if (fr.inline) return 'hsl(' + (255 + (h % 30)) + ',55%,' + (72 + (h >> 8) % 10) + '%)';
    return 'hsl(' + (h % 50 + 5) + ',' + (70 + (h >> 8) % 25) + '%,' + (55 + (h >> 16) % 15) + '%)';
  }

  // --- Flame graph ---------------------------------------------------------

  // Draws the frames one API answer sent, on a canvas. `opts.inverted`
  // puts the root at the bottom; `opts.onClick(frame)` gets clicks.
  class FlameGraph {
    constructor(el, opts) {
      this.el = el;
      this.opts = opts || {};
      this.canvas = document.createElement('canvas');
      this.el.textContent = '';
      this.el.appendChild(this.canvas);
      this.frames = [];
      this.byDepth = [];
      this.hover = null;
      this.canvas.addEventListener('mousemove', (e) => this.onMove(e));
      this.canvas.addEventListener('mouseleave', () => this.onLeave());
      this.canvas.addEventListener('click', (e) => {
        const f = this.hit(e);
        if (f && this.opts.onClick) this.opts.onClick(f, this);
      });
    }

    width() {
      return Math.max(100, this.el.clientWidth || 1000);
    }

    // Lays out the answer: each frame's x within its parent, in value units.
    setData(data, diff) {
      this.data = data;
      this.diff = diff;
      const names = data.names;
      const frames = [];
      const childX = [];
      const parents = [];
      const zoom = data.zoom;
      let full = 0;
      let maxDepth = 0;
      for (const a of data.frames) {
        const fr = {
          name: names[a[0]], depth: a[1], value: a[2], base: a[3],
          self: a[4], selfBase: a[5], inline: !!a[6], matched: !!a[7],
        };
        fr.w = fr.value + fr.base;
        const d = fr.depth;
        fr.parent = d > 0 ? parents[d - 1] : null;
        if (d <= zoom) {
          fr.x = 0;
          if (d === zoom) full = fr.w;
          fr.ancestor = d < zoom;
        } else {
          fr.x = childX[d] || 0;
          childX[d] = fr.x + fr.w;
        }
        childX[d + 1] = fr.x;
        parents[d] = fr;
        maxDepth = Math.max(maxDepth, d);
        frames.push(fr);
      }
      this.full = full || 1;
      this.maxDepth = maxDepth;
      this.frames = frames;
      this.draw();
    }

    draw() {
      const W = this.width();
      const H = (this.maxDepth + 1) * ROW + 2;
      const dpr = window.devicePixelRatio || 1;
      const c = this.canvas;
      c.width = Math.round(W * dpr);
      c.height = Math.round(H * dpr);
      c.style.width = W + 'px';
      c.style.height = H + 'px';
      const ctx = c.getContext('2d');
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.fillStyle = '#ffffff';
      ctx.fillRect(0, 0, W, H);
      ctx.font = '12px ui-monospace, "DejaVu Sans Mono", monospace';
      ctx.textBaseline = 'middle';
      const scale = W / this.full;
      this.byDepth = [];
      for (const fr of this.frames) {
        const full = fr.depth <= this.data.zoom;
        fr.px = full ? 0 : fr.x * scale;
        fr.pw = full ? W : fr.w * scale;
        fr.py = this.opts.inverted ? (this.maxDepth - fr.depth) * ROW : fr.depth * ROW;
        (this.byDepth[fr.depth] = this.byDepth[fr.depth] || []).push(fr);
        if (fr.pw < 0.5) continue;
        ctx.fillStyle = fr.ancestor ? '#e4e4e4' : frameColor(fr, this.diff);
        ctx.fillRect(fr.px, fr.py, Math.max(fr.pw - 1, 0.5), ROW - 1);
        if (fr.inline && fr.pw > 4) {
          // Inlined frames: a dashed top edge, besides their colour.
          ctx.strokeStyle = '#6639ba';
          ctx.setLineDash([3, 2]);
          ctx.beginPath();
          ctx.moveTo(fr.px, fr.py + 0.5);
          ctx.lineTo(fr.px + fr.pw - 1, fr.py + 0.5);
          ctx.stroke();
          ctx.setLineDash([]);
        }
        if (fr.pw > 28) {
          ctx.fillStyle = '#111';
          const room = Math.floor((fr.pw - 6) / 7.2);
          let t = fr.name;
          if (t.length > room) t = t.slice(0, Math.max(room - 1, 1)) + '…';
          ctx.save();
          ctx.beginPath();
          ctx.rect(fr.px, fr.py, fr.pw - 1, ROW);
          ctx.clip();
          ctx.fillText(t, fr.px + 3, fr.py + ROW / 2);
          ctx.restore();
        }
      }
      if (this.hover) this.outline(this.hover);
    }

    outline(fr) {
      const ctx = this.canvas.getContext('2d');
      ctx.strokeStyle = '#000';
      ctx.lineWidth = 1;
      ctx.strokeRect(fr.px + 0.5, fr.py + 0.5, Math.max(fr.pw - 2, 1), ROW - 2);
    }

    hit(e) {
      const r = this.canvas.getBoundingClientRect();
      const x = e.clientX - r.left;
      const y = e.clientY - r.top;
      let depth = Math.floor(y / ROW);
      if (this.opts.inverted) depth = this.maxDepth - depth;
      const row = this.byDepth[depth] || [];
      for (const fr of row) {
        if (x >= fr.px && x < fr.px + Math.max(fr.pw, 1)) return fr;
      }
      return null;
    }

    onMove(e) {
      const fr = this.hit(e);
      if (fr !== this.hover) {
        this.hover = fr;
        this.draw();
      }
      const tip = $('tooltip');
      if (!fr) {
        tip.hidden = true;
        return;
      }
      tip.textContent = '';
      const b = document.createElement('b');
      b.textContent = fr.name;
      tip.appendChild(b);
      const total = this.data.total;
      const unit = this.data.unit;
      const line = (text, cls) => {
        const d = document.createElement('div');
        d.textContent = text;
        if (cls) d.className = cls;
        tip.appendChild(d);
      };
      if (this.diff) {
        const delta = fr.value - fr.base;
        line('base ' + fmtValue(fr.base, unit) + ' → new ' + fmtValue(fr.value, unit));
        line('change ' + (delta >= 0 ? '+' : '') + fmtValue(delta, unit) + ' (' +
          (delta >= 0 ? '+' : '') + pct(delta, total) + ' of the base total)', delta > 0 ? 'grew' : delta < 0 ? 'shrank' : '');
      } else {
        line(fmtValue(fr.value, unit) + ' (' + pct(fr.value, total) + ' of the total)');
        if (fr.self) line('self ' + fmtValue(fr.self, unit) + ' (' + pct(fr.self, total) + ')');
      }
      if (fr.inline) line('inlined into its caller');
      tip.hidden = false;
      const x = Math.min(e.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
      const y = e.clientY + 16 + tip.offsetHeight > window.innerHeight ? e.clientY - tip.offsetHeight - 8 : e.clientY + 16;
      tip.style.left = x + 'px';
      tip.style.top = y + 'px';
    }

    onLeave() {
      $('tooltip').hidden = true;
      if (this.hover) {
        this.hover = null;
        this.draw();
      }
    }

    // The names from the root's child down to `fr`.
    pathTo(fr) {
      const out = [];
      for (let f = fr; f && f.depth > 0; f = f.parent) out.unshift(f.name);
      return out;
    }

    // Where each drawn frame is on the page (for tests and tools).
    rects() {
      const r = this.canvas.getBoundingClientRect();
      return this.frames.filter((f) => f.pw >= 0.5).map((f) => ({
        name: f.name, depth: f.depth, value: f.value, base: f.base,
        x: r.left + f.px, y: r.top + f.py, w: f.pw, h: ROW - 1,
        inline: f.inline, matched: f.matched, ancestor: !!f.ancestor,
      }));
    }
  }

  const graphs = {};

  function graph(id, opts) {
    if (!graphs[id]) graphs[id] = new FlameGraph($(id), opts);
    return graphs[id];
  }

  // --- Panels --------------------------------------------------------------

  async function loadFlame() {
    const el = $('flame');
    const g = graph('flame', { onClick: (fr, gr) => zoomTo(fr.depth === 0 ? [] : gr.pathTo(fr)) });
    g.opts.inverted = params.get('layout') === 'flame';
    const data = await getJSON(apiUrl('flame', { w: String(Math.round(g.width())) }));
    if (!data.frames.length || (data.shown === 0 && data.shown_base === 0)) {
      el.textContent = '';
      const d = document.createElement('div');
      d.className = 'empty';
      d.textContent = 'No samples to draw with these filters.';
      el.appendChild(d);
      graphs.flame = null;
      return;
    }
    g.setData(data, meta.diff);
    $('crumbs').textContent = data.path.length ? 'zoom: ' + data.path.join(' → ') : '';
    $('unzoom').disabled = !data.path.length;
    const m = $('matched');
    if (data.matched) {
      m.textContent = 'matched ' + data.matched.text + ' (' + data.matched.pct + ' of the total)';
      m.dataset.pct = data.matched.pct;
    } else {
      m.textContent = '';
      delete m.dataset.pct;
    }
  }

  function zoomTo(path) {
    params.delete('z');
    for (const p of path) params.append('z', p);
    pushState();
    run(loadFlame);
  }

  function cell(tr, text, cls) {
    const td = document.createElement('td');
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function fnLink(name, label) {
    const a = document.createElement('a');
    a.className = 'fn';
    a.textContent = label || name;
    a.title = 'Callers and callees of ' + name;
    a.addEventListener('click', () => show('peek', name));
    return a;
  }

  async function loadTop() {
    const data = await getJSON(apiUrl('top'));
    $('top-header').textContent = data.header.join('\n');
    for (const th of document.querySelectorAll('#top th[data-sort]')) {
      th.classList.toggle('sorted', th.dataset.sort === data.sort);
    }
    const body = document.querySelector('#top tbody');
    body.textContent = '';
    for (const r of data.rows) {
      const tr = document.createElement('tr');
      cell(tr, r.flat, 'num');
      cell(tr, r.flat_pct, 'num');
      cell(tr, r.sum_pct, 'num');
      cell(tr, r.cum, 'num');
      cell(tr, r.cum_pct, 'num');
      const td = cell(tr, '', 'name');
      td.appendChild(fnLink(r.name));
      if (r.inline) {
        const s = document.createElement('span');
        s.className = 'inl';
        s.textContent = ' ' + r.inline;
        td.appendChild(s);
      }
      const src = document.createElement('a');
      src.className = 'src';
      src.textContent = 'source';
      src.addEventListener('click', () => show('source', r.name));
      td.appendChild(src);
      body.appendChild(tr);
    }
    for (const w of data.warnings) message('warning', w);
  }

  function fillDirect(id, list) {
    const body = document.querySelector('#' + id + ' tbody');
    body.textContent = '';
    for (const r of list) {
      const tr = document.createElement('tr');
      const td = cell(tr, '');
      td.appendChild(fnLink(plainName(r.name), r.name));
      cell(tr, r.value, 'num');
      cell(tr, r.pct, 'num');
      body.appendChild(tr);
    }
    if (!list.length) {
      const tr = document.createElement('tr');
      cell(tr, '(none)');
      body.appendChild(tr);
    }
  }

  async function loadPeek() {
    const fn = params.get('fn');
    $('peek-title').textContent = fn ? fn : 'Pick a function in the top table or the flame graph';
    if (!fn) return;
    const width = $('peek-callers-flame').clientWidth || 1000;
    const data = await getJSON(apiUrl('peek', { w: String(Math.round(width)) }));
    fillDirect('peek-callers', data.direct_callers);
    fillDirect('peek-callees', data.direct_callees);
    const onClick = (fr) => {
      if (fr.depth > 1) show('peek', plainName(fr.name));
    };
    for (const [id, frames] of [['peek-callers-flame', data.callers], ['peek-callees-flame', data.callees]]) {
      const g = graph(id, { onClick });
      frames.total = data.total;
      frames.unit = data.unit;
      g.setData(frames, meta.diff);
    }
  }

  async function loadSource() {
    const fn = params.get('fn');
    const box = $('source');
    box.textContent = '';
    $('source-title').textContent = fn ? fn : 'Pick a function in the top table';
    if (!fn) return;
    const data = await getJSON(apiUrl('source'));
    for (const f of data.files) {
      const div = document.createElement('div');
      div.className = 'source-file';
      const h = document.createElement('h3');
      h.textContent = f.file || '(no file name)';
      div.appendChild(h);
      if (f.error) {
        const p = document.createElement('div');
        p.className = 'source-missing';
        p.textContent = 'Source not readable here: ' + f.error + ' (per-line values without the text)';
        div.appendChild(p);
      }
      const t = document.createElement('table');
      const head = document.createElement('tr');
      for (const [name, cls] of [['flat', 'num'], ['cum', 'num'], ['line', 'num'], ['', '']]) {
        const th = document.createElement('th');
        th.textContent = name;
        if (cls) th.className = cls;
        head.appendChild(th);
      }
      t.appendChild(head);
      for (const l of f.lines) {
        if (f.error && !l.flat && !l.cum) continue;
        const tr = document.createElement('tr');
        if (l.flat || l.cum) tr.className = 'hot';
        cell(tr, l.flat, 'num');
        cell(tr, l.cum, 'num');
        cell(tr, String(l.n), 'ln');
        cell(tr, l.text === null ? '' : l.text, 'text');
        t.appendChild(tr);
      }
      div.appendChild(t);
      box.appendChild(div);
    }
  }

  // --- Controls ------------------------------------------------------------

  function fillControls() {
    const si = $('si');
    si.textContent = '';
    for (const t of meta.sample_types) {
      const o = document.createElement('option');
      o.value = t.type;
      o.textContent = t.type + (t.unit && t.unit !== 'count' ? ' (' + t.unit + ')' : '');
      si.appendChild(o);
    }
    si.value = params.get('si') || meta.default_type;
    for (const k of ['focus', 'ignore', 'hide', 'tf', 'ti']) $(k).value = params.get(k) || '';
    $('noinlines').checked = params.get('noinlines') === '1';
    $('norm-label').hidden = !meta.diff;
    $('norm').checked = params.get('norm') === '1';
    $('search').value = params.get('search') || '';
    $('flamelayout').checked = params.get('layout') === 'flame';
    const list = $('tags');
    list.textContent = '';
    let n = 0;
    for (const [key, info] of Object.entries(meta.labels)) {
      for (const v of info.values) {
        if (n++ > 1000) break;
        const o = document.createElement('option');
        o.value = key + '=' + (info.numeric ? v : '^' + v.replace(/[.*+?^${}()|[\]\\]/g, '\\$&') + '$');
        list.appendChild(o);
      }
    }
    $('title').textContent = meta.title;
    document.title = meta.title + ' · rprof-bpf';
    $('legend').textContent = '';
    if (meta.diff) {
      const lg = $('legend');
      for (const [c, t] of [['rgb(255,60,60)', 'grew'], ['rgb(60,100,255)', 'shrank'], ['rgb(200,200,200)', 'unchanged']]) {
        const i = document.createElement('i');
        i.style.background = c;
        lg.appendChild(i);
        lg.appendChild(document.createTextNode(t));
      }
    }
  }

  function readControls() {
    const si = $('si').value;
    setParam('si', si === meta.default_type ? null : si);
    for (const k of ['focus', 'ignore', 'hide', 'tf', 'ti']) setParam(k, $(k).value.trim());
    setParam('noinlines', $('noinlines').checked);
    setParam('norm', meta.diff && $('norm').checked);
  }

  function show(v, fn) {
    setParam('view', v === 'overview' ? null : v);
    if (fn !== undefined) setParam('fn', fn);
    pushState();
    render();
  }

  // --- Rendering -----------------------------------------------------------

  async function run(fn) {
    const gen = ++generation;
    document.body.dataset.state = 'loading';
    try {
      await fn();
      if (gen === generation) document.body.dataset.state = 'ready';
    } catch (e) {
      if (e instanceof ApiError && e.status === 404 && /snapshot/.test(e.message)) {
        meta = null;
        return render();
      }
      message('error', e.message);
      if (gen === generation) document.body.dataset.state = 'error';
    }
  }

  async function loadMeta() {
    if (meta) return;
    meta = await getJSON(apiUrl('meta'));
    fillControls();
  }

  function render() {
    clearMessages();
    const v = view();
    document.body.dataset.view = v;
    for (const b of document.querySelectorAll('#tabs button')) {
      b.classList.toggle('active', b.dataset.view === v);
    }
    return run(async () => {
      await loadMeta();
      const jobs = [];
      if (v === 'overview' || v === 'flame') jobs.push(loadFlame());
      if (v === 'overview' || v === 'top') jobs.push(loadTop());
      if (v === 'peek') jobs.push(loadPeek());
      if (v === 'source') jobs.push(loadSource());
      await Promise.all(jobs);
    });
  }

  function wire() {
    for (const b of document.querySelectorAll('#tabs button')) {
      b.addEventListener('click', () => show(b.dataset.view));
    }
    $('controls').addEventListener('submit', (e) => {
      e.preventDefault();
      readControls();
      params.delete('z');
      pushState();
      render();
    });
    for (const id of ['si', 'noinlines', 'norm']) {
      $(id).addEventListener('change', () => $('controls').requestSubmit());
    }
    $('reset').addEventListener('click', () => {
      for (const k of VIEW_KEYS.concat(['z', 'search', 'fn', 'sort'])) params.delete(k);
      pushState();
      fillControls();
      render();
    });
    $('unzoom').addEventListener('click', () => zoomTo([]));
    let timer = null;
    $('search').addEventListener('input', () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        setParam('search', $('search').value);
        pushState();
        clearMessages();
        run(loadFlame);
      }, 200);
    });
    $('flamelayout').addEventListener('change', () => {
      setParam('layout', $('flamelayout').checked ? 'flame' : null);
      pushState();
      run(loadFlame);
    });
    for (const th of document.querySelectorAll('#top th[data-sort]')) {
      th.addEventListener('click', () => {
        setParam('sort', th.dataset.sort === 'cum' ? 'cum' : null);
        pushState();
        run(loadTop);
      });
    }
    let resize = null;
    window.addEventListener('resize', () => {
      clearTimeout(resize);
      resize = setTimeout(() => {
        if (view() === 'overview' || view() === 'flame') run(loadFlame);
      }, 250);
    });
  }

  // For tests and scripts: where things are drawn, and the state.
  window.rprof = {
    frames: (id) => (graphs[id || 'flame'] ? graphs[id || 'flame'].rects() : []),
    params: () => params.toString(),
    meta: () => meta,
  };

  wire();
  render();
})();
