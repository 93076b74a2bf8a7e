// The live page: one EventSource on /events; each event is the snapshot JSON (seed or raw
// format). Network rates come from the byte counters of /metrics, read once per event, as
// the seed format has only rounded totals. History stays in the page (the last 5 minutes).
"use strict";

const HISTORY_MS = 5 * 60 * 1000;
const $ = (id) => document.getElementById(id);
const history = { cpu: [], mem: [], rx: [], tx: [] };
let updates = 0;
let lastNet = null;
let lastEventAt = 0;
let interval = 0;

const UNITS = ["B", "K", "M", "G", "T", "P", "E", "Z", "Y"];
function humanize(n) {
  let i = 0;
  while (i < UNITS.length - 1 && n >= 1024 ** (i + 1)) i++;
  return (n / 1024 ** i).toFixed(1) + UNITS[i];
}
function rate(n) {
  return humanize(n) + "/s";
}
const pct = (v) => (typeof v === "string" ? parseFloat(v) : v);

// Both formats, to one shape.
function normalize(s) {
  const out = { cpu: null, mem: null, net: null };
  const c = s.cpu;
  if (c) {
    const raw = c.utilization_percent !== undefined;
    out.cpu = {
      count: c.count,
      overall: raw ? c.utilization_percent : c.utilization.overall,
      cores: raw ? c.per_cpu.map((p) => p.utilization_percent) : c.utilization.per_cpu,
      mhz: raw ? c.frequency_current_mhz : c.frequency && c.frequency.current,
    };
  }
  const m = s.memory;
  if (m) {
    out.mem = m.virtual
      ? {
          used: pct(m.virtual.used), total: m.virtual.total, available: m.virtual.available,
          swapUsed: pct(m.swap.used), swapTotal: m.swap.total,
        }
      : {
          used: m.used_percent, total: humanize(m.total_bytes), available: humanize(m.available_bytes),
          swapUsed: m.swap_used_percent, swapTotal: humanize(m.swap_total_bytes),
        };
  }
  const n = s.network;
  if (n) {
    out.net = {
      sent: n.traffic ? n.traffic.sent : humanize(n.sent_bytes_total),
      recv: n.traffic ? n.traffic.recv : humanize(n.recv_bytes_total),
      addresses: n.addresses || {},
    };
  }
  return out;
}

function push(series, t, v) {
  series.push([t, v]);
  while (series.length && series[0][0] < t - HISTORY_MS) series.shift();
}

function draw(id, lines, max) {
  const canvas = $(id);
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  canvas.width = w * ratio;
  canvas.height = h * ratio;
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  g.clearRect(0, 0, w, h);
  // The newest point at the right edge; the width spans what is kept (10 s to 5 min).
  const all = lines.flatMap((l) => l.data);
  if (!all.length) return;
  const newest = Math.max(...all.map((p) => p[0]));
  const span = Math.min(HISTORY_MS, Math.max(10000, newest - Math.min(...all.map((p) => p[0]))));
  const top = max || Math.max(1, ...all.map((p) => p[1])) * 1.1;
  for (const line of lines) {
    if (line.data.length < 1) continue;
    const points = line.data.map(([t, v]) => [w - ((newest - t) / span) * w, h - 1 - (v / top) * (h - 3)]);
    g.beginPath();
    points.forEach(([x, y], i) => (i ? g.lineTo(x, y) : g.moveTo(x, y)));
    g.strokeStyle = line.color;
    g.lineWidth = 1.5;
    g.stroke();
    g.lineTo(points[points.length - 1][0], h);
    g.lineTo(points[0][0], h);
    g.closePath();
    g.globalAlpha = 0.15;
    g.fillStyle = line.color;
    g.fill();
    g.globalAlpha = 1;
  }
}

function text(id, value) {
  const el = $(id);
  if (el.textContent !== String(value)) el.textContent = value;
}

function render(snapshot) {
  const t = Date.parse(snapshot.timestamp) || Date.now();
  const s = normalize(snapshot);
  text("timestamp", snapshot.timestamp);
  $("timestamp").dateTime = snapshot.timestamp;
  if (s.cpu) {
    text("cpu-overall", s.cpu.overall.toFixed(1));
    text("cpu-count", s.cpu.count + " CPUs");
    text("cpu-freq", s.cpu.mhz ? s.cpu.mhz.toFixed(0) + " MHz" : "");
    const cores = $("cpu-cores");
    while (cores.children.length > s.cpu.cores.length) cores.lastChild.remove();
    s.cpu.cores.forEach((v, i) => {
      let bar = cores.children[i];
      if (!bar) {
        bar = document.createElement("div");
        bar.className = "core";
        bar.innerHTML = "<span></span><i></i>";
        cores.append(bar);
      }
      bar.title = "CPU " + i + ": " + v.toFixed(1) + "%";
      bar.firstChild.textContent = i;
      bar.lastChild.style.width = Math.min(100, v) + "%";
    });
    push(history.cpu, t, s.cpu.overall);
    draw("cpu-chart", [{ data: history.cpu, color: "#4aa3ff" }], 100);
  }
  $("cpu-card").hidden = !s.cpu;
  if (s.mem) {
    text("mem-used", s.mem.used.toFixed(1));
    text("mem-total", s.mem.total);
    text("mem-available", s.mem.available);
    text("swap-used", s.mem.swapUsed.toFixed(1) + "%");
    text("swap-total", s.mem.swapTotal);
    push(history.mem, t, s.mem.used);
    draw("mem-chart", [{ data: history.mem, color: "#b57bff" }], 100);
  }
  $("memory-card").hidden = !s.mem;
  if (s.net) {
    text("net-rx", s.net.recv);
    text("net-tx", s.net.sent);
    const dl = $("net-addresses");
    dl.replaceChildren();
    for (const [name, addrs] of Object.entries(s.net.addresses)) {
      const dt = document.createElement("dt");
      const dd = document.createElement("dd");
      dt.textContent = name;
      dd.textContent = addrs.join(", ");
      dl.append(dt, dd);
    }
    fetchRates(t);
  }
  $("network-card").hidden = !s.net;
  renderOthers(snapshot);
}

// Exact byte counters from /metrics (either name mode), summed over interfaces.
async function fetchRates(t) {
  let text;
  try {
    text = await (await fetch("metrics", { cache: "no-store" })).text();
  } catch (e) {
    return;
  }
  const sum = { rx: 0, tx: 0 };
  const re = /^(?:pocketses|node)_network_(receive|transmit)_bytes_total\{[^}]*\} (\S+)$/gm;
  for (const m of text.matchAll(re)) sum[m[1] === "receive" ? "rx" : "tx"] += Number(m[2]);
  if (lastNet && t > lastNet.t && sum.rx >= lastNet.rx && sum.tx >= lastNet.tx) {
    const dt = (t - lastNet.t) / 1000;
    const rx = (sum.rx - lastNet.rx) / dt, tx = (sum.tx - lastNet.tx) / dt;
    $("net-rx-rate").textContent = rate(rx);
    $("net-tx-rate").textContent = rate(tx);
    push(history.rx, t, rx);
    push(history.tx, t, tx);
    draw("net-chart", [{ data: history.rx, color: "#3fd18b" }, { data: history.tx, color: "#ffb347" }]);
  }
  lastNet = { t, ...sum };
}

// Sections this page has no card for (load, disks, ...): their values as a list.
function renderOthers(snapshot) {
  const known = new Set(["timestamp", "cpu", "memory", "network"]);
  for (const [name, value] of Object.entries(snapshot)) {
    if (known.has(name)) continue;
    let card = document.querySelector('[data-section="' + CSS.escape(name) + '"]');
    if (!card) {
      card = document.createElement("section");
      card.className = "card";
      card.dataset.section = name;
      card.innerHTML = "<h2></h2><dl></dl>";
      card.firstChild.textContent = name;
      $("cards").append(card);
    }
    const dl = card.querySelector("dl");
    dl.replaceChildren();
    const walk = (prefix, v, depth) => {
      if (v !== null && typeof v === "object" && depth < 3) {
        for (const [k, inner] of Object.entries(v)) walk(prefix ? prefix + " " + k : k, inner, depth + 1);
      } else {
        const dt = document.createElement("dt");
        const dd = document.createElement("dd");
        dt.textContent = prefix;
        dd.textContent = typeof v === "number" && !Number.isInteger(v) ? v.toFixed(2) : JSON.stringify(v);
        dl.append(dt, dd);
      }
    };
    walk("", value, 0);
  }
}

function status(state, label) {
  const el = $("status");
  el.className = "status " + state;
  el.textContent = label;
  $("banner").hidden = state !== "disconnected";
  document.body.classList.toggle("stale", state === "disconnected");
}

function connect() {
  const events = new EventSource("events");
  events.onmessage = (e) => {
    const now = Date.now();
    if (lastEventAt) interval = now - lastEventAt;
    lastEventAt = now;
    updates++;
    text("updates", updates);
    status("live", "live");
    render(JSON.parse(e.data));
  };
  // The browser reconnects on its own; until then the values are the last ones it got.
  events.onerror = () => status("disconnected", "disconnected");
}

// A connection that stays open but brings nothing (a stalled agent) counts as down too.
setInterval(() => {
  const late = Math.max(10000, 3 * interval);
  if (lastEventAt && Date.now() - lastEventAt > late) status("disconnected", "no news");
}, 1000);

text("host", location.host);
connect();
