// The Slack fake (tests/fakes/slack.mjs) against Slack's official Node
// clients: @slack/socket-mode's SocketModeClient and @slack/web-api's
// WebClient, installed by the chat_npm fixture into BATON_CHAT_DIR.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { createRequire } from 'node:module';
import path from 'node:path';
import { startSlack } from '../fakes/slack.mjs';

const CHAT_DIR = process.env.BATON_CHAT_DIR;
if (!CHAT_DIR)
  throw new Error('BATON_CHAT_DIR is not set (run the chat tests through ctest)');
const require = createRequire(path.join(CHAT_DIR, 'package.json'));
const { SocketModeClient, LogLevel } = require('@slack/socket-mode');
const { WebClient, WebClientEvent } = require('@slack/web-api');
const WS = require('ws');

const APP_TOKEN = 'xapp-1-A0FAKE-1-verify';
const BOT_TOKEN = 'xoxb-verify-bot';
const BOT = 'U0BATON';
const ALICE = 'U0ALICE';
const OPS = 'C0OPS';

let slack;
let socket;
let web;
/* Everything the SocketModeClient handed us: {type, body, envelope_id,
 * retry_num, retry_reason, at}. */
const seen = [];
const mentions = [];
let connectedCount = 0;
/* Event texts whose first delivery we deliberately do not ack. */
const skipFirstAck = new Set();

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

function button(actionId, text, value, extra = {}) {
  return { type: 'button', action_id: actionId, text: { type: 'plain_text', text }, value, ...extra };
}

before(async () => {
  slack = await startSlack({ appToken: APP_TOKEN, botToken: BOT_TOKEN, botUserId: BOT,
    users: { [ALICE]: 'alice' }, channels: { [OPS]: 'ops' } });
  web = new WebClient(BOT_TOKEN, {
    slackApiUrl: slack.apiUrl,
    logLevel: LogLevel.ERROR,
    retryConfig: { retries: 2, factor: 1, minTimeout: 10, maxTimeout: 10 },
  });
  socket = new SocketModeClient({
    appToken: APP_TOKEN,
    logLevel: LogLevel.ERROR,
    clientOptions: { slackApiUrl: slack.apiUrl },
  });
  socket.on('connected', () => { connectedCount += 1; });
  socket.on('slack_event', async ({ ack, envelope_id, type, body, retry_num, retry_reason }) => {
    seen.push({ type, body, envelope_id, retry_num, retry_reason, at: Date.now() });
    const text = body && body.event && body.event.text;
    if (text && [...skipFirstAck].some((t) => text.includes(t)) && !retry_num)
      return;
    await ack();
  });
  socket.on('app_mention', ({ event, body }) => { mentions.push({ event, body }); });
});

after(async () => {
  try {
    if (socket)
      await within(socket.disconnect(), 5000, 'SocketModeClient.disconnect()').catch(() => {});
  } finally {
    if (slack)
      await slack.close();
  }
});

test('SocketModeClient connects: apps.connections.open with the app token, then hello', async () => {
  await within(socket.start(), 15000, 'SocketModeClient.start()');
  assert.equal(connectedCount, 1);
  assert.equal(slack.connections, 1);
  const open = slack.calls.filter((c) => c.method === 'apps.connections.open');
  assert.equal(open.length, 1);
  assert.equal(open[0].auth, 'header');
  assert.equal(open[0].status, 200);
});

test('a connection URL works once; the bot token cannot open connections', async () => {
  const appWeb = new WebClient(APP_TOKEN, { slackApiUrl: slack.apiUrl, logLevel: LogLevel.ERROR });
  const { url } = await appWeb.apps.connections.open();
  assert.match(url, /^ws:\/\/127\.0\.0\.1:\d+\/link\/\?ticket=/);
  const first = new WS.WebSocket(url);
  const hello = await within(new Promise((resolve, reject) => {
    first.once('message', (d) => resolve(JSON.parse(d.toString())));
    first.once('error', reject);
  }), 5000, 'hello on a raw connection');
  assert.equal(hello.type, 'hello');
  assert.equal(hello.num_connections, 2);
  assert.equal(hello.connection_info.app_id, slack.config.appId);
  assert.equal(typeof hello.debug_info.host, 'string');
  assert.equal(typeof hello.debug_info.approximate_connection_time, 'number');
  first.close();
  const second = new WS.WebSocket(url);
  const status = await within(new Promise((resolve) => {
    second.once('unexpected-response', (req, res) => resolve(res.statusCode));
    second.once('open', () => resolve('opened'));
    second.once('error', () => {});
  }), 5000, 'second use of a ticket');
  assert.equal(status, 401);
  second.terminate();
  await assert.rejects(web.apps.connections.open(), (e) => e.data && e.data.error === 'not_allowed_token_type');
  await slack.waitFor(() => slack.connections === 1, 5000, 'the raw connection to close');
});

test('an app_mention reaches the client, which acks it within 3 s', async () => {
  const { event_id, ts } = slack.mention({ user: ALICE, channel: OPS, text: 'restart web-01' });
  await slack.waitFor(() => mentions.find((m) => m.body.event_id === event_id), 5000, 'the app_mention');
  const m = mentions.find((x) => x.body.event_id === event_id);
  assert.equal(m.event.type, 'app_mention');
  assert.equal(m.event.text, `<@${BOT}> restart web-01`);
  assert.equal(m.event.user, ALICE);
  assert.equal(m.event.channel, OPS);
  assert.equal(m.event.ts, ts);
  assert.equal(m.body.type, 'event_callback');
  assert.equal(m.body.api_app_id, slack.config.appId);
  const ack = await slack.waitFor(() => slack.acks.find((a) => a.event_id === event_id), 3000, 'the ack');
  assert.ok(ack.latencyMs < 3000, `ack latency ${ack.latencyMs} ms`);
  assert.deepEqual(slack.events[event_id], { delivered: 1, acked: true, envelope_id: ack.envelope_id,
    retries: 0, gaveUp: false });
});

test('an envelope not acked within 3 s is delivered again with retry_attempt 1', async () => {
  skipFirstAck.add('no ack the first time');
  const t0 = Date.now();
  const { event_id } = slack.mention({ user: ALICE, channel: OPS, text: '<@U0BATON> no ack the first time' });
  const ack = await slack.waitFor(() => slack.acks.find((a) => a.event_id === event_id), 8000, 'the ack of the retry');
  const deliveries = seen.filter((s) => s.body && s.body.event_id === event_id);
  assert.equal(deliveries.length, 2);
  assert.equal(deliveries[0].retry_num, 0);
  assert.equal(deliveries[1].retry_num, 1);
  assert.equal(deliveries[1].retry_reason, 'timeout');
  assert.equal(deliveries[0].envelope_id, deliveries[1].envelope_id);
  assert.ok(deliveries[1].at - t0 >= 2900, `redelivered after ${deliveries[1].at - t0} ms`);
  assert.equal(ack.retry_attempt, 1);
  assert.equal(slack.events[event_id].delivered, 2);
});

test('WebClient: chat.postMessage, chat.update, chat.postEphemeral, auth.test', async () => {
  const auth = await web.auth.test();
  assert.equal(auth.user_id, BOT);
  assert.equal(auth.team_id, slack.config.teamId);
  const blocks = [{ type: 'section', text: { type: 'mrkdwn', text: '*Restart web-01?*' } },
    { type: 'actions', block_id: 'decide', elements: [button('approve', 'Approve', 'run-42', { style: 'primary' }),
      button('deny', 'Deny', 'run-42', { style: 'danger' })] }];
  const posted = await web.chat.postMessage({ channel: OPS, text: 'Restart web-01?', blocks });
  assert.equal(posted.channel, OPS);
  assert.match(posted.ts, /^\d{10}\.\d{6}$/);
  assert.equal(posted.message.bot_id, slack.config.botId);
  const reply = await web.chat.postMessage({ channel: OPS, text: 'in thread', thread_ts: posted.ts });
  assert.notEqual(reply.ts, posted.ts);
  assert.equal(slack.findMessage(OPS, reply.ts).thread_ts, posted.ts);
  const stored = slack.findMessage(OPS, posted.ts);
  assert.equal(stored.user, BOT);
  assert.deepEqual(stored.blocks[1].elements.map((e) => e.action_id), ['approve', 'deny']);
  /* The bot's own message comes back as a message event with bot_id. */
  await slack.waitFor(() => seen.find((s) => s.body.event && s.body.event.type === 'message'
    && s.body.event.ts === posted.ts), 5000, 'the echo of the bot message');
  const echo = seen.find((s) => s.body.event && s.body.event.ts === posted.ts).body.event;
  assert.equal(echo.bot_id, slack.config.botId);
  assert.equal(echo.user, BOT);

  const updated = await web.chat.update({ channel: OPS, ts: posted.ts, text: 'Approved by alice',
    blocks: [{ type: 'section', text: { type: 'mrkdwn', text: 'Approved by <@U0ALICE>' } }] });
  assert.equal(updated.ts, posted.ts);
  assert.equal(updated.text, 'Approved by alice');
  assert.equal(stored.updates.length, 1);
  assert.equal(slack.current(OPS, posted.ts).blocks.length, 1);
  /* Without blocks, the blocks stay. */
  await web.chat.update({ channel: OPS, ts: posted.ts, text: 'Approved by alice (done)' });
  assert.equal(slack.current(OPS, posted.ts).blocks.length, 1);
  await assert.rejects(web.chat.update({ channel: OPS, ts: '1.000001', text: 'x' }),
    (e) => e.code === 'slack_webapi_platform_error' && e.data.error === 'message_not_found');

  const eph = await web.chat.postEphemeral({ channel: OPS, user: ALICE, text: 'only you can see this',
    thread_ts: posted.ts });
  assert.match(eph.message_ts, /^\d+\.\d+$/);
  assert.deepEqual(slack.ephemerals.at(-1), { channel: OPS, user: ALICE, text: 'only you can see this',
    blocks: undefined, thread_ts: posted.ts, message_ts: eph.message_ts, at: slack.ephemerals.at(-1).at });

  const stranger = new WebClient('xoxb-wrong', { slackApiUrl: slack.apiUrl, logLevel: LogLevel.ERROR });
  await assert.rejects(stranger.auth.test(), (e) => e.data && e.data.error === 'invalid_auth');
});

test('JSON bodies: token in the Authorization header; a token inside JSON is not read', async () => {
  const post = (headers, body) => fetch(`${slack.apiUrl}chat.postMessage`, {
    method: 'POST', headers: { 'Content-Type': 'application/json; charset=utf-8', ...headers },
    body: JSON.stringify(body), signal: AbortSignal.timeout(5000) }).then((r) => r.json());
  const ok = await post({ Authorization: `Bearer ${BOT_TOKEN}` }, { channel: OPS, text: 'json',
    blocks: [{ type: 'divider' }] });
  assert.equal(ok.ok, true);
  assert.deepEqual(slack.findMessage(OPS, ok.ts).blocks.map((b) => b.type), ['divider']);
  const noAuth = await post({}, { token: BOT_TOKEN, channel: OPS, text: 'json' });
  assert.deepEqual(noAuth, { ok: false, error: 'not_authed' });
  const form = await fetch(`${slack.apiUrl}auth.test`, { method: 'POST',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ token: BOT_TOKEN }).toString(), signal: AbortSignal.timeout(5000) })
    .then((r) => r.json());
  assert.equal(form.ok, true);
});

test('a block_actions click reaches the client with the message as stored', async () => {
  const blocks = [{ type: 'section', text: { type: 'mrkdwn', text: 'Deploy api v2 to prod?' } },
    { type: 'actions', block_id: 'b1', elements: [button('approve', 'Approve', 'dep-7', { style: 'primary' })] }];
  const posted = await web.chat.postMessage({ channel: OPS, text: 'Deploy api v2 to prod?', blocks });
  const envelopeId = slack.click({ user: ALICE, channel: OPS, message_ts: posted.ts, action_id: 'approve' });
  const got = await slack.waitFor(() => seen.find((s) => s.envelope_id === envelopeId), 5000, 'the block_actions');
  assert.equal(got.type, 'interactive');
  const p = got.body;
  assert.equal(p.type, 'block_actions');
  assert.deepEqual(p.user, { id: ALICE, username: 'alice', name: 'alice', team_id: slack.config.teamId });
  assert.deepEqual(p.container, { type: 'message', message_ts: posted.ts, channel_id: OPS, is_ephemeral: false });
  assert.deepEqual(p.channel, { id: OPS, name: 'ops' });
  assert.equal(p.message.ts, posted.ts);
  assert.deepEqual(p.message.blocks, slack.findMessage(OPS, posted.ts).blocks);
  assert.equal(p.actions.length, 1);
  assert.equal(p.actions[0].action_id, 'approve');
  assert.equal(p.actions[0].block_id, 'b1');
  assert.equal(p.actions[0].value, 'dep-7');
  assert.equal(p.actions[0].type, 'button');
  assert.match(p.trigger_id, /\S/);
  assert.match(p.response_url, /^http:\/\/127\.0\.0\.1:/);
  const ack = await slack.waitFor(() => slack.acks.find((a) => a.envelope_id === envelopeId), 3000, 'the ack');
  assert.ok(ack.latencyMs < 3000);
  assert.throws(() => slack.click({ user: ALICE, channel: OPS, message_ts: posted.ts, action_id: 'nope' }),
    /no element with action_id nope/);
});

test('Block Kit limits: broken blocks are refused with invalid_blocks', async () => {
  const before = slack.messages.length;
  const long = (n) => 'x'.repeat(n);
  const cases = {
    'button text over 75': [{ type: 'actions', elements: [button('a', long(76), 'v')] }],
    'button text not plain_text': [{ type: 'actions', elements: [{ type: 'button', action_id: 'a',
      text: { type: 'mrkdwn', text: 'A' } }] }],
    'action_id over 255': [{ type: 'actions', elements: [button(long(256), 'A', 'v')] }],
    'duplicate action_id': [{ type: 'actions', elements: [button('a', 'A', 'v')] },
      { type: 'actions', elements: [button('a', 'B', 'v')] }],
    'value over 2000': [{ type: 'actions', elements: [button('a', 'A', long(2001))] }],
    'style secondary': [{ type: 'actions', elements: [button('a', 'A', 'v', { style: 'secondary' })] }],
    '26 elements': [{ type: 'actions', elements: Array.from({ length: 26 }, (_, i) => button(`a${i}`, 'A', 'v')) }],
    '51 blocks': Array.from({ length: 51 }, () => ({ type: 'divider' })),
    'section text over 3000': [{ type: 'section', text: { type: 'mrkdwn', text: long(3001) } }],
    '11 fields': [{ type: 'section', fields: Array.from({ length: 11 }, () => ({ type: 'mrkdwn', text: 'f' })) }],
    'field over 2000': [{ type: 'section', fields: [{ type: 'mrkdwn', text: long(2001) }] }],
    'header over 150': [{ type: 'header', text: { type: 'plain_text', text: long(151) } }],
    'unknown block type': [{ type: 'carousel' }],
  };
  for (const [name, blocks] of Object.entries(cases)) {
    await assert.rejects(web.chat.postMessage({ channel: OPS, text: name, blocks }),
      (e) => e.data && e.data.error === 'invalid_blocks' && e.data.errors.length > 0, name);
  }
  /* At the limits: accepted. */
  const ok = await web.chat.postMessage({ channel: OPS, text: 'limits', blocks: [
    { type: 'header', text: { type: 'plain_text', text: long(150) } },
    { type: 'section', text: { type: 'mrkdwn', text: long(3000) },
      fields: Array.from({ length: 10 }, () => ({ type: 'mrkdwn', text: long(2000) })) },
    { type: 'actions', elements: Array.from({ length: 25 }, (_, i) => button(`a${i}`, long(75), long(2000))) },
  ] });
  assert.equal(ok.ok, true);
  assert.equal(slack.messages.length, before + 1);
  await assert.rejects(web.chat.update({ channel: OPS, ts: ok.ts, blocks: cases['51 blocks'] }),
    (e) => e.data && e.data.error === 'invalid_blocks');
});

test('a 429 makes WebClient wait Retry-After seconds, then retry', async () => {
  const limited = [];
  const onLimited = (secs, { url }) => limited.push({ secs, url });
  web.on(WebClientEvent.RATE_LIMITED, onLimited);
  try {
    slack.rateLimit('chat.postMessage', 1, 2);
    const r = await within(web.chat.postMessage({ channel: OPS, text: 'after the limit' }), 15000, 'the retried post');
    assert.equal(r.ok, true);
    assert.equal(slack.rateLimited.length, 1);
    assert.deepEqual(limited.map((l) => l.secs), [2]);
    const tries = slack.calls.filter((c) => c.method === 'chat.postMessage' && c.body.text === 'after the limit');
    assert.deepEqual(tries.map((c) => c.status), [429, 200]);
    const waited = tries[1].at - tries[0].at;
    assert.ok(waited >= 1990, `waited ${waited} ms`);
    assert.ok(waited < 6000, `waited ${waited} ms`);
  } finally {
    web.off(WebClientEvent.RATE_LIMITED, onLimited);
  }
});

test('the client reconnects by itself after disconnect(refresh_requested) and after a dropped socket', async () => {
  const opened = slack.connectionsOpened;
  const opens = slack.calls.filter((c) => c.method === 'apps.connections.open').length;
  assert.equal(slack.disconnect('refresh_requested'), 1);
  await slack.waitFor(() => slack.connectionsOpened === opened + 1 && slack.connections === 1, 20000,
    'a new connection after refresh_requested');
  assert.equal(slack.calls.filter((c) => c.method === 'apps.connections.open').length, opens + 1);
  await slack.waitFor(() => connectedCount === 2, 5000, 'the connected event');
  const a = slack.mention({ user: ALICE, channel: OPS, text: 'after refresh' });
  await slack.waitFor(() => slack.events[a.event_id].acked, 5000, 'the ack after refresh');

  /* A network cut: no close frame. An event sent meanwhile waits for the
   * next connection. */
  assert.equal(slack.drop(), 1);
  const b = slack.mention({ user: ALICE, channel: OPS, text: 'while cut off' });
  await slack.waitFor(() => slack.connectionsOpened === opened + 2, 20000, 'a new connection after drop()');
  await slack.waitFor(() => slack.events[b.event_id].acked, 8000, 'the ack of the queued event');
  assert.equal(slack.events[b.event_id].delivered, 1);
});
