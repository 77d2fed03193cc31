#!/usr/bin/env node
// services.mjs - protocol-faithful fakes of the HTTP services baton's `http`
// and `netbox` connectors talk to, for tests/integration/test_conn_http.c.
// Only node's built-in modules; binds 127.0.0.1 only.
//
//   node services.mjs --port N [--netbox-token T] [--automation-token B]
//                     [--tls-cert PEM --tls-key PEM]
//
// Prints "listening PORT" once ready (N may be 0: any free port); with a
// certificate it also serves the same over HTTPS on a second free port and
// prints "listening PORT TLSPORT". Exits on
// SIGTERM, when stdin closes (the test that started it is gone), or after
// --lifetime-s seconds (default 900) as a last resort.
//
// Services (the shapes docs/connectors.md describes):
//   GET  /assets/?search=&os_type=&service_type=&is_active=&skip=&limit=
//        OpsConductor-style asset list {success, data:{assets, total, skip,
//        limit}}; at most PAGE_MAX per page whatever limit asks
//   GET  /assets/{id}                        one asset {success, data}
//   GET  /api/dcim/devices/                  NetBox devices  } ?q= name= role=
//   GET  /api/virtualization/virtual-machines/  NetBox VMs   } status= tag= site=
//        limit= offset=; {count, next, previous, results}; 401 without
//        "Authorization: Token <netbox-token>"; 400 for an unknown role,
//        tag or site slug, as NetBox does
//   POST /automation/execute-plan            runs a one-or-more-step plan;
//        tool "fail" fails (exit 3), tool "sleep" waits inputs.ms
//
// Test controls:
//   POST /_fault {"path_prefix", "mode", "count", "retry_after", "delay_ms"}
//        mode: down (socket closed at once), slow (answer after delay_ms),
//        flap503 (503), 429 (with Retry-After), badjson, huge (50 MB JSON,
//        streamed), reset (headers and part of the body, then RST), ctype
//        (text/html), foreign_next (NetBox next links to another host),
//        none (clears). count: how many requests it hits (absent: until
//        cleared). One fault per path_prefix.
//   GET  /_stats   {"requests": {path: n}} every request received, faulted too
//   GET  /_calls   {"calls": [{execution_id, tool, tenant_id, actor_id}]}
//                  plans that ran; "duplicates": execution_ids seen twice
//   POST /_reset   clears stats, calls and faults
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { URL } from 'node:url';

const PAGE_MAX = 10;
const BODY_MAX = 1 << 20;

function arg(name, dflt) {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : dflt;
}
const port = Number(arg('--port', '0'));
const netboxToken = arg('--netbox-token', 'nbx-test-token');
const automationToken = arg('--automation-token', '');
const lifetimeS = Number(arg('--lifetime-s', '900'));
const tlsCert = arg('--tls-cert', '');
const tlsKey = arg('--tls-key', '');

// ---- the inventory: 30 assets in baton's terms, served in each API's shape.
// [name, os, os_version, role, environment, active, dc, tags, cpu, ram_gb,
//  connection, services, physical]
const INVENTORY = [
  ['web-prd-01', 'linux', 'Debian 12', 'web', 'production', true, 'dc1', ['frontend', 'customer-facing'], 4, 8, 'ssh', ['nginx'], false],
  ['web-prd-02', 'linux', 'Debian 12', 'web', 'production', true, 'dc1', ['frontend', 'customer-facing'], 4, 8, 'ssh', ['nginx'], false],
  ['web-prd-03', 'linux', 'Debian 12', 'web', 'production', true, 'dc2', ['frontend'], 4, 8, 'ssh', ['nginx'], false],
  ['web-stg-01', 'linux', 'Debian 12', 'web', 'staging', true, 'dc2', ['frontend'], 2, 4, 'ssh', ['nginx'], false],
  ['web-dev-01', 'linux', 'Ubuntu 22.04', 'web', 'dev', true, 'dc2', [], 2, 4, 'ssh', ['nginx'], false],
  ['web-dev-02', 'linux', 'Ubuntu 22.04', 'web', 'dev', false, 'dc2', [], 2, 4, 'ssh', [], false],
  ['db-prd-01', 'linux', 'Debian 12', 'database', 'production', true, 'dc1', ['pci'], 16, 64, 'ssh', ['postgresql'], true],
  ['db-prd-02', 'linux', 'Debian 12', 'database', 'production', true, 'dc1', ['pci'], 16, 64, 'ssh', ['postgresql'], true],
  ['db-stg-01', 'linux', 'Debian 12', 'database', 'staging', true, 'dc2', [], 8, 32, 'ssh', ['postgresql'], false],
  ['db-dev-01', 'linux', 'Debian 12', 'database', 'dev', true, 'dc2', [], 4, 16, 'ssh', ['postgresql'], false],
  ['db-rpt-01', 'linux', 'Rocky Linux 9', 'database', 'production', true, 'dc2', ['reporting'], 8, 32, 'ssh', ['mariadb'], true],
  ['api-prd-01', 'linux', 'Debian 12', 'api', 'production', true, 'dc1', ['pci', 'customer-facing'], 8, 16, 'ssh', ['billing-api'], false],
  ['api-prd-02', 'linux', 'Debian 12', 'api', 'production', true, 'dc1', ['pci', 'customer-facing'], 8, 16, 'ssh', ['billing-api'], false],
  ['api-stg-01', 'linux', 'Debian 12', 'api', 'staging', true, 'dc2', [], 4, 8, 'ssh', ['billing-api'], false],
  ['api-dev-01', 'linux', 'Debian 12', 'api', 'dev', true, 'dc2', [], 2, 4, 'ssh', ['billing-api'], false],
  ['cache-prd-01', 'linux', 'Debian 12', 'cache', 'production', true, 'dc1', [], 4, 32, 'ssh', ['redis'], false],
  ['cache-prd-02', 'linux', 'Debian 12', 'cache', 'production', true, 'dc2', [], 4, 32, 'ssh', ['redis'], false],
  ['mon-01', 'linux', 'Debian 12', 'monitoring', 'production', true, 'dc1', ['ops'], 4, 16, 'ssh', ['prometheus', 'grafana'], false],
  ['ci-01', 'linux', 'Debian 12', 'ci', 'production', true, 'dc2', ['ops'], 8, 16, 'ssh', ['jenkins'], false],
  ['backup-01', 'linux', 'Debian 11', 'backup', 'production', false, 'dc2', ['ops'], 4, 8, 'ssh', ['bacula'], true],
  ['lb-prd-01', 'linux', 'Debian 12', 'loadbalancer', 'production', true, 'dc1', ['customer-facing'], 2, 4, 'ssh', ['haproxy'], true],
  ['file-01', 'linux', 'Debian 12', 'file', 'production', true, 'dc1', [], 4, 8, 'none', ['samba'], true],
  ['win-srv-01', 'windows', 'Windows Server 2022', 'directory', 'production', true, 'dc1', ['ad'], 4, 16, 'winrm', ['adds'], true],
  ['ws-win-01', 'windows', 'Windows 11 Pro', 'workstation', 'production', true, 'hq', [], 4, 16, 'winrm', [], true],
  ['ws-win-02', 'windows', 'Windows 11 Pro', 'workstation', 'production', true, 'hq', [], 4, 16, 'winrm', [], true],
  ['ws-win-03', 'windows', 'Windows 11 Pro', 'workstation', 'production', true, 'hq', [], 4, 16, 'winrm', [], true],
  ['ws-win-04', 'windows', 'Windows 11 Pro', 'workstation', 'production', true, 'hq', [], 4, 16, 'winrm', [], true],
  ['ws-win-05', 'windows', 'Windows 11 Pro', 'workstation', 'production', true, 'hq', [], 4, 16, 'winrm', [], true],
  ['ws-win-06', 'windows', 'Windows 11 Pro', 'workstation', 'production', false, 'hq', [], 4, 16, 'winrm', [], true],
  ['kiosk-01', 'windows', 'Windows 10', 'workstation', 'dev', true, 'hq', ['lobby'], 2, 4, 'none', [], true],
];

const ASSETS = INVENTORY.map((r, i) => {
  const [name, os, osVersion, role, env, active, dc, tags, cpu, ram, conn, services, physical] = r;
  return {
    id: i + 1, name, hostname: `${name}.example.internal`, ip: `10.20.${1 + (i % 4)}.${10 + i}`,
    os, osVersion, role, env, active, dc, tags, cpu, ram, conn, services, physical,
    owner: role === 'workstation' ? 'it-desk' : 'ops',
  };
});

function opsconductor(a) {
  return {
    id: a.id, name: a.name, hostname: a.hostname, ip_address: a.ip, description: `${a.role} ${a.name}`,
    tags: a.tags, device_type: a.role, os_type: a.os, os_version: a.osVersion,
    data_center: a.dc, status: a.active ? 'active' : 'inactive', environment: a.env,
    owner: a.owner, service_type: a.conn === 'winrm' ? 'winrm_https' : a.conn === 'ssh' ? 'ssh' : 'http',
    port: a.conn === 'winrm' ? 5986 : a.conn === 'ssh' ? 22 : 80, is_secure: a.conn !== 'none',
    is_active: a.active, cpu: a.cpu, ram_gb: a.ram, services: a.services,
    created_at: '2025-01-15T10:30:00Z',
  };
}

function slugify(s) { return s.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, ''); }

function netbox(a, base) {
  const kind = a.physical ? 'dcim/devices' : 'virtualization/virtual-machines';
  const rec = {
    id: a.id, url: `${base}/api/${kind}/${a.id}/`, display: a.name, name: a.name,
    role: { id: 1, slug: a.role, name: a.role },
    platform: { id: 1, slug: slugify(a.osVersion), name: a.osVersion },
    site: { id: 1, slug: a.dc, name: a.dc.toUpperCase() },
    status: { value: a.active ? 'active' : 'offline', label: a.active ? 'Active' : 'Offline' },
    primary_ip: { id: a.id, family: 4, address: `${a.ip}/24` },
    primary_ip4: { id: a.id, family: 4, address: `${a.ip}/24` },
    primary_ip6: null,
    tenant: { id: 1, slug: a.owner, name: a.owner },
    tags: a.tags.map((t) => ({ id: 1, slug: t, name: t })),
    description: `${a.role} ${a.name}`,
    custom_fields: {
      environment: a.env, connection: a.conn, services: a.services,
      hostname: a.hostname,
    },
  };
  if (a.physical) {
    rec.custom_fields.cpu = a.cpu;
    rec.custom_fields.ram_gb = a.ram;
  } else {
    rec.vcpus = a.cpu.toFixed(2); // NetBox sends a decimal string
    rec.memory = a.ram * 1024;    // MB
  }
  return rec;
}

// ---- state
let stats = {};
let calls = [];
let seen = new Set();
let duplicates = [];
let faults = new Map(); // path_prefix -> {mode, count, retry_after, delay_ms}

function sendJson(res, status, obj, headers = {}) {
  if (res.destroyed || res.writableEnded) return;
  const body = JSON.stringify(obj);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body), ...headers });
  res.end(body);
}

function readBody(req, cb) {
  const chunks = [];
  let size = 0;
  req.on('data', (c) => {
    size += c.length;
    if (size <= BODY_MAX) chunks.push(c);
  });
  let done = false;
  const finish = (v) => { if (!done) { done = true; cb(v); } };
  req.on('end', () => finish(size > BODY_MAX ? null : Buffer.concat(chunks).toString('utf8')));
  req.on('error', () => finish(null));
}

function faultFor(pathname) {
  for (const [prefix, f] of faults) {
    if (!pathname.startsWith(prefix)) continue;
    if (f.count === 0) continue;
    if (f.count > 0 && --f.count === 0) faults.delete(prefix);
    return f;
  }
  return null;
}

// Stream a JSON document of `total` bytes, minding backpressure, and stop
// as soon as the client goes away.
function streamHuge(res, total) {
  res.writeHead(200, { 'Content-Type': 'application/json' });
  const item = JSON.stringify({ name: 'x'.repeat(200), hostname: 'y', os_type: 'linux' }) + ',';
  const head = '{"success":true,"data":{"assets":[';
  const chunk = Buffer.from(item.repeat(Math.floor(65536 / item.length)));
  let sent = 0;
  res.write(head);
  const pump = () => {
    while (sent < total && !res.destroyed) {
      sent += chunk.length;
      if (!res.write(chunk)) return res.once('drain', pump);
    }
    if (!res.destroyed) res.end('{}],"total":1}}');
  };
  res.on('close', () => { sent = total; });
  pump();
}

// Apply a fault; true when it answered (or dropped) the request.
function applyFault(f, req, res, next) {
  switch (f.mode) {
    case 'down':
      req.socket.destroy();
      return true;
    case 'slow':
      // Runs the request late even if the client has given up, as a real
      // service would: a plan sent then still runs.
      setTimeout(next, f.delay_ms || 1000);
      return true;
    case 'flap503':
      sendJson(res, 503, { detail: 'service unavailable' },
        f.retry_after !== undefined ? { 'Retry-After': String(f.retry_after) } : {});
      return true;
    case '429':
      sendJson(res, 429, { detail: 'too many requests' }, { 'Retry-After': String(f.retry_after ?? 1) });
      return true;
    case 'badjson':
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end('{"success": true, "data": {"assets": [{"name": "web-01", ');
      return true;
    case 'huge':
      streamHuge(res, 50 * 1024 * 1024);
      return true;
    case 'reset': {
      const part = '{"success":true,"data":{"assets":[' + '{"name":"a"},'.repeat(150);
      res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': '100000' });
      res.write(part, () => {
        setTimeout(() => {
          if (typeof req.socket.resetAndDestroy === 'function') req.socket.resetAndDestroy();
          else req.socket.destroy();
        }, 20);
      });
      return true;
    }
    case 'ctype':
      res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
      res.end('<html><body><h1>Welcome to nginx!</h1></body></html>');
      return true;
    default:
      return false; // foreign_next and unknown modes act in the handlers
  }
}

// ---- the OpsConductor asset service
function assetsApi(req, res, url) {
  const m = url.pathname.match(/^\/assets\/(\d+)$/);
  if (m) {
    const a = ASSETS.find((x) => x.id === Number(m[1]));
    if (!a) return sendJson(res, 404, { success: false, detail: 'Asset not found' });
    return sendJson(res, 200, { success: true, data: opsconductor(a) });
  }
  if (url.pathname !== '/assets/' && url.pathname !== '/assets') {
    return sendJson(res, 404, { detail: 'Not Found' });
  }
  const p = url.searchParams;
  let list = ASSETS.map(opsconductor);
  const search = (p.get('search') || '').toLowerCase();
  if (search) {
    list = list.filter((a) => [a.name, a.hostname, a.ip_address].some((v) => v.toLowerCase().includes(search)));
  }
  if (p.get('os_type')) list = list.filter((a) => a.os_type === p.get('os_type').toLowerCase());
  if (p.get('service_type')) list = list.filter((a) => a.service_type === p.get('service_type'));
  if (p.get('is_active')) list = list.filter((a) => String(a.is_active) === p.get('is_active'));
  const skip = Math.max(0, Number(p.get('skip') || 0));
  const limit = Math.min(PAGE_MAX, Math.max(1, Number(p.get('limit') || PAGE_MAX)));
  sendJson(res, 200, { success: true, data: { assets: list.slice(skip, skip + limit), total: list.length, skip, limit } });
}

// ---- NetBox
function netboxApi(req, res, url, fault) {
  if (req.headers.authorization !== `Token ${netboxToken}`) {
    return sendJson(res, req.headers.authorization ? 403 : 401,
      { detail: req.headers.authorization ? 'Invalid token' : 'Authentication credentials were not provided.' });
  }
  const vm = url.pathname === '/api/virtualization/virtual-machines/';
  if (!vm && url.pathname !== '/api/dcim/devices/') return sendJson(res, 404, { detail: 'Not found.' });
  const base = `http://${req.headers.host}`;
  let list = ASSETS.filter((a) => a.physical !== vm).map((a) => netbox(a, base));
  const p = url.searchParams;
  const known = {
    role: new Set(ASSETS.map((a) => a.role)),
    tag: new Set(ASSETS.flatMap((a) => a.tags).concat(['unused-tag'])),
    site: new Set(ASSETS.map((a) => a.dc)),
  };
  for (const key of ['role', 'tag', 'site']) {
    const v = p.get(key);
    if (v && !known[key].has(v)) {
      return sendJson(res, 400, { [key]: [`Select a valid choice. ${v} is not one of the available choices.`] });
    }
  }
  const q = (p.get('q') || '').toLowerCase();
  if (q) {
    list = list.filter((r) => r.name.toLowerCase().includes(q) || r.description.toLowerCase().includes(q) ||
      r.primary_ip4.address.startsWith(q));
  }
  if (p.get('name')) list = list.filter((r) => r.name === p.get('name'));
  if (p.get('role')) list = list.filter((r) => r.role.slug === p.get('role'));
  if (p.get('status')) list = list.filter((r) => r.status.value === p.get('status'));
  if (p.get('tag')) list = list.filter((r) => r.tags.some((t) => t.slug === p.get('tag')));
  if (p.get('site')) list = list.filter((r) => r.site.slug === p.get('site'));
  const offset = Math.max(0, Number(p.get('offset') || 0));
  const limit = Math.min(PAGE_MAX, Math.max(1, Number(p.get('limit') || 50)));
  const link = (off) => {
    const u = new URL(url.pathname + url.search, fault && fault.mode === 'foreign_next' ? 'http://evil.example:81' : base);
    u.searchParams.set('offset', String(off));
    u.searchParams.set('limit', String(limit));
    return u.toString();
  };
  sendJson(res, 200, {
    count: list.length,
    next: offset + limit < list.length ? link(offset + limit) : null,
    previous: offset > 0 ? link(Math.max(0, offset - limit)) : null,
    results: list.slice(offset, offset + limit),
  });
}

// ---- the automation service
function automationApi(req, res, url, text) {
  if (url.pathname !== '/automation/execute-plan') return sendJson(res, 404, { detail: 'Not Found' });
  if (req.method !== 'POST') return sendJson(res, 405, { detail: 'Method Not Allowed' });
  if (automationToken && req.headers.authorization !== `Bearer ${automationToken}`) {
    return sendJson(res, 401, { detail: 'Not authenticated' });
  }
  {
    let plan;
    try { plan = JSON.parse(text); } catch { plan = null; }
    const steps = plan && plan.plan && Array.isArray(plan.plan.steps) ? plan.plan.steps : null;
    if (!plan || typeof plan.execution_id !== 'string' || !steps || steps.length === 0 ||
        !steps.every((s) => typeof s.tool === 'string' && s.inputs && typeof s.inputs === 'object')) {
      return sendJson(res, 422, { detail: 'execution_id and plan.steps[{tool, inputs}] are required' });
    }
    if (seen.has(plan.execution_id)) {
      duplicates.push(plan.execution_id);
      return sendJson(res, 409, { detail: `execution ${plan.execution_id} already ran` });
    }
    seen.add(plan.execution_id);
    calls.push({ execution_id: plan.execution_id, tool: steps[0].tool, tenant_id: plan.tenant_id ?? null, actor_id: plan.actor_id ?? null });
    let delay = 0;
    const results = [];
    let failed = null;
    for (const s of steps) {
      if (failed) break;
      if (s.tool === 'fail') {
        results.push({ tool: s.tool, status: 'failed', exit_code: 3, stdout: '', stderr: 'boom: step failed\nsecond line\n', duration_seconds: 0.004 });
        failed = `step ${results.length} (${s.tool}) failed with exit code 3`;
      } else {
        if (s.tool === 'sleep') delay += Number(s.inputs.ms || 0);
        results.push({ tool: s.tool, status: 'success', exit_code: 0, stdout: `ran ${s.tool} ${JSON.stringify(s.inputs)}\n`, stderr: '', duration_seconds: 0.012 });
      }
    }
    setTimeout(() => sendJson(res, 200, {
      execution_id: plan.execution_id, status: failed ? 'failed' : 'completed',
      step_results: results, error_message: failed,
    }), delay);
  }
}

// ---- test controls
function control(req, res, url, text) {
  if (url.pathname === '/_stats') return sendJson(res, 200, { requests: stats });
  if (url.pathname === '/_calls') return sendJson(res, 200, { calls, duplicates });
  if (url.pathname === '/_reset' && req.method === 'POST') {
    stats = {}; calls = []; seen = new Set(); duplicates = []; faults = new Map();
    return sendJson(res, 200, { ok: true });
  }
  if (url.pathname === '/_fault' && req.method === 'POST') {
    let f;
    try { f = JSON.parse(text); } catch { f = null; }
    if (!f || typeof f.path_prefix !== 'string' || typeof f.mode !== 'string') {
      return sendJson(res, 400, { detail: 'path_prefix and mode are required' });
    }
    if (f.mode === 'none') faults.delete(f.path_prefix);
    else faults.set(f.path_prefix, { mode: f.mode, count: f.count ?? -1, retry_after: f.retry_after, delay_ms: f.delay_ms });
    return sendJson(res, 200, { ok: true });
  }
  return sendJson(res, 404, { detail: 'Not Found' });
}

// Every request is counted on arrival and its body read whole (bounded)
// before a fault or a handler sees it.
function handle(req, res) {
  let url;
  try { url = new URL(req.url, 'http://127.0.0.1'); } catch { return sendJson(res, 400, { detail: 'bad URL' }); }
  const isControl = url.pathname.startsWith('/_');
  if (!isControl) stats[url.pathname] = (stats[url.pathname] || 0) + 1;
  readBody(req, (text) => {
    if (text === null) return sendJson(res, 413, { detail: 'body too large' });
    if (isControl) return control(req, res, url, text);
    const fault = faultFor(url.pathname);
    const route = () => {
      if (url.pathname.startsWith('/assets')) return assetsApi(req, res, url);
      if (url.pathname.startsWith('/api/')) return netboxApi(req, res, url, fault);
      if (url.pathname.startsWith('/automation/')) return automationApi(req, res, url, text);
      return sendJson(res, 404, { detail: 'Not Found' });
    };
    if (fault && applyFault(fault, req, res, route)) return;
    route();
  });
}

const servers = [http.createServer(handle)];
if (tlsCert) {
  servers.push(https.createServer({ cert: fs.readFileSync(tlsCert), key: fs.readFileSync(tlsKey) }, handle));
}
let ready = 0;
for (const [i, srv] of servers.entries()) {
  srv.keepAliveTimeout = 5000;
  srv.on('clientError', (err, socket) => socket.destroy());
  srv.on('tlsClientError', () => {});
  srv.listen(i === 0 ? port : 0, '127.0.0.1', () => {
    if (++ready === servers.length) {
      process.stdout.write(`listening ${servers.map((x) => x.address().port).join(' ')}\n`);
    }
  });
}

function quit() {
  for (const srv of servers) {
    srv.close();
    srv.closeAllConnections?.();
  }
  process.exit(0);
}
process.on('SIGTERM', quit);
process.on('SIGINT', quit);
process.stdin.on('end', quit);
process.stdin.on('error', quit);
process.stdin.resume();
setTimeout(quit, lifetimeS * 1000).unref();
