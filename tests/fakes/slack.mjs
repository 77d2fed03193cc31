// slack.mjs - a protocol-faithful fake of Slack for tests: the Web API
// methods a Socket Mode bot uses, and the Socket Mode WebSocket, on a free
// 127.0.0.1 port. In-process: a test imports it and drives it through the
// returned object (tests/chat/README.md describes every method).
//
//   import { startSlack } from '../fakes/slack.mjs';
//   const slack = await startSlack({ appToken, botToken, botUserId });
//   ... slack.apiUrl, slack.mention({...}), await slack.waitFor(...) ...
//   await slack.close();
//
// `ws` comes from the npm install of tests/chat (BATON_CHAT_DIR, which CTest
// sets), or from opts.ws / opts.chatDir.
//
// What it does like Slack (checked against Slack's docs and the official
// @slack/socket-mode and @slack/web-api clients):
// - Web API: POST (or GET) /api/<method>; JSON bodies with the token in
//   "Authorization: Bearer", or application/x-www-form-urlencoded with the
//   token in the header or a `token` field; structured arguments (blocks) in a
//   form body are JSON strings, as @slack/web-api sends them. Application
//   errors are HTTP 200 {ok:false, error}; rate limits are HTTP 429 with
//   Retry-After and {ok:false, error:"ratelimited"}.
// - apps.connections.open takes only the app-level token (xapp-), in the
//   header (Slack's docs: "not as a parameter"); a bot token there is
//   not_allowed_token_type, as is the app token on the bot's methods. Each URL
//   (ticket) opens one WebSocket, once.
// - Socket Mode: hello on connect; envelopes {envelope_id, type, payload,
//   accepts_response_payload, retry_attempt, retry_reason}; an envelope not
//   acked ({envelope_id[, payload]}) within ackTimeoutMs (3 s) is sent again,
//   with retry_attempt+1 and retry_reason "timeout", up to maxRetries (3)
//   times, on a live connection (queued until one opens); disconnect frames
//   ({type:"disconnect", reason, debug_info}) before the server closes;
//   WebSocket pings from the server every pingIntervalMs.
// - With echoBotMessages (default true) the bot's own chat.postMessage and
//   chat.update come back as `message` events (bot_id set; subtype
//   message_changed for updates), as they do for an app subscribed to
//   message.channels / message.im: a bot must ignore its own messages.
import crypto from 'node:crypto';
import http from 'node:http';
import { createRequire } from 'node:module';
import path from 'node:path';

const BODY_MAX = 4 << 20;
const BLOCK_TYPES = new Set(['section', 'actions', 'header', 'divider', 'context', 'image', 'input',
  'rich_text', 'markdown', 'file', 'video', 'table']);

function loadWs(opts) {
  if (opts.ws)
    return opts.ws;
  const dir = opts.chatDir || process.env.BATON_CHAT_DIR;
  const req = createRequire(dir ? path.join(dir, 'package.json') : import.meta.url);
  return req('ws');
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/* Polls pred until it returns something truthy (returned), or throws an
 * error naming `what` after timeoutMs. */
async function pollUntil(pred, timeoutMs, what, prefix, describe) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await pred();
    if (v)
      return v;
    if (Date.now() >= deadline)
      throw new Error(`${prefix}: timed out after ${timeoutMs} ms waiting for ${what}${describe ? `\n${describe()}` : ''}`);
    await sleep(20);
  }
}

function randomId(prefix, len) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789';
  let s = prefix;
  for (const b of crypto.randomBytes(len))
    s += alphabet[b % alphabet.length];
  return s;
}

function clone(v) {
  return v === undefined ? undefined : JSON.parse(JSON.stringify(v));
}

/* ---- Block Kit validation (the limits Slack enforces; errors in Slack's
 * "message [json-pointer:/blocks/..]" form). Also fills block_id and
 * action_id where missing, as Slack does when it stores a message. */
function checkText(errs, obj, where, { plainOnly = false, max = 3000, required = true } = {}) {
  if (obj === undefined || obj === null) {
    if (required)
      errs.push(`missing required field: text [json-pointer:${where}]`);
    return;
  }
  if (typeof obj !== 'object' || typeof obj.text !== 'string') {
    errs.push(`must provide an object [json-pointer:${where}]`);
    return;
  }
  if (plainOnly ? obj.type !== 'plain_text' : !['plain_text', 'mrkdwn'].includes(obj.type))
    errs.push(`must be ${plainOnly ? 'plain_text' : 'plain_text or mrkdwn'} [json-pointer:${where}/type]`);
  if (obj.text.length === 0)
    errs.push(`must be more than 0 characters [json-pointer:${where}/text]`);
  if (obj.text.length > max)
    errs.push(`must be less than ${max + 1} characters [json-pointer:${where}/text]`);
}

function checkElement(errs, el, where, actionIds) {
  if (!el || typeof el !== 'object' || typeof el.type !== 'string') {
    errs.push(`must provide an object with a type [json-pointer:${where}]`);
    return;
  }
  if (el.action_id !== undefined) {
    if (typeof el.action_id !== 'string' || el.action_id.length === 0 || el.action_id.length > 255)
      errs.push(`must be between 1 and 255 characters [json-pointer:${where}/action_id]`);
    else if (actionIds.has(el.action_id))
      errs.push(`action_id already exists [json-pointer:${where}/action_id]`);
    else
      actionIds.add(el.action_id);
  }
  if (el.type === 'button') {
    checkText(errs, el.text, `${where}/text`, { plainOnly: true, max: 75 });
    if (el.value !== undefined && (typeof el.value !== 'string' || el.value.length > 2000))
      errs.push(`must be less than 2001 characters [json-pointer:${where}/value]`);
    if (el.style !== undefined && el.style !== 'primary' && el.style !== 'danger')
      errs.push(`must be one of primary, danger [json-pointer:${where}/style]`);
    if (el.url !== undefined && (typeof el.url !== 'string' || el.url.length > 3000))
      errs.push(`must be less than 3001 characters [json-pointer:${where}/url]`);
    if (el.confirm !== undefined) {
      const c = el.confirm;
      if (!c || typeof c !== 'object') {
        errs.push(`must provide an object [json-pointer:${where}/confirm]`);
      } else {
        checkText(errs, c.title, `${where}/confirm/title`, { plainOnly: true, max: 100 });
        checkText(errs, c.text, `${where}/confirm/text`, { max: 300 });
        checkText(errs, c.confirm, `${where}/confirm/confirm`, { plainOnly: true, max: 30 });
        checkText(errs, c.deny, `${where}/confirm/deny`, { plainOnly: true, max: 30 });
        if (c.style !== undefined && c.style !== 'primary' && c.style !== 'danger')
          errs.push(`must be one of primary, danger [json-pointer:${where}/confirm/style]`);
      }
    }
  }
}

export function validateBlocks(blocks) {
  const errs = [];
  if (!Array.isArray(blocks))
    return ['must provide an array [json-pointer:/blocks]'];
  if (blocks.length > 50)
    errs.push('must be less than 51 items [json-pointer:/blocks]');
  const blockIds = new Set();
  const actionIds = new Set();
  blocks.forEach((b, i) => {
    const where = `/blocks/${i}`;
    if (!b || typeof b !== 'object' || !BLOCK_TYPES.has(b.type)) {
      errs.push(`unsupported type: ${b && b.type} [json-pointer:${where}/type]`);
      return;
    }
    if (b.block_id !== undefined) {
      if (typeof b.block_id !== 'string' || b.block_id.length === 0 || b.block_id.length > 255)
        errs.push(`must be between 1 and 255 characters [json-pointer:${where}/block_id]`);
      else if (blockIds.has(b.block_id))
        errs.push(`block_id already exists [json-pointer:${where}/block_id]`);
      else
        blockIds.add(b.block_id);
    }
    switch (b.type) {
    case 'section':
      if (b.text === undefined && b.fields === undefined)
        errs.push(`must provide text or fields [json-pointer:${where}]`);
      if (b.text !== undefined)
        checkText(errs, b.text, `${where}/text`, { max: 3000 });
      if (b.fields !== undefined) {
        if (!Array.isArray(b.fields) || b.fields.length === 0)
          errs.push(`must provide a non-empty array [json-pointer:${where}/fields]`);
        else {
          if (b.fields.length > 10)
            errs.push(`must be less than 11 items [json-pointer:${where}/fields]`);
          b.fields.forEach((f, j) => checkText(errs, f, `${where}/fields/${j}`, { max: 2000 }));
        }
      }
      if (b.accessory !== undefined)
        checkElement(errs, b.accessory, `${where}/accessory`, actionIds);
      break;
    case 'actions':
      if (!Array.isArray(b.elements) || b.elements.length === 0)
        errs.push(`must provide a non-empty array [json-pointer:${where}/elements]`);
      else {
        if (b.elements.length > 25)
          errs.push(`must be less than 26 items [json-pointer:${where}/elements]`);
        b.elements.forEach((el, j) => checkElement(errs, el, `${where}/elements/${j}`, actionIds));
      }
      break;
    case 'header':
      checkText(errs, b.text, `${where}/text`, { plainOnly: true, max: 150 });
      break;
    case 'context':
      if (!Array.isArray(b.elements) || b.elements.length === 0)
        errs.push(`must provide a non-empty array [json-pointer:${where}/elements]`);
      else if (b.elements.length > 10)
        errs.push(`must be less than 11 items [json-pointer:${where}/elements]`);
      break;
    default:
      break;
    }
  });
  return errs;
}

function fillIds(blocks) {
  const out = clone(blocks);
  for (const b of out) {
    if (b.block_id === undefined)
      b.block_id = randomId('', 5).toLowerCase();
    const els = b.type === 'actions' ? b.elements : b.accessory ? [b.accessory] : [];
    for (const el of els || [])
      if (el && el.action_id === undefined && ['button', 'static_select', 'overflow', 'datepicker'].includes(el.type))
        el.action_id = randomId('', 5).toLowerCase();
  }
  return out;
}

function findButton(blocks, actionId, blockId) {
  for (const b of blocks || []) {
    if (blockId && b.block_id !== blockId)
      continue;
    const els = b.type === 'actions' ? b.elements || [] : b.accessory ? [b.accessory] : [];
    for (const el of els)
      if (el && el.action_id === actionId)
        return { block: b, element: el };
  }
  return null;
}

/**
 * Starts the fake. opts (all optional):
 *   appToken ("xapp-1-A0FAKE-1-fake"), botToken ("xoxb-fake"), botUserId ("U0BOT"),
 *   botId ("B0BOT"), appId ("A0FAKE"), teamId ("T0FAKE"), teamDomain ("fake"),
 *   users {U123: "alice"}, channels {C123: "ops"}, ackTimeoutMs (3000),
 *   maxRetries (3), pingIntervalMs (5000; 0: no pings), warningMs (10000: how
 *   long after a "warning" disconnect the server refreshes), closeAfterMs
 *   (1000: disconnect frame to close), echoBotMessages (true), ws, chatDir.
 */
export async function startSlack(opts = {}) {
  const WS = loadWs(opts);
  const WebSocketServer = WS.WebSocketServer || WS.Server;
  const cfg = {
    appToken: opts.appToken || 'xapp-1-A0FAKE-1-fake',
    botToken: opts.botToken || 'xoxb-fake',
    botUserId: opts.botUserId || 'U0BOT',
    botId: opts.botId || 'B0BOT',
    botName: opts.botName || 'baton',
    appId: opts.appId || 'A0FAKE',
    teamId: opts.teamId || 'T0FAKE',
    teamDomain: opts.teamDomain || 'fake',
    users: { ...(opts.users || {}) },
    channels: { ...(opts.channels || {}) },
    ackTimeoutMs: opts.ackTimeoutMs ?? 3000,
    maxRetries: opts.maxRetries ?? 3,
    pingIntervalMs: opts.pingIntervalMs ?? 5000,
    warningMs: opts.warningMs ?? 10000,
    closeAfterMs: opts.closeAfterMs ?? 1000,
    echoBotMessages: opts.echoBotMessages ?? true,
    verificationToken: 'fakeVerificationToken0001',
  };
  const started = Date.now();

  const state = {
    calls: [],
    messages: [],          // the bot's messages
    userMessages: [],      // messages the control API made users post
    ephemerals: [],
    acks: [],
    strayAcks: [],
    envelopes: new Map(),  // envelope_id -> envelope record
    rateLimits: new Map(), // method -> {remaining, retryAfterS}
    rateLimited: [],       // {method, at, retryAfter}
    tickets: new Map(),    // ticket -> {issuedAt, used}
    conns: new Set(),
    connectionsOpened: 0,
    rejectedUpgrades: [],
    responses: [],         // POSTs to response_url
    closed: false,
  };
  const timers = new Set();
  function later(ms, fn) {
    const t = setTimeout(() => {
      timers.delete(t);
      if (!state.closed)
        fn();
    }, ms);
    t.unref();
    timers.add(t);
    return t;
  }

  let lastTsMicros = 0;
  function newTs() {
    const now = Date.now() * 1000;
    lastTsMicros = Math.max(now, lastTsMicros + 100);
    const s = Math.floor(lastTsMicros / 1e6);
    return `${s}.${String(lastTsMicros % 1e6).padStart(6, '0')}`;
  }
  const userName = (id) => cfg.users[id] || id.toLowerCase();
  const channelName = (id) => cfg.channels[id] || (id.startsWith('D') ? 'directmessage' : id.toLowerCase());
  const channelType = (id) => (id.startsWith('D') ? 'im' : id.startsWith('G') ? 'group' : 'channel');
  const findMessage = (channel, ts) => state.messages.find((m) => m.channel === channel && m.ts === ts);
  const currentBlocks = (m) => (m.updates.length ? m.updates[m.updates.length - 1].blocks : m.blocks);
  const currentText = (m) => (m.updates.length ? m.updates[m.updates.length - 1].text : m.text);

  /* ---- Socket Mode: delivery, acks, retries */
  function liveConns() {
    return [...state.conns].filter((c) => c.ws.readyState === 1);
  }

  function pickConn() {
    const live = liveConns();
    const fresh = live.filter((c) => !c.disconnecting);
    const pool = fresh.length ? fresh : live;
    return pool.length ? pool[pool.length - 1] : null;
  }

  function send(conn, obj) {
    try {
      conn.ws.send(JSON.stringify(obj));
      return true;
    } catch (e) {
      return false;
    }
  }

  function deliver(env) {
    if (state.closed || env.ackedAt)
      return;
    const conn = pickConn();
    if (!conn) {
      env.waiting = true;   // sent when a connection opens
      return;
    }
    env.waiting = false;
    const frame = {
      envelope_id: env.envelope_id,
      payload: env.payload,
      type: env.type,
      accepts_response_payload: env.accepts_response_payload,
      retry_attempt: env.retry_attempt,
      retry_reason: env.retry_reason,
    };
    send(conn, frame);
    env.deliveries.push({ at: Date.now(), connection: conn.id, retry_attempt: env.retry_attempt,
      retry_reason: env.retry_reason });
    if (env.timer)
      clearTimeout(env.timer);
    env.timer = later(cfg.ackTimeoutMs, () => {
      env.timer = null;
      if (env.ackedAt)
        return;
      if (env.retry_attempt >= cfg.maxRetries) {
        env.gaveUp = true;
        return;
      }
      env.retry_attempt += 1;
      env.retry_reason = 'timeout';
      deliver(env);
    });
  }

  function enqueue(type, payload, eventId) {
    const env = {
      envelope_id: crypto.randomUUID(),
      type,
      payload,
      event_id: eventId || null,
      accepts_response_payload: type !== 'events_api',
      retry_attempt: 0,
      retry_reason: '',
      createdAt: Date.now(),
      deliveries: [],
      ackedAt: null,
      timer: null,
      gaveUp: false,
      waiting: false,
    };
    state.envelopes.set(env.envelope_id, env);
    deliver(env);
    return env;
  }

  function onAck(conn, msg) {
    const env = state.envelopes.get(msg.envelope_id);
    const now = Date.now();
    if (!env) {
      state.strayAcks.push({ envelope_id: msg.envelope_id, at: now, connection: conn.id });
      return;
    }
    const last = env.deliveries[env.deliveries.length - 1];
    const rec = {
      envelope_id: env.envelope_id,
      event_id: env.event_id,
      type: env.type,
      at: now,
      connection: conn.id,
      retry_attempt: last ? last.retry_attempt : null,
      latencyMs: last ? now - last.at : null,
      sinceFirstMs: env.deliveries.length ? now - env.deliveries[0].at : null,
      payload: msg.payload,
      duplicate: !!env.ackedAt,
    };
    state.acks.push(rec);
    if (!env.ackedAt) {
      env.ackedAt = now;
      env.ack = rec;
      if (env.timer) {
        clearTimeout(env.timer);
        timers.delete(env.timer);
        env.timer = null;
      }
    }
  }

  function eventCallback(event) {
    const eventId = randomId('Ev', 9);
    return {
      eventId,
      payload: {
        token: cfg.verificationToken,
        team_id: cfg.teamId,
        context_team_id: cfg.teamId,
        context_enterprise_id: null,
        api_app_id: cfg.appId,
        event,
        type: 'event_callback',
        event_id: eventId,
        event_time: Math.floor(Date.now() / 1000),
        authorizations: [{ enterprise_id: null, team_id: cfg.teamId, user_id: cfg.botUserId,
          is_bot: true, is_enterprise_install: false }],
        is_ext_shared_channel: false,
        event_context: `4-${Buffer.from(`${event.type}-${cfg.teamId}-${event.channel}`).toString('base64url')}`,
      },
    };
  }

  function emitEvent(event) {
    const { eventId, payload } = eventCallback(event);
    const env = enqueue('events_api', payload, eventId);
    return { event_id: eventId, envelope_id: env.envelope_id };
  }

  function botMessageObject(m, text, blocks) {
    const o = {
      user: cfg.botUserId,
      type: 'message',
      ts: m.ts,
      bot_id: cfg.botId,
      app_id: cfg.appId,
      text,
      team: cfg.teamId,
      bot_profile: { id: cfg.botId, app_id: cfg.appId, name: cfg.botName, deleted: false, team_id: cfg.teamId },
    };
    if (blocks !== undefined)
      o.blocks = blocks;
    if (m.thread_ts) {
      o.thread_ts = m.thread_ts;
      o.parent_user_id = (state.userMessages.find((u) => u.ts === m.thread_ts) || {}).user || cfg.botUserId;
    }
    return o;
  }

  /* ---- Web API */
  function authOf(req, body, isJson) {
    const h = req.headers.authorization || '';
    const m = /^Bearer\s+(\S+)$/i.exec(h);
    if (m)
      return { token: m[1], where: 'header' };
    if (!isJson && typeof body.token === 'string' && body.token)
      return { token: body.token, where: 'body' };
    return { token: null, where: null };
  }

  function parseJsonArg(body, name) {
    const v = body[name];
    if (v === undefined || v === null || v === '')
      return { value: undefined };
    if (typeof v !== 'string')
      return { value: v };
    try {
      return { value: JSON.parse(v) };
    } catch (e) {
      return { error: true };
    }
  }

  const methods = {
    'apps.connections.open': { tokenType: 'app', headerOnly: true, run() {
      const ticket = crypto.randomUUID();
      state.tickets.set(ticket, { issuedAt: Date.now(), used: false });
      return { ok: true, url: `ws://127.0.0.1:${port}/link/?ticket=${ticket}&app_id=${cfg.appId}` };
    } },
    'auth.test': { tokenType: 'bot', run() {
      return { ok: true, url: `https://${cfg.teamDomain}.slack.com/`, team: `${cfg.teamDomain} workspace`,
        user: cfg.botName, team_id: cfg.teamId, user_id: cfg.botUserId, bot_id: cfg.botId,
        is_enterprise_install: false };
    } },
    'chat.postMessage': { tokenType: 'bot', run(body) {
      const channel = body.channel;
      if (!channel)
        return { ok: false, error: 'channel_not_found' };
      const b = parseJsonArg(body, 'blocks');
      if (b.error)
        return { ok: false, error: 'invalid_blocks_format' };
      const att = parseJsonArg(body, 'attachments');
      if (att.error)
        return { ok: false, error: 'invalid_attachments' };
      const text = body.text === undefined || body.text === null ? '' : String(body.text);
      if (!text && b.value === undefined && att.value === undefined)
        return { ok: false, error: 'no_text' };
      if (text.length > 40000)
        return { ok: false, error: 'msg_too_long' };
      let blocks;
      if (b.value !== undefined) {
        const errs = validateBlocks(b.value);
        if (errs.length)
          return { ok: false, error: 'invalid_blocks', errors: errs,
            response_metadata: { messages: errs.map((e) => `[ERROR] ${e}`) } };
        blocks = fillIds(b.value);
      }
      const ts = newTs();
      const m = { channel, ts, thread_ts: body.thread_ts ? String(body.thread_ts) : undefined, text,
        blocks, attachments: att.value, updates: [], user: cfg.botUserId, at: Date.now() };
      state.messages.push(m);
      const message = botMessageObject(m, text, blocks);
      if (cfg.echoBotMessages)
        emitEvent({ ...clone(message), channel, event_ts: ts, channel_type: channelType(channel) });
      return { ok: true, channel, ts, message };
    } },
    'chat.update': { tokenType: 'bot', run(body) {
      const channel = body.channel;
      if (!channel)
        return { ok: false, error: 'channel_not_found' };
      const m = body.ts ? findMessage(channel, String(body.ts)) : null;
      if (!m) {
        if (state.userMessages.find((u) => u.channel === channel && u.ts === String(body.ts)))
          return { ok: false, error: 'cant_update_message' };
        return { ok: false, error: 'message_not_found' };
      }
      const b = parseJsonArg(body, 'blocks');
      if (b.error)
        return { ok: false, error: 'invalid_blocks_format' };
      /* Omitted blocks keep the previous ones; [] removes them (Slack's docs). */
      let blocks = currentBlocks(m);
      if (b.value !== undefined) {
        const errs = validateBlocks(b.value);
        if (errs.length)
          return { ok: false, error: 'invalid_blocks', errors: errs,
            response_metadata: { messages: errs.map((e) => `[ERROR] ${e}`) } };
        blocks = fillIds(b.value);
      }
      const text = body.text === undefined || body.text === null ? currentText(m) : String(body.text);
      if (text.length > 40000)
        return { ok: false, error: 'msg_too_long' };
      const before = botMessageObject(m, currentText(m), currentBlocks(m));
      m.updates.push({ text, blocks, at: Date.now() });
      const message = botMessageObject(m, text, blocks);
      message.edited = { user: cfg.botUserId, ts: newTs() };
      if (cfg.echoBotMessages) {
        const ets = newTs();
        emitEvent({ type: 'message', subtype: 'message_changed', hidden: true, message, channel,
          previous_message: before, event_ts: ets, ts: ets, channel_type: channelType(channel) });
      }
      return { ok: true, channel, ts: m.ts, text, message };
    } },
    'chat.postEphemeral': { tokenType: 'bot', run(body) {
      const channel = body.channel;
      if (!channel)
        return { ok: false, error: 'channel_not_found' };
      if (!body.user)
        return { ok: false, error: 'user_not_found' };
      const b = parseJsonArg(body, 'blocks');
      if (b.error)
        return { ok: false, error: 'invalid_blocks_format' };
      const text = body.text === undefined || body.text === null ? '' : String(body.text);
      if (!text && b.value === undefined)
        return { ok: false, error: 'no_text' };
      let blocks;
      if (b.value !== undefined) {
        const errs = validateBlocks(b.value);
        if (errs.length)
          return { ok: false, error: 'invalid_blocks', errors: errs,
            response_metadata: { messages: errs.map((e) => `[ERROR] ${e}`) } };
        blocks = fillIds(b.value);
      }
      const messageTs = newTs();
      state.ephemerals.push({ channel, user: String(body.user), text, blocks,
        thread_ts: body.thread_ts ? String(body.thread_ts) : undefined, message_ts: messageTs, at: Date.now() });
      return { ok: true, message_ts: messageTs };
    } },
  };

  function reply(res, status, obj, headers = {}) {
    const body = JSON.stringify(obj);
    res.writeHead(status, { 'Content-Type': 'application/json; charset=utf-8',
      'Content-Length': Buffer.byteLength(body), ...headers });
    res.end(body);
  }

  function handleApi(req, res, method, raw, url) {
    const ctype = (req.headers['content-type'] || '').toLowerCase();
    const isJson = ctype.startsWith('application/json');
    let body = {};
    if (req.method === 'GET') {
      body = Object.fromEntries(url.searchParams);
    } else if (isJson) {
      try {
        body = raw ? JSON.parse(raw) : {};
      } catch (e) {
        body = null;
      }
    } else if (ctype.startsWith('application/x-www-form-urlencoded') || !ctype) {
      body = Object.fromEntries(new URLSearchParams(raw));
    } else {
      body = null;
    }
    const call = { method, body, at: Date.now(), contentType: ctype, status: 200, auth: null };
    state.calls.push(call);
    const answer = (obj, status = 200, headers = {}) => {
      call.status = status;
      call.response = obj;
      if (obj && obj.ok === false)
        call.error = obj.error;
      reply(res, status, obj, headers);
    };
    if (body === null)
      return answer({ ok: false, error: 'invalid_json' });
    const spec = methods[method];
    if (!spec)
      return answer({ ok: false, error: 'unknown_method', req_method: method });
    const limit = state.rateLimits.get(method);
    if (limit && limit.remaining > 0) {
      limit.remaining -= 1;
      if (limit.remaining === 0)
        state.rateLimits.delete(method);
      state.rateLimited.push({ method, at: call.at, retryAfter: limit.retryAfterS });
      return answer({ ok: false, error: 'ratelimited' }, 429, { 'Retry-After': String(limit.retryAfterS) });
    }
    const auth = authOf(req, body, isJson);
    call.auth = auth.where;
    if (!auth.token || (spec.headerOnly && auth.where !== 'header'))
      return answer({ ok: false, error: 'not_authed' });
    if (auth.token !== cfg.appToken && auth.token !== cfg.botToken)
      return answer({ ok: false, error: 'invalid_auth' });
    const isApp = auth.token === cfg.appToken;
    if ((spec.tokenType === 'app') !== isApp)
      return answer({ ok: false, error: 'not_allowed_token_type' });
    return answer(spec.run(body));
  }

  /* A block_actions payload's response_url: recorded, answered {ok:true}. */
  function handleResponseUrl(req, res, raw, url) {
    let body;
    try {
      body = JSON.parse(raw);
    } catch (e) {
      return reply(res, 200, { ok: false, error: 'invalid_json' });
    }
    state.responses.push({ path: url.pathname, body, at: Date.now() });
    return reply(res, 200, { ok: true });
  }

  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://127.0.0.1');
    const m = /^\/api\/([A-Za-z0-9_.]+)$/.exec(url.pathname);
    const isResponseUrl = req.method === 'POST' && url.pathname.startsWith('/actions/');
    if (!isResponseUrl && (!m || (req.method !== 'POST' && req.method !== 'GET'))) {
      res.writeHead(404, { 'Content-Type': 'text/plain' });
      res.end('not found\n');
      return;
    }
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size <= BODY_MAX)
        chunks.push(c);
    });
    req.on('end', () => {
      if (size > BODY_MAX) {
        res.writeHead(413);
        res.end();
        return;
      }
      try {
        if (isResponseUrl)
          return handleResponseUrl(req, res, Buffer.concat(chunks).toString('utf8'), url);
        handleApi(req, res, m[1], Buffer.concat(chunks).toString('utf8'), url);
      } catch (e) {
        if (!res.headersSent)
          reply(res, 500, { ok: false, error: 'fatal_error', detail: String(e && e.stack) });
      }
    });
  });

  /* ---- Socket Mode WebSocket */
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
  let connSeq = 0;
  server.on('upgrade', (req, socket, head) => {
    const url = new URL(req.url, 'http://127.0.0.1');
    const refuse = (code, text) => {
      state.rejectedUpgrades.push({ at: Date.now(), url: req.url, status: code });
      socket.end(`HTTP/1.1 ${code} ${text}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
    };
    if (url.pathname !== '/link/' && url.pathname !== '/link')
      return refuse(404, 'Not Found');
    const ticket = state.tickets.get(url.searchParams.get('ticket') || '');
    if (!ticket || ticket.used)
      return refuse(401, 'Unauthorized');
    ticket.used = true;
    wss.handleUpgrade(req, socket, head, (ws) => onConnection(ws));
  });

  function onConnection(ws) {
    const conn = { id: ++connSeq, ws, openedAt: Date.now(), disconnecting: false, pings: null };
    state.conns.add(conn);
    state.connectionsOpened += 1;
    ws.on('message', (data, isBinary) => {
      if (isBinary)
        return;
      let msg;
      try {
        msg = JSON.parse(data.toString());
      } catch (e) {
        return;
      }
      if (msg && typeof msg.envelope_id === 'string')
        onAck(conn, msg);
    });
    ws.on('close', () => {
      state.conns.delete(conn);
      if (conn.pings)
        clearInterval(conn.pings);
    });
    ws.on('error', () => {});
    if (cfg.pingIntervalMs > 0) {
      conn.pings = setInterval(() => {
        try {
          ws.ping();
        } catch (e) { /* closing */ }
      }, cfg.pingIntervalMs);
      conn.pings.unref();
    }
    send(conn, {
      type: 'hello',
      num_connections: liveConns().length,
      debug_info: {
        host: `applink-fake-${conn.id}`,
        started: new Date(started).toISOString().replace('T', ' ').replace('Z', ''),
        build_number: 1,
        approximate_connection_time: 18060,
      },
      connection_info: { app_id: cfg.appId },
    });
    for (const env of state.envelopes.values())
      if (env.waiting)
        deliver(env);
  }

  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port || 0, '127.0.0.1', resolve);
  });
  const port = server.address().port;

  function closeConn(conn, code = 1000) {
    try {
      if (conn.ws.readyState === 1)
        conn.ws.close(code);
    } catch (e) { /* gone */ }
    /* A peer that never answers the close frame is cut off. */
    later(2000, () => {
      if (conn.ws.readyState !== 3)
        conn.ws.terminate();
    });
  }

  function describe() {
    const envs = [...state.envelopes.values()].map((e) =>
      `  ${e.type} ${e.envelope_id} event=${e.event_id} deliveries=${e.deliveries.length} acked=${!!e.ackedAt}`);
    return [`slack fake state: ${liveConns().length} live connection(s), ${state.connectionsOpened} opened,`
      + ` ${state.calls.length} API call(s), ${state.messages.length} bot message(s)`,
      `  calls: ${state.calls.map((c) => `${c.method}${c.error ? `(${c.error})` : ''}`).join(', ')}`, ...envs]
      .join('\n');
  }

  const fake = {
    apiUrl: `http://127.0.0.1:${port}/api/`,
    port,
    config: cfg,
    validateBlocks,

    get calls() { return state.calls; },
    get messages() { return state.messages; },
    get userMessages() { return state.userMessages; },
    get ephemerals() { return state.ephemerals; },
    get acks() { return state.acks; },
    get strayAcks() { return state.strayAcks; },
    get envelopes() { return [...state.envelopes.values()]; },
    get rateLimited() { return state.rateLimited; },
    get rejectedUpgrades() { return state.rejectedUpgrades; },
    get responses() { return state.responses; },
    get connections() { return liveConns().length; },
    get connectionsOpened() { return state.connectionsOpened; },
    /* {event_id: {delivered, acked, envelope_id, retries, gaveUp}} */
    get events() {
      const out = {};
      for (const e of state.envelopes.values())
        if (e.event_id)
          out[e.event_id] = { delivered: e.deliveries.length, acked: !!e.ackedAt, envelope_id: e.envelope_id,
            retries: e.retry_attempt, gaveUp: e.gaveUp };
      return out;
    },
    envelope(id) { return state.envelopes.get(id) || null; },
    /* One of the bot's messages, by channel and ts (null if none). */
    findMessage(channel, ts) { return findMessage(channel, ts) || null; },
    /* A message's current text and blocks (after chat.update). */
    current(channel, ts) {
      const m = findMessage(channel, ts);
      return m ? { text: currentText(m), blocks: currentBlocks(m) } : null;
    },

    /* The next `count` calls of `method` answer 429 with Retry-After. */
    rateLimit(method, count = 1, retryAfterS = 1) {
      state.rateLimits.set(method, { remaining: count, retryAfterS });
    },

    /* A user mentions the bot: an app_mention event. "<@BOT> " is put in
     * front of text unless it already mentions the bot. */
    mention({ user, channel, text = '', thread_ts, ts } = {}) {
      if (!user || !channel)
        throw new Error('slack fake: mention() needs user and channel');
      const mtext = text.includes(`<@${cfg.botUserId}>`) ? text : `<@${cfg.botUserId}> ${text}`;
      const mts = ts || newTs();
      const event = { type: 'app_mention', user, text: mtext, ts: mts, client_msg_id: crypto.randomUUID(),
        team: cfg.teamId, channel, event_ts: mts };
      if (thread_ts)
        event.thread_ts = thread_ts;
      state.userMessages.push({ channel, ts: mts, thread_ts, text: mtext, user, at: Date.now() });
      const r = emitEvent(event);
      return { event_id: r.event_id, ts: mts, envelope_id: r.envelope_id };
    },

    /* A user's plain message (channel_type "im" for D... channels by default). */
    message({ user, channel, channel_type, text = '', thread_ts, ts } = {}) {
      if (!user || !channel)
        throw new Error('slack fake: message() needs user and channel');
      const mts = ts || newTs();
      const event = { type: 'message', user, text, ts: mts, client_msg_id: crypto.randomUUID(), team: cfg.teamId,
        channel, event_ts: mts, channel_type: channel_type || channelType(channel) };
      if (thread_ts)
        event.thread_ts = thread_ts;
      state.userMessages.push({ channel, ts: mts, thread_ts, text, user, at: Date.now() });
      const r = emitEvent(event);
      return { event_id: r.event_id, ts: mts, envelope_id: r.envelope_id };
    },

    /* A user clicks a button of one of the bot's messages (or ephemerals):
     * an interactive block_actions envelope built from the message's current
     * blocks. Returns the envelope id. force: true skips the look-up (the
     * given action_id/value/block_id are sent as they are). */
    click({ user, channel, message_ts, action_id, value, block_id, thread_ts, force = false } = {}) {
      if (!user || !channel || !message_ts || !action_id)
        throw new Error('slack fake: click() needs user, channel, message_ts and action_id');
      const m = findMessage(channel, message_ts);
      const eph = m ? null : state.ephemerals.find((e) => e.channel === channel && e.message_ts === message_ts);
      let found = null;
      if (!force) {
        if (!m && !eph)
          throw new Error(`slack fake: click(): no bot message ${channel}/${message_ts}`);
        found = findButton(m ? currentBlocks(m) : eph.blocks, action_id, block_id);
        if (!found)
          throw new Error(`slack fake: click(): message ${channel}/${message_ts} has no element with action_id `
            + `${action_id}${block_id ? ` in block ${block_id}` : ''}`);
        if (value !== undefined && value !== found.element.value)
          throw new Error(`slack fake: click(): the button's value is ${JSON.stringify(found.element.value)}, `
            + `not ${JSON.stringify(value)} (force: true sends a forged value)`);
      }
      const el = found ? found.element : { type: 'button', text: { type: 'plain_text', text: action_id }, value };
      const action = {
        action_id,
        block_id: found ? found.block.block_id : block_id || 'fake',
        text: el.text,
        value: el.value,
        type: el.type || 'button',
        action_ts: newTs(),
      };
      if (el.style)
        action.style = el.style;
      const threadTs = thread_ts || (m && m.thread_ts) || (eph && eph.thread_ts);
      const container = { type: 'message', message_ts, channel_id: channel, is_ephemeral: !!eph };
      if (threadTs)
        container.thread_ts = threadTs;
      const triggerId = `${Date.now()}.${Math.floor(Math.random() * 1e12)}.${crypto.randomBytes(16).toString('hex')}`;
      const payload = {
        type: 'block_actions',
        user: { id: user, username: userName(user), name: userName(user), team_id: cfg.teamId },
        api_app_id: cfg.appId,
        token: cfg.verificationToken,
        container,
        trigger_id: triggerId,
        team: { id: cfg.teamId, domain: cfg.teamDomain },
        enterprise: null,
        is_enterprise_install: false,
        channel: { id: channel, name: channelName(channel) },
        state: { values: {} },
        response_url: `http://127.0.0.1:${port}/actions/${cfg.teamId}/${Date.now()}/${crypto.randomBytes(12).toString('hex')}`,
        actions: [action],
      };
      if (m)
        payload.message = botMessageObject(m, currentText(m), currentBlocks(m));
      return enqueue('interactive', payload, null).envelope_id;
    },

    /* Sends an envelope again (retry_attempt + 1), acked or not. */
    redeliver(envelopeId, reason = 'timeout') {
      const env = state.envelopes.get(envelopeId);
      if (!env)
        throw new Error(`slack fake: redeliver(): no envelope ${envelopeId}`);
      if (env.ackedAt)
        env.previousAckAt = env.ackedAt;
      env.ackedAt = null;
      env.gaveUp = false;
      env.retry_attempt += 1;
      env.retry_reason = reason;
      deliver(env);
      return env.retry_attempt;
    },

    /* Sends {type:"disconnect", reason} on every live connection and closes
     * them closeAfterMs later; "warning" waits warningMs, then sends
     * "refresh_requested" and closes. Returns the number of connections. */
    disconnect(reason = 'refresh_requested', { closeAfterMs, warningMs } = {}) {
      const conns = liveConns();
      for (const conn of conns) {
        conn.disconnecting = true;
        send(conn, { type: 'disconnect', reason, debug_info: { host: `applink-fake-${conn.id}` } });
        if (reason === 'warning') {
          later(warningMs ?? cfg.warningMs, () => {
            if (conn.ws.readyState !== 1)
              return;
            send(conn, { type: 'disconnect', reason: 'refresh_requested', debug_info: { host: `applink-fake-${conn.id}` } });
            later(closeAfterMs ?? cfg.closeAfterMs, () => closeConn(conn));
          });
        } else {
          later(closeAfterMs ?? cfg.closeAfterMs, () => closeConn(conn));
        }
      }
      return conns.length;
    },

    /* Destroys every socket without a close frame (a network cut). */
    drop() {
      const conns = [...state.conns];
      for (const conn of conns)
        conn.ws.terminate();
      return conns.length;
    },

    async waitFor(pred, timeoutMs = 10000, what = 'a condition') {
      return pollUntil(pred, timeoutMs, what, 'slack fake', describe);
    },

    describe,

    async close() {
      if (state.closed)
        return;
      state.closed = true;
      for (const t of timers)
        clearTimeout(t);
      timers.clear();
      for (const conn of state.conns) {
        if (conn.pings)
          clearInterval(conn.pings);
        conn.ws.terminate();
      }
      wss.close();
      server.closeAllConnections?.();
      await new Promise((resolve) => server.close(() => resolve()));
    },
  };
  return fake;
}
