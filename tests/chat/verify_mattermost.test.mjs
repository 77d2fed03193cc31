// The Mattermost fake (tests/fakes/mattermost.mjs) against Mattermost's
// official JavaScript client, @mattermost/client (Client4 and
// WebSocketClient), installed by the chat_npm fixture into BATON_CHAT_DIR.
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, test } from 'node:test';
import { createRequire } from 'node:module';
import path from 'node:path';
import { startMattermost } from '../fakes/mattermost.mjs';

const CHAT_DIR = process.env.BATON_CHAT_DIR;
if (!CHAT_DIR)
  throw new Error('BATON_CHAT_DIR is not set (run the chat tests through ctest)');
const require = createRequire(path.join(CHAT_DIR, 'package.json'));
const { Client4, ClientError, WebSocketClient } = require('@mattermost/client');
const WS = require('ws');

/* WebSocketClient is written for browsers: it uses the global WebSocket (and
 * CloseEvent when it gives up on a connection). Node 18 and 20 have neither,
 * so Node users provide them, as here, from ws. */
if (typeof globalThis.WebSocket === 'undefined')
  globalThis.WebSocket = WS.WebSocket;
if (typeof globalThis.CloseEvent === 'undefined') {
  globalThis.CloseEvent = class CloseEvent extends Event {
    constructor(type, init = {}) {
      super(type);
      this.code = init.code ?? 0;
      this.reason = init.reason ?? '';
      this.wasClean = !!init.wasClean;
    }
  };
}

const BOT_TOKEN = 'mm-verify-bot-token';
const ALICE_TOKEN = 'mm-verify-alice-token';
const BOT = 'botbotbotbotbotbotbotbot01';
const ALICE = 'alicealicealicealicealic01';
const BOB = 'bobbobbobbobbobbobbobbob01';
const TOWN = 'townsquaretownsquaretown01';

let mm;
let api;
let integration;
const hits = [];          // requests the integration server received
let integrationAnswer = () => ({ status: 200, body: {} });
const clients = [];       // WebSocketClients to close

/* promise, or an error naming what after ms. */
async function within(promise, ms, what) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

function wsUrl() {
  return `${mm.url.replace(/^http/, 'ws')}/api/v4/websocket`;
}

/* A WebSocketClient that records what it gets. */
function client(config = {}) {
  const c = new WebSocketClient({ minWebSocketRetryTime: 300, reconnectJitterRange: 100, ...config });
  const rec = { c, events: [], firstConnects: 0, reconnects: 0, missed: 0, closes: 0 };
  c.addMessageListener((msg) => rec.events.push(msg));
  c.addFirstConnectListener(() => { rec.firstConnects += 1; });
  c.addReconnectListener(() => { rec.reconnects += 1; });
  c.addMissedMessageListener(() => { rec.missed += 1; });
  c.addCloseListener(() => { rec.closes += 1; });
  clients.push(c);
  return rec;
}

before(async () => {
  mm = await startMattermost({ botToken: BOT_TOKEN, botUserId: BOT, botUsername: 'baton',
    users: { [ALICE]: 'alice', [BOB]: 'bob' }, userTokens: { [ALICE_TOKEN]: ALICE },
    channels: { [TOWN]: { name: 'town-square', display_name: 'Town Square', type: 'O' } } });
  api = new Client4();
  api.setUrl(mm.url);
  api.setToken(BOT_TOKEN);
  integration = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const raw = Buffer.concat(chunks).toString('utf8');
      hits.push({ method: req.method, url: req.url, headers: req.headers, body: JSON.parse(raw) });
      const { status, body } = integrationAnswer(JSON.parse(raw));
      const text = typeof body === 'string' ? body : JSON.stringify(body);
      res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
      res.end(text);
    });
  });
  await new Promise((resolve) => integration.listen(0, '127.0.0.1', resolve));
});

after(async () => {
  for (const c of clients) {
    try {
      c.close();
    } catch (e) { /* already closed */ }
  }
  if (integration) {
    integration.closeAllConnections?.();
    await new Promise((resolve) => integration.close(() => resolve()));
  }
  if (mm)
    await mm.close();
});

test('Client4: getMe, getUser; a bad token is a 401 with a Mattermost error body', async () => {
  const me = await api.getMe();
  assert.equal(me.id, BOT);
  assert.equal(me.username, 'baton');
  assert.equal(me.is_bot, true);
  const alice = await api.getUser(ALICE);
  assert.equal(alice.username, 'alice');
  const bad = new Client4();
  bad.setUrl(mm.url);
  bad.setToken('nope');
  await assert.rejects(bad.getMe(), (e) => e instanceof ClientError && e.status_code === 401
    && e.server_error_id === 'api.context.session_expired.app_error' && /session/.test(e.message));
});

let ws1;
test('WebSocketClient: authentication_challenge, hello (seq 0), then posted events with post as a JSON string', async () => {
  ws1 = client();
  ws1.c.initialize(wsUrl(), BOT_TOKEN);
  const hello = await mm.waitFor(() => ws1.events.find((e) => e.event === 'hello'), 5000, 'hello');
  assert.equal(hello.seq, 0);
  assert.match(hello.data.connection_id, /^[a-z0-9]{26}$/);
  assert.equal(hello.broadcast.user_id, BOT);
  assert.equal(ws1.c.connectionId, hello.data.connection_id);
  assert.equal(ws1.firstConnects, 1);

  const p = mm.post({ user: ALICE, channel: TOWN, message: '@baton restart web-01' });
  const ev = await mm.waitFor(() => ws1.events.find((e) => e.event === 'posted'), 5000, 'posted');
  assert.equal(ev.seq, 1);
  assert.equal(typeof ev.data.post, 'string');
  const post = JSON.parse(ev.data.post);
  assert.equal(post.id, p.id);
  assert.equal(post.user_id, ALICE);
  assert.equal(post.message, '@baton restart web-01');
  assert.equal(post.channel_id, TOWN);
  assert.equal(ev.data.channel_type, 'O');
  assert.equal(ev.data.channel_name, 'town-square');
  assert.equal(ev.data.sender_name, '@alice');
  assert.deepEqual(JSON.parse(ev.data.mentions), [BOT]);
  assert.equal(ev.broadcast.channel_id, TOWN);
  /* No mention: no mentions field. */
  mm.post({ user: BOB, channel: TOWN, message: 'just chatting' });
  const ev2 = await mm.waitFor(() => ws1.events.filter((e) => e.event === 'posted')[1], 5000, 'second posted');
  assert.equal(ev2.seq, 2);
  assert.equal(ev2.data.mentions, undefined);
  /* The client's ping is answered. */
  const pong = await within(new Promise((resolve) => ws1.c.ping((m) => resolve(m))), 5000, 'pong');
  assert.equal(pong.status, 'OK');
  assert.equal(pong.data.text, 'pong');
});

test('Client4: createPost (a thread reply), patchPost (only the fields sent); the bot sees its own posts', async () => {
  const root = mm.posts.find((p) => p.message === '@baton restart web-01');
  const before = ws1.events.length;
  const created = await api.createPost({ channel_id: TOWN, message: 'Restarting web-01…', root_id: root.id,
    props: { baton: 'run-1' } });
  assert.match(created.id, /^[a-z0-9]{26}$/);
  assert.equal(created.user_id, BOT);
  assert.equal(created.root_id, root.id);
  assert.ok(created.create_at > 0 && created.update_at === created.create_at);
  const own = await mm.waitFor(() => ws1.events.slice(before).find((e) => e.event === 'posted'), 5000, 'own posted');
  assert.equal(JSON.parse(own.data.post).user_id, BOT);  // a bot must skip these
  await assert.rejects(api.createPost({ channel_id: TOWN, message: 'x', root_id: 'nosuchrootnosuchrootnosuch' }),
    (e) => e.status_code === 400 && e.server_error_id === 'api.post.create_post.root_id.app_error');

  const patched = await api.patchPost({ id: created.id, message: 'web-01 restarted' });
  assert.equal(patched.message, 'web-01 restarted');
  assert.deepEqual(patched.props, { baton: 'run-1' });
  assert.ok(patched.edit_at > 0);
  const edited = await mm.waitFor(() => ws1.events.find((e) => e.event === 'post_edited'), 5000, 'post_edited');
  assert.equal(JSON.parse(edited.data.post).message, 'web-01 restarted');
  assert.equal(mm.getPost(created.id).history.length, 1);
  assert.equal(mm.getPost(created.id).history[0].message, 'Restarting web-01…');
  /* Someone else's post: 403. */
  await assert.rejects(api.patchPost({ id: root.id, message: 'hijack' }), (e) => e.status_code === 403);
});

test('interactive buttons: the click payload Mattermost sends, and update / ephemeral_text applied', async () => {
  const url = `http://127.0.0.1:${integration.address().port}/hooks/baton`;
  const created = await api.createPost({ channel_id: TOWN, message: 'Deploy api v2 to prod?', props: {
    attachments: [{ text: 'Approval needed', actions: [
      { id: 'approve', name: 'Approve', type: 'button', style: 'primary',
        integration: { url, context: { run: 42, sig: 'hmac-abc' } } },
      { name: 'Deny', type: 'button', style: 'danger', integration: { url, context: { run: 42 } } },
      { id: 'deny_1', name: 'Bad id', type: 'button', integration: { url } },
    ] }] } });
  /* What clients see has no integration (url, context). */
  const actions = created.props.attachments[0].actions;
  assert.equal(actions[0].integration, undefined);
  assert.match(actions[1].id, /^[a-z0-9]{26}$/);  // an id was generated
  assert.equal(mm.getPost(created.id).props.attachments[0].actions[0].integration.context.sig, 'hmac-abc');

  integrationAnswer = () => ({ status: 200, body: {
    update: { message: 'Deploy api v2 to prod: approved by @alice', props: { attachments: [] } },
    ephemeral_text: 'You approved run 42',
  } });
  const before = ws1.events.length;
  const r = await mm.click({ user: ALICE, post_id: created.id, action_id: 'approve' });
  assert.equal(r.apiStatus, 200);
  assert.equal(r.status, 200);
  const hit = hits.at(-1);
  assert.equal(hit.method, 'POST');
  assert.equal(hit.url, '/hooks/baton');
  assert.equal(hit.headers['content-type'], 'application/json');
  assert.deepEqual(Object.keys(hit.body).sort(), ['channel_id', 'channel_name', 'context', 'data_source', 'post_id',
    'team_domain', 'team_id', 'trigger_id', 'type', 'user_id', 'user_name']);
  assert.equal(hit.body.user_id, ALICE);
  assert.equal(hit.body.user_name, 'alice');
  assert.equal(hit.body.channel_id, TOWN);
  assert.equal(hit.body.channel_name, 'town-square');
  assert.equal(hit.body.team_id, mm.teamId);
  assert.equal(hit.body.post_id, created.id);
  assert.equal(hit.body.type, 'button');
  assert.equal(hit.body.data_source, '');
  assert.match(hit.body.trigger_id, /\S/);
  assert.deepEqual(hit.body.context, { run: 42, sig: 'hmac-abc' });
  const stored = mm.getPost(created.id);
  assert.equal(stored.message, 'Deploy api v2 to prod: approved by @alice');
  assert.deepEqual(stored.props.attachments, []);
  const edited = await mm.waitFor(() => ws1.events.slice(before).find((e) => e.event === 'post_edited'), 5000,
    'post_edited after the click');
  assert.equal(JSON.parse(edited.data.post).message, 'Deploy api v2 to prod: approved by @alice');
  const eph = mm.ephemerals.at(-1);
  assert.equal(eph.user_id, ALICE);
  assert.equal(eph.message, 'You approved run 42');
  assert.equal(eph.root_id, created.id);
  assert.equal(eph.channel_id, TOWN);

  /* An update without message blanks the message, as UpdatePost does;
   * props absent: kept. A non-200 answer changes nothing. */
  const second = await api.createPost({ channel_id: TOWN, message: 'Second card', props: {
    attachments: [{ actions: [{ id: 'ok', name: 'OK', integration: { url, context: { n: 2 } } }] }] } });
  integrationAnswer = () => ({ status: 500, body: { error: 'boom' } });
  const failed = await mm.click({ user: BOB, post_id: second.id, action_id: 'ok' });
  assert.equal(failed.apiStatus, 400);
  assert.equal(mm.getPost(second.id).message, 'Second card');
  assert.equal(hits.at(-1).body.type, '');  // the action had no type
  integrationAnswer = () => ({ status: 200, body: { update: {} } });
  await mm.click({ user: BOB, post_id: second.id, action_id: 'ok' });
  assert.equal(mm.getPost(second.id).message, '');
  assert.equal(mm.getPost(second.id).props.attachments[0].actions[0].id, 'ok');

  /* Only [A-Za-z0-9]+ action ids are routable. */
  const bad = await mm.click({ user: ALICE, post_id: created.id, action_id: 'deny_1' }).catch((e) => e);
  assert.ok(bad instanceof Error, 'the update removed the attachments, so the action is gone');
  const third = await api.createPost({ channel_id: TOWN, message: 'Third', props: {
    attachments: [{ actions: [{ id: 'deny_1', name: 'Deny', integration: { url } }] }] } });
  const r404 = await mm.click({ user: ALICE, post_id: third.id, action_id: 'deny_1' });
  assert.equal(r404.apiStatus, 404);

  /* The same click through the REST route, as a user's client does it. */
  const aliceApi = new Client4();
  aliceApi.setUrl(mm.url);
  aliceApi.setToken(ALICE_TOKEN);
  integrationAnswer = () => ({ status: 200, body: { ephemeral_text: 'noted' } });
  const fourth = await api.createPost({ channel_id: TOWN, message: 'Fourth', props: {
    attachments: [{ actions: [{ id: 'ack', name: 'Ack', type: 'button', integration: { url, context: { n: 4 } } }] }] } });
  const res = await aliceApi.doPostAction(fourth.id, 'ack');
  assert.equal(res.status, 'OK');
  assert.equal(hits.at(-1).body.user_id, ALICE);
  assert.deepEqual(hits.at(-1).body.context, { n: 4 });
  assert.equal(mm.ephemerals.at(-1).message, 'noted');
});

test('POST /api/v4/posts/ephemeral', async () => {
  const p = await api.createPostEphemeral(ALICE, { channel_id: TOWN, message: 'only alice sees this' });
  assert.match(p.id, /^[a-z0-9]{26}$/);
  assert.equal(p.type, 'system_ephemeral');
  const e = mm.ephemerals.at(-1);
  assert.equal(e.user_id, ALICE);
  assert.equal(e.message, 'only alice sees this');
  assert.equal(e.source, 'api');
});

test('a 429 carries X-Ratelimit-* and Retry-After; Client4 reports the status', async () => {
  mm.rateLimit('POST /api/v4/posts', 1, 2);
  /* Mattermost's 429 body is plain text, so Client4's error has neither
   * status_code nor message: a client must read the HTTP status itself. */
  await assert.rejects(api.createPost({ channel_id: TOWN, message: 'limited' }),
    (e) => e instanceof ClientError && e.status_code === undefined && e.message === '');
  assert.equal(mm.posts.filter((p) => p.message === 'limited').length, 0);
  const res = await fetch(`${mm.url}/api/v4/users/me`, { headers: { Authorization: `Bearer ${BOT_TOKEN}` } });
  assert.equal(res.status, 200);
  mm.rateLimit('/api/v4/users/me', 1, 3);
  const limited = await fetch(`${mm.url}/api/v4/users/me`, { headers: { Authorization: `Bearer ${BOT_TOKEN}` } });
  assert.equal(limited.status, 429);
  assert.equal(limited.headers.get('retry-after'), '3');
  assert.equal(limited.headers.get('x-ratelimit-remaining'), '0');
  assert.equal(limited.headers.get('x-ratelimit-reset'), '3');
  assert.ok(limited.headers.get('x-ratelimit-limit'));
  assert.equal(await limited.text(), 'limit exceeded\n');
  assert.equal(mm.rateLimited.length, 2);
});

test('reconnect with the auth challenge: a new connection id and a hello', async () => {
  const oldId = ws1.c.connectionId;
  mm.drop();
  await mm.waitFor(() => ws1.reconnects === 1 && ws1.events.filter((e) => e.event === 'hello').length === 2,
    10000, 'a reconnect and a second hello');
  const hello = ws1.events.filter((e) => e.event === 'hello')[1];
  assert.equal(hello.seq, 0);
  assert.notEqual(hello.data.connection_id, oldId);
  assert.equal(ws1.missed, 1);  // the client resyncs: it may have missed events
  mm.post({ user: ALICE, channel: TOWN, message: 'after reconnect' });
  const ev = await mm.waitFor(() => ws1.events.find((e) => e.event === 'posted'
    && JSON.parse(e.data.post).message === 'after reconnect'), 5000, 'posted after reconnect');
  assert.equal(ev.seq, 1);
});

test('reconnect with a header-authenticated upgrade: the same connection resumes, missed events follow', async () => {
  ws1.c.close();
  const ws2 = client({ newWebSocketFn: (url) => new WS.WebSocket(url, { headers: { Authorization: `Bearer ${BOT_TOKEN}` } }) });
  ws2.c.initialize(wsUrl(), BOT_TOKEN);
  const hello = await mm.waitFor(() => ws2.events.find((e) => e.event === 'hello'), 5000, 'hello');
  const id = hello.data.connection_id;
  mm.post({ user: ALICE, channel: TOWN, message: 'one' });
  await mm.waitFor(() => ws2.events.length === 2, 5000, 'event one');
  mm.drop();
  /* Once the server has seen the close, events for the connection are
   * queued and follow the resume. */
  await mm.waitFor(() => !mm.connectionInfo.find((c) => c.connection_id === id).active, 5000, 'the server to see the drop');
  mm.post({ user: ALICE, channel: TOWN, message: 'while away' });
  await mm.waitFor(() => ws2.reconnects === 1 && ws2.events.length === 3, 10000, 'the resumed stream');
  const ev = ws2.events[2];
  assert.equal(ev.event, 'posted');
  assert.equal(ev.seq, 2);
  assert.equal(JSON.parse(ev.data.post).message, 'while away');
  assert.equal(ws2.c.connectionId, id);
  assert.equal(ws2.missed, 0);
  assert.equal(ws2.events.filter((e) => e.event === 'hello').length, 1);
  assert.equal(mm.connectionInfo.find((c) => c.connection_id === id).resumed, 'lossless');
});

test('raw resume: a sequence number still in the dead queue is replayed; one that is not gets a new hello', async () => {
  const frames = [];
  const open = (query) => new Promise((resolve, reject) => {
    const s = new WS.WebSocket(`${wsUrl()}${query}`, { headers: { Authorization: `Bearer ${BOT_TOKEN}` } });
    s.on('message', (d) => frames.push(JSON.parse(d.toString())));
    s.once('open', () => resolve(s));
    s.once('error', reject);
  });
  let s = await open('');
  const hello = await mm.waitFor(() => frames.find((f) => f.event === 'hello'), 5000, 'raw hello');
  const id = hello.data.connection_id;
  mm.post({ user: ALICE, channel: TOWN, message: 'r1' });
  mm.post({ user: ALICE, channel: TOWN, message: 'r2' });
  await mm.waitFor(() => frames.length === 3, 5000, 'two events');
  s.terminate();
  await mm.waitFor(() => !mm.connectionInfo.find((c) => c.connection_id === id).active, 5000, 'the server to see the close');
  frames.length = 0;
  s = await open(`?connection_id=${id}&sequence_number=1`);
  await mm.waitFor(() => frames.length === 2, 5000, 'the replay');
  assert.deepEqual(frames.map((f) => [f.seq, JSON.parse(f.data.post).message]), [[1, 'r1'], [2, 'r2']]);
  s.terminate();
  await mm.waitFor(() => !mm.connectionInfo.find((c) => c.connection_id === id).active, 5000, 'the close');
  frames.length = 0;
  s = await open(`?connection_id=${id}&sequence_number=99`);
  await mm.waitFor(() => frames.length === 1, 5000, 'a new hello');
  assert.equal(frames[0].event, 'hello');
  assert.equal(frames[0].seq, 0);
  assert.notEqual(frames[0].data.connection_id, id);
  s.terminate();
  /* A header token that is not valid: 401 before the upgrade. */
  const status = await within(new Promise((resolve) => {
    const bad = new WS.WebSocket(wsUrl(), { headers: { Authorization: 'Bearer nope' } });
    bad.once('unexpected-response', (req, res) => resolve(res.statusCode));
    bad.once('open', () => resolve('opened'));
    bad.once('error', () => {});
  }), 5000, 'the refused upgrade');
  assert.equal(status, 401);
});
