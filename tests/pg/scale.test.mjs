/*
 * scale.test.mjs - baton scaled out on one PostgreSQL database, end to end,
 * with real processes (CTest `pg_scale`, label pg). Everything is checked
 * from the outside: the console's /ws protocol, /healthz, `baton audit
 * --json`, `baton status EXECUTION --json`, the jobs table, and a log the
 * stand-in commands write.
 *
 *   1. two `baton serve` (A, B) and two `baton worker` on one database:
 *      200 approvals requested on A and decided on B (some on both at
 *      once: one counts, the other is "already"); every approved execution
 *      runs exactly once, every denied one never; A pushes every change to
 *      the requester (latency printed);
 *   4. per-asset locks across workers: two executions on one host never
 *      overlap, the second waits in line (asset_lock: queue) while a third
 *      on another host runs beside the first;
 *   3. PostgreSQL restarted mid-run (kept down 15 s): /healthz 503 on both
 *      serves, then 200; pending approvals and queued jobs resume; nothing
 *      decided or executed is lost; new requests work;
 *   5. two serves on one (fake) Mattermost: every post answered once, a
 *      double click and a replayed callback decide once;
 *   2. kill -9 of a worker mid-step: the other worker takes the job over
 *      after the lease, the step is reported interrupted and never run
 *      again, the attempt is counted; and a job that keeps failing before
 *      its step starts is given up (dead) after job_attempts attempts.
 *
 * Workers run each in a UTS namespace with its own host name when
 * `unshare --uts` works (root): as on separate hosts, a dead worker is then
 * found through its job's lease, not through its pid.
 *
 * Inputs (tests/CMakeLists.txt, through `pg_cluster.sh run`):
 *   BATON_TEST_STORE   postgres://... of a fresh database
 *   BATON_PG_SCRIPT    tests/pg/pg_cluster.sh;  BATON_PG_DIR  the cluster
 *   BATON_BIN, BATON_SOURCE_DIR, BATON_CHAT_DIR (npm packages: ws)
 *   BATON_SCALE_KEEP=1 keep the temporary directory and logs
 */
import { execFile, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';

import { newId, startMattermost } from '../fakes/mattermost.mjs';
import { USERS, assert, freePort, mattermostId, sleep } from '../chat/lib.mjs';
import { within } from '../lib/wait.mjs';

const env = (name) => {
    const v = process.env[name];
    if (!v)
        throw new Error(`${name} is not set (run through ctest -L pg)`);
    return v;
};
const BATON = env('BATON_BIN');
const SOURCE = env('BATON_SOURCE_DIR');
const STORE = env('BATON_TEST_STORE');
const PG_SCRIPT = env('BATON_PG_SCRIPT');
const PG_DIR = env('BATON_PG_DIR');
const require = createRequire(path.join(env('BATON_CHAT_DIR'), 'package.json'));
const WebSocket = require('ws');

const DIR = fs.mkdtempSync(path.join(os.tmpdir(), 'baton-scale-'));
const RUNS = path.join(DIR, 'runs.log'); /* one line per stand-in start and end */
const T0 = Date.now();
const HOSTS = ['localhost', 'lab-01', 'lab-02', 'lab-03', 'lab-04'];
const WATCHDOG_MS = 390000; /* CTest's TIMEOUT is 420 s */

const log = (...a) => console.log(`[${((Date.now() - T0) / 1000).toFixed(1).padStart(6)} s]`, ...a);

/* ---- waiting ---------------------------------------------------------------------------- */

/* Poll pred (may be async) every `every` ms until it returns something
 * truthy; throw after ms naming what was awaited. */
async function waitFor(pred, ms, what, every = 100) {
    const deadline = Date.now() + ms;
    for (;;) {
        const v = await pred();
        if (v)
            return v;
        if (Date.now() > deadline)
            throw new Error(`timed out after ${ms} ms waiting for ${what}`);
        await sleep(every);
    }
}

function pct(sorted, p) {
    if (!sorted.length)
        return NaN;
    return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

/* ---- processes ---------------------------------------------------------------------------- */

const procs = new Set();

/* A child process with its output in DIR/<name>.log. stop(): SIGTERM, then
 * SIGKILL after a bound. */
class Proc {
    constructor(name, cmd, args, extraEnv = {}) {
        this.name = name;
        this.logPath = path.join(DIR, `${name}.log`);
        const fd = fs.openSync(this.logPath, 'a');
        this.p = spawn(cmd, args, { stdio: ['ignore', fd, fd], env: { ...process.env, ...extraEnv } });
        fs.closeSync(fd);
        this.exited = new Promise((resolve) => {
            this.p.on('exit', (code, signal) => resolve({ code, signal }));
        });
        procs.add(this);
    }

    get pid() {
        return this.p.pid;
    }

    get alive() {
        return this.p.exitCode === null && this.p.signalCode === null;
    }

    kill(sig) {
        if (this.alive)
            this.p.kill(sig);
    }

    async stop(ms = 40000) {
        let res;
        if (this.alive) {
            this.p.kill('SIGTERM');
            res = await within(this.exited, ms, () => null);
            if (!res) {
                this.p.kill('SIGKILL');
                res = { ...(await this.exited), forced: true };
            }
        } else {
            res = await this.exited;
        }
        procs.delete(this);
        return res;
    }

    log(max = 6000) {
        try {
            const t = fs.readFileSync(this.logPath, 'utf8');
            return t.length > max ? '…' + t.slice(-max) : t;
        } catch (e) {
            return '(no log)';
        }
    }
}

async function stopAll() {
    await Promise.all([...procs].map((p) => p.stop(15000).catch(() => {})));
}

/* ---- configuration ------------------------------------------------------------------------ */

/* A copy of config/ for these tests: the commands plans run are stand-ins
 * (they log their start and end, sleep the seconds after the last "_" of
 * the service name, e.g. "restart w3_6" sleeps 6 s, and succeed); lab-01..04
 * are extra assets with connection: local; approved plans go to the
 * background queue; serve runs no jobs (job_runners: 0). */
function writeConfig(name, { leaseS = 30, chat = '' } = {}) {
    const cfg = path.join(DIR, name);
    fs.cpSync(path.join(SOURCE, 'config'), cfg, { recursive: true });
    const bin = path.join(DIR, 'bin');
    fs.mkdirSync(bin, { recursive: true });
    let yaml = fs.readFileSync(path.join(cfg, 'baton.yaml'), 'utf8');
    for (const cmd of ['systemctl', 'apt-get', 'pg_dump', 'dropdb']) {
        const standIn = path.join(bin, cmd);
        fs.writeFileSync(standIn, `#!/bin/sh
svc="$2"
case "$svc" in
*_[0-9]*) secs="\${svc##*_}" ;;
*) secs=0 ;;
esac
echo "start $(date +%s%3N) $$ $*" >>'${RUNS}'
sleep "$secs"
echo "end $(date +%s%3N) $$ $*" >>'${RUNS}'
echo "done: $0 $*"
exit 0
`);
        fs.chmodSync(standIn, 0o755);
        const re = new RegExp(`^(\\s+${cmd}:)\\s*\\S+\\s*$`, 'm');
        assert(re.test(yaml), `config/baton.yaml has no connectors.local.allow.${cmd} entry`);
        yaml = yaml.replace(re, `$1 ${standIn}`);
    }
    for (const user of USERS) {
        const re = new RegExp(`identities: \\{cli: ${user}, console: ${user}\\}`);
        assert(re.test(yaml), `config/baton.yaml: no identities line for ${user}`);
        yaml = yaml.replace(re, `identities: {cli: ${user}, console: ${user}, mattermost: ${mattermostId(user)}}`);
    }
    const set = (key, value) => {
        const re = new RegExp(`^(\\s+${key}:)\\s*[^#\\n]*`, 'm');
        assert(re.test(yaml), `config/baton.yaml has no ${key}`);
        yaml = yaml.replace(re, `$1 ${value} `);
    };
    set('level', 'info');
    set('background_after_s', 1);  /* restarts (estimate 10 s) go to the queue */
    set('job_lease_s', leaseS);
    set('job_attempts', 2);
    set('rate_limit', 10000);
    set('job_runners', 0);          /* serve only serves; `baton worker` runs jobs */
    yaml += `\n${chat}\n`;
    fs.writeFileSync(path.join(cfg, 'baton.yaml'), yaml);
    const inv = path.join(cfg, 'inventory.yaml');
    let lab = '';
    for (let i = 1; i <= 4; i++)
        lab += `  - name: lab-0${i}\n    hostname: lab-0${i}.test\n    ip: 127.0.1.${i}\n    os: linux\n`
            + `    os_version: 'Debian 12'\n    role: lab\n    environment: dev\n    status: active\n`
            + `    datacenter: hq\n    tags: [lab]\n    cpu: 2\n    ram_gb: 4\n    connection: local\n`
            + '    services: [nginx]\n    description: a stand-in host for the scale test\n\n';
    fs.writeFileSync(inv, fs.readFileSync(inv, 'utf8').replace(/^assets:\n/m, `assets:\n${lab}`));
    return cfg;
}

/* ---- baton commands ----------------------------------------------------------------------- */

let CFG = null; /* the main configuration */

function run(cmd, args, { timeout = 60000, okCodes = [0] } = {}) {
    return new Promise((resolve, reject) => {
        execFile(cmd, args, { encoding: 'utf8', timeout, maxBuffer: 256 << 20 }, (err, stdout, stderr) => {
            const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
            if (!okCodes.includes(code))
                reject(new Error(`${path.basename(cmd)} ${args.join(' ')} exited ${code}: ${stderr}`));
            else
                resolve({ code, stdout, stderr });
        });
    });
}

const cli = async (...args) => (await run(BATON, ['--config', CFG, '--store', STORE, ...args])).stdout;

async function auditLog() {
    const out = (await run(BATON, ['--store', STORE, 'audit', '--json'])).stdout;
    return out.split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));
}

async function status(id) {
    return JSON.parse(await cli('status', id, '--json'));
}

async function token(user) {
    return (await cli('token', user)).trim().split('\n').pop().trim();
}

/* psql of the server pg_cluster.sh runs (PG_BINDIR, else the newest under
 * /usr/lib/postgresql), else the one on PATH. */
const PSQL = (() => {
    const dirs = process.env.PG_BINDIR ? [process.env.PG_BINDIR] : (() => {
        try {
            return fs.readdirSync('/usr/lib/postgresql')
                .sort((a, b) => b.localeCompare(a, undefined, { numeric: true }))
                .map((v) => `/usr/lib/postgresql/${v}/bin`);
        } catch (e) {
            return [];
        }
    })();
    return dirs.map((d) => path.join(d, 'psql')).find((f) => fs.existsSync(f)) || 'psql';
})();

/* One SQL statement through psql: rows of '|'-separated fields. */
async function sql(query) {
    const out = (await run(PSQL, ['-X', '-A', '-t', '-q', '-v', 'ON_ERROR_STOP=1', '-d', STORE, '-c', query]))
        .stdout;
    return out.split('\n').filter((l) => l.length).map((l) => l.split('|'));
}

async function jobsOf(executionId) {
    const rows = await sql('SELECT job_id, state, attempt, max_attempts, coalesce(locked_by, \'\'),'
        + ` coalesce(last_error, '') FROM jobs WHERE execution_id = '${executionId.replace(/[^0-9a-f-]/g, '')}'`
        + ' ORDER BY job_id');
    return rows.map(([id, state, attempt, max, lockedBy, lastError]) => ({ id: +id, state, attempt: +attempt,
        max: +max, lockedBy, lastError }));
}

/* What the stand-ins ran: [{start, end, pid, args}] by service name. */
function standInRuns() {
    let text = '';
    try {
        text = fs.readFileSync(RUNS, 'utf8');
    } catch (e) {
        return new Map();
    }
    const byPid = new Map();
    for (const line of text.split('\n')) {
        const m = /^(start|end) (\d+) (\d+) (.*)$/.exec(line);
        if (!m)
            continue;
        const r = byPid.get(m[3]) || { pid: m[3], args: m[4] };
        r[m[1]] = +m[2];
        byPid.set(m[3], r);
    }
    const bySvc = new Map();
    for (const r of byPid.values()) {
        const svc = r.args.split(' ')[1];
        if (!bySvc.has(svc))
            bySvc.set(svc, []);
        bySvc.get(svc).push(r);
    }
    return bySvc;
}

/* ---- baton processes ---------------------------------------------------------------------- */

async function healthz(port) {
    try {
        const r = await fetch(`http://127.0.0.1:${port}/healthz`, { signal: AbortSignal.timeout(2000) });
        return { status: r.status, body: await r.text() };
    } catch (e) {
        return { status: 0, body: e.message };
    }
}

async function startServe(name, cfg, port, extraEnv = {}) {
    const p = new Proc(name, BATON, ['--config', cfg, '--store', STORE, 'serve', '--listen', `127.0.0.1:${port}`],
        extraEnv);
    p.port = port;
    await waitFor(async () => {
        if (!p.alive)
            throw new Error(`${name} exited:\n${p.log()}`);
        return (await healthz(port)).status === 200;
    }, 30000, `${name} to answer /healthz`);
    return p;
}

let useNamespaces = false;

/* `baton worker`, on a host of its own (a UTS namespace named host) when
 * the machine allows it. */
async function startWorker(name, cfg) {
    const args = ['--config', cfg, '--store', STORE, 'worker'];
    const p = useNamespaces
        ? new Proc(name, 'unshare', ['--uts', 'sh', '-c', 'hostname "$0" && exec "$@"', name, BATON, ...args])
        : new Proc(name, BATON, args);
    p.host = useNamespaces ? name : os.hostname();
    await waitFor(() => {
        if (!p.alive)
            throw new Error(`${name} exited:\n${p.log()}`);
        return p.log().includes('worker started');
    }, 30000, `${name} to start`);
    return p;
}

/* ---- a console connection ----------------------------------------------------------------- */

/* Signed in on /ws as one user. Keeps every card it is sent, with the time
 * it first saw each state of the approval and of its execution. When baton
 * closes the connection it counts a drop (reported as a failure at the
 * end), rejects the requests in flight (err.dropped) and signs in again, as
 * the browser console does. */
class Client {
    constructor(name, port, tok) {
        this.name = name;
        this.port = port;
        this.token = tok;
        this.seq = 0;
        this.waiting = new Map();
        this.cards = new Map(); /* approval_id -> {last, first: {state|x:state -> ms}} */
        this.notices = [];
        this.drops = [];
        this.closed = false;
    }

    static async open(name, port, tok) {
        const c = new Client(name, port, tok);
        c.ready = c.connect();
        await c.ready;
        return c;
    }

    async connect() {
        const ws = new WebSocket(`ws://127.0.0.1:${this.port}/ws`);
        this.ws = ws;
        this.gotState = false;
        ws.on('message', (d) => this.onMessage(JSON.parse(d.toString()), Date.now()));
        ws.on('error', () => {});
        await within(new Promise((resolve, reject) => {
            ws.once('open', resolve);
            ws.once('error', reject);
        }), 10000, () => {
            throw new Error(`${this.name}: no WebSocket within 10 s`);
        });
        ws.on('close', () => this.onClose(ws));
        const w = await this.send({ type: 'hello', token: this.token }, 30000);
        assert(w.type === 'welcome', `${this.name}: sign-in: ${JSON.stringify(w)}`);
        await waitFor(() => this.gotState, 10000, `${this.name}: the state after welcome`, 20);
    }

    onClose(ws) {
        if (this.closed || ws !== this.ws)
            return;
        this.drops.push(Date.now());
        log(`${this.name}: baton closed the connection (drop ${this.drops.length}); signing in again`);
        for (const w of this.waiting.values()) {
            clearTimeout(w.timer);
            const e = new Error(`${this.name}: connection closed by baton`);
            e.dropped = true;
            w.reject(e);
        }
        this.waiting.clear();
        this.ready = this.connect();
        this.ready.catch((e) => log(`${this.name}: could not sign in again: ${e.message}`));
    }

    onMessage(m, t) {
        if (m.type === 'card')
            this.seen(m.card, t);
        else if (m.type === 'state') {
            for (const card of m.cards)
                this.seen(card, t);
            this.gotState = true;
        } else if (m.type === 'notice') {
            this.notices.push(m.text);
        }
        if (m.in_reply_to !== undefined && m.in_reply_to !== null && this.waiting.has(m.in_reply_to)) {
            const w = this.waiting.get(m.in_reply_to);
            this.waiting.delete(m.in_reply_to);
            clearTimeout(w.timer);
            w.resolve({ ...m, at: t });
        }
    }

    seen(card, t) {
        const e = this.cards.get(card.approval_id) || { first: {}, last: null };
        e.last = card;
        if (!(card.state in e.first))
            e.first[card.state] = t;
        const xs = card.execution && card.execution.state;
        if (xs && !(`x:${xs}` in e.first))
            e.first[`x:${xs}`] = t;
        this.cards.set(card.approval_id, e);
    }

    send(msg, ms) {
        const id = ++this.seq;
        return new Promise((resolve, reject) => {
            const timer = setTimeout(() => {
                this.waiting.delete(id);
                reject(new Error(`${this.name}: no answer to ${JSON.stringify(msg).slice(0, 120)} within ${ms} ms`));
            }, ms);
            this.waiting.set(id, { resolve, reject, timer });
            this.ws.send(JSON.stringify({ ...msg, id }));
        });
    }

    /* Send msg with a fresh id once signed in; resolves to the answer. */
    async request(msg, ms = 30000) {
        await within(this.ready, ms, () => {
            throw new Error(`${this.name}: not signed in within ${ms} ms`);
        });
        return this.send(msg, ms);
    }

    close() {
        this.closed = true;
        for (const w of this.waiting.values())
            clearTimeout(w.timer);
        this.waiting.clear();
        try {
            this.ws.terminate();
        } catch (e) {
            /* gone */
        }
    }
}

/* alice asks on `on`; the plan's approval id. */
async function ask(on, text) {
    const r = await on.request({ type: 'say', text });
    assert(r.type === 'plan' && r.approval_id, `"${text}" should need approval: ${JSON.stringify(r).slice(0, 400)}`);
    return r.approval_id;
}

async function decide(on, approval, decision) {
    const r = await on.request({ type: 'decide', approval, decision });
    assert(r.type === 'result' || r.type === 'reply', `decide: ${JSON.stringify(r).slice(0, 400)}`);
    return r;
}

/* Audit entries by execution id and by approval id. */
function indexAudit(entries) {
    const byExec = new Map(), byApproval = new Map();
    const add = (m, k, e) => {
        if (!k)
            return;
        if (!m.has(k))
            m.set(k, []);
        m.get(k).push(e);
    };
    for (const e of entries) {
        const d = e.detail || {};
        add(byExec, d.execution_id, e);
        add(byApproval, d.approval_id, e);
    }
    return { byExec, byApproval };
}

const count = (list, event, pred = () => true) => (list || []).filter((e) => e.event === event && pred(e)).length;

/* ---- the scenarios ------------------------------------------------------------------------ */

const S = {}; /* shared between scenarios: processes, clients */

/* 1. Two serves, two workers, 200 approvals requested on A, decided on B. */
async function scenarioApprovals() {
    const N = 200, LANES = 8;
    const lost = [];
    const plans = []; /* {i, text, svc, approval, decision, double, sentAt, replies} */
    const t0 = Date.now();
    let next = 0;
    async function lane() {
        for (;;) {
            const i = next++;
            if (i >= N)
                return;
            const svc = `n${i}_0`;
            const text = `restart ${svc} on ${HOSTS[i % HOSTS.length]}`;
            const p = { i, text, svc, decision: i % 10 < 7 ? 'approve' : 'deny', double: i % 20 === 3 || i % 20 === 17 };
            for (;;) {
                try {
                    p.approval = await ask(S.aliceA, text);
                    break;
                } catch (e) {
                    if (!e.dropped)
                        throw e;
                    lost.push(text); /* its approval stays pending: unknown id */
                }
            }
            p.sentAt = Date.now();
            /* A decision whose answer was lost with its connection is sent
             * again: it must then be "already" or "recorded", never twice. */
            const once = async (on) => {
                try {
                    return await decide(on, p.approval, p.decision);
                } catch (e) {
                    if (!e.dropped)
                        throw e;
                    p.retried = true;
                    return decide(on, p.approval, p.decision);
                }
            };
            if (p.double) /* bob clicks on both instances at the same moment */
                p.replies = await Promise.all([once(S.bobA), once(S.bobB)]);
            else
                p.replies = [await once(S.bobB)];
            plans.push(p);
        }
    }
    await Promise.all(Array.from({ length: LANES }, lane));
    const tDecided = Date.now();
    log(`1: ${N} requests on A and decisions on B in ${((tDecided - t0) / 1000).toFixed(1)} s`
        + (lost.length ? ` (${lost.length} requests asked again: their answers were lost with the connection)` : ''));

    for (const p of plans) {
        const st = p.replies.map((r) => r.status).sort();
        if (p.retried)
            assert(st.filter((x) => x === 'recorded').length <= 1 && st.every((x) => x === 'recorded' || x === 'already'),
                `a decision sent again after a dropped connection: ${st}`);
        else if (p.double)
            assert(st.join() === 'already,recorded', `a decision made on A and B at once counts once: ${st}`
                + ` (${p.replies.map((r) => r.text).join(' | ')})`);
        else
            assert(st.join() === 'recorded', `decision ${p.approval}: ${JSON.stringify(p.replies[0]).slice(0, 300)}`);
    }

    /* A pushes the end of every approval to alice. */
    const approved = plans.filter((p) => p.decision === 'approve'), denied = plans.filter((p) => p.decision === 'deny');
    await waitFor(() => approved.every((p) => S.aliceA.cards.get(p.approval)?.last?.execution?.state === 'completed')
        && denied.every((p) => S.aliceA.cards.get(p.approval)?.last?.state === 'denied'), 150000,
    'alice\'s connection on A to see every approval end', 250).catch((e) => {
        const open = plans.filter((p) => { const c = S.aliceA.cards.get(p.approval)?.last; return !c || (p.decision === 'approve' ? c.execution?.state !== 'completed' : c.state !== 'denied'); });
        throw new Error(`${e.message}: ${open.length} not ended, e.g. ${JSON.stringify(S.aliceA.cards.get(open[0]?.approval)?.last?.execution)}`);
    });
    const tDone = Date.now();
    log(`1: all ${approved.length} approved executions completed ${((tDone - tDecided) / 1000).toFixed(1)} s after the last decision`
        + ` (${(approved.length / ((tDone - t0) / 1000)).toFixed(1)} executions/s overall)`);

    /* How long after bob's decision on B alice's connection on A saw it. */
    const lat = plans.map((p) => {
        const f = S.aliceA.cards.get(p.approval).first;
        const seen = f[p.decision === 'approve' ? 'approved' : 'denied'];
        assert(seen, `alice never saw ${p.approval} ${p.decision}d: ${JSON.stringify(f)}`);
        return Math.max(0, seen - p.sentAt);
    }).sort((a, b) => a - b);
    log(`1: decision on B -> card on alice's connection on A: p50 ${pct(lat, 50)} ms, p99 ${pct(lat, 99)} ms, `
        + `max ${lat[lat.length - 1]} ms (n=${lat.length})`);
    assert(lat[lat.length - 1] <= 8000, `alice saw every decision within 8 s (max ${lat[lat.length - 1]} ms)`);

    /* From the audit log: each approval decided once, each approved
     * execution started, stepped and finished once, nothing of a denied one. */
    const audit = await auditLog();
    const { byExec, byApproval } = indexAudit(audit);
    const workers = new Set();
    const ran = standInRuns();
    for (const p of plans) {
        const card = S.aliceA.cards.get(p.approval).last;
        p.execution = card.execution_id;
        const ae = byApproval.get(p.approval);
        assert(count(ae, 'approval_decided') === 1, `${p.approval}: one approval_decided (${count(ae, 'approval_decided')})`);
        if (p.double)
            assert(count(ae, 'approval_refused', (e) => e.detail.status === 'already') === 1,
                `${p.approval}: the second decision is on record as "already"`);
        const ee = byExec.get(p.execution) || [];
        const runs = ran.get(p.svc) || [];
        if (p.decision === 'approve') {
            assert(count(ee, 'execution_started') === 1 && count(ee, 'execution_finished') === 1
                && count(ee, 'step_finished') === 1, `${p.execution}: started, stepped and finished once: `
                + `${ee.map((e) => e.event).join(', ')}`);
            const fin = ee.find((e) => e.event === 'execution_finished');
            assert(fin.detail.state === 'completed', `${p.execution} completed (${fin.detail.state})`);
            assert(runs.length === 1, `${p.svc}: the command ran once (${runs.length})`);
            workers.add(ee.find((e) => e.event === 'execution_started').detail.pid);
        } else {
            assert(count(ee, 'execution_started') === 0 && count(ee, 'step_finished') === 0,
                `denied ${p.execution} never ran: ${ee.map((e) => e.event).join(', ')}`);
            assert(count(ee, 'execution_cancelled') === 1, `denied ${p.execution} cancelled once`);
            assert(runs.length === 0, `${p.svc}: a denied plan's command never ran`);
        }
    }
    const workerPids = new Set([S.w1.pid, S.w2.pid]);
    for (const pid of workers)
        assert(workerPids.has(pid), `executions ran only in the workers (pid ${pid})`);
    log(`1: audit: ${audit.length} entries; ${approved.length} executions ran once each, on ${workers.size} workers;`
        + ` ${denied.length} denied never ran; ${plans.filter((p) => p.double).length} double decisions counted once`);

    /* baton status agrees (a sample: each call is a process). */
    for (const p of approved.filter((_, k) => k % 10 === 0)) {
        const st = await status(p.execution);
        assert(st.state === 'completed' && st.steps.length === 1 && st.steps[0].state === 'completed',
            `status ${p.execution}: ${JSON.stringify(st).slice(0, 300)}`);
    }
    const v = await run(BATON, ['--store', STORE, 'audit', '--verify']);
    assert(/hash chain intact/.test(v.stdout), `audit --verify: ${v.stdout}`);
}

/* 4. Per-asset locks across workers (asset_lock: queue). */
async function scenarioAssetLocks() {
    const a = await ask(S.aliceA, 'restart lka_3 on lab-04');
    const b = await ask(S.aliceA, 'restart lkb_3 on lab-04');
    const c = await ask(S.aliceA, 'restart lkc_3 on lab-03');
    await Promise.all([decide(S.bobB, a, 'approve'), decide(S.bobA, b, 'approve'), decide(S.bobB, c, 'approve')]);
    const ex = {};
    for (const [k, aid] of Object.entries({ a, b, c }))
        ex[k] = (await waitFor(() => S.aliceA.cards.get(aid)?.last?.execution_id, 10000, 'the execution id'));
    /* While one lab-04 execution runs, the other waits in line. */
    let sawWaiting = false;
    const deadline = Date.now() + 30000;
    while (Date.now() < deadline) {
        const [sa, sb] = await Promise.all([status(ex.a), status(ex.b)]);
        if ((sa.state === 'running' && sb.state === 'queued') || (sb.state === 'running' && sa.state === 'queued'))
            sawWaiting = true;
        if (sa.state === 'completed' && sb.state === 'completed')
            break;
        await sleep(200);
    }
    assert(sawWaiting, 'the second execution on lab-04 was seen waiting (queued) while the first ran');
    await waitFor(async () => (await status(ex.c)).state === 'completed', 20000, 'the lab-03 execution');
    const { byExec } = indexAudit(await auditLog());
    const span = (id) => {
        const ee = byExec.get(id) || [];
        const s = ee.find((e) => e.event === 'execution_started'), f = ee.find((e) => e.event === 'step_finished');
        assert(s && f && count(ee, 'execution_started') === 1, `${id}: started once and finished: ${ee.map((e) => e.event)}`);
        return { start: s.ts_ms, end: f.ts_ms, pid: s.detail.pid };
    };
    const [x, y, z] = [span(ex.a), span(ex.b), span(ex.c)];
    const [first, second] = x.start <= y.start ? [x, y] : [y, x];
    assert(second.start >= first.end, `lab-04: the second started (${second.start}) after the first's step ended (${first.end})`);
    const runs = standInRuns();
    const [ra, rb] = [runs.get('lka_3')[0], runs.get('lkb_3')[0]];
    assert(ra.end <= rb.start || rb.end <= ra.start, `the two commands on lab-04 never overlapped: ${JSON.stringify([ra, rb])}`);
    const rc = runs.get('lkc_3')[0];
    const lab3overlaps = Math.min(rc.end, Math.max(ra.end, rb.end)) > Math.max(rc.start, Math.min(ra.start, rb.start));
    log(`4: lab-04 ran ${first.end - first.start} ms then ${second.end - second.start} ms, ${second.start - first.end} ms apart`
        + ` (pids ${first.pid}, ${second.pid}); lab-03 ran beside them: ${lab3overlaps} (pid ${z.pid})`);
}

/* 3. PostgreSQL restarted (fast shutdown, kept down DOWN_S) while requests
 * and jobs are in flight. */
async function scenarioRestart() {
    const DOWN_S = 15;
    /* In flight: 8 approved 3 s jobs across the hosts, 4 approvals pending. */
    const running = [], pending = [];
    for (let i = 0; i < 12; i++) {
        const svc = `o${i}_3`;
        const aid = await ask(S.aliceA, `restart ${svc} on ${HOSTS[i % HOSTS.length]}`);
        (i < 8 ? running : pending).push({ svc, aid });
    }
    for (const r of running)
        assert((await decide(S.bobB, r.aid, 'approve')).status === 'recorded', 'approve before the restart');
    await waitFor(() => standInRuns().has(running[0].svc), 15000, 'the first job to start');
    const before = await auditLog();
    const pendingBefore = JSON.parse(await cli('approvals', '--json')).map((a) => a.approval_id);
    for (const p of pending)
        assert(pendingBefore.includes(p.aid), `${p.aid} pending before the restart`);

    /* The restart, with the serves watched meanwhile. */
    /* Down for DOWN_S: serve checks the store every 5 s, and a check makes
     * two store calls that each spend about 3.2 s reconnecting before they
     * fail, so the 503 shows 6.5 to 11.5 s into the outage. */
    log(`3: restarting PostgreSQL (fast shutdown, ${DOWN_S} s down)`);
    const seen503 = { A: null, B: null };
    let restarting = true;
    const restart = run(PG_SCRIPT, ['restart', PG_DIR, String(DOWN_S)], { timeout: 90000 }).finally(() => {
        restarting = false;
    });
    const tDown = Date.now();
    const during = [];
    const poll = (async () => {
        while (restarting) {
            for (const [k, s] of [['A', S.serveA], ['B', S.serveB]]) {
                const h = await healthz(s.port);
                if (h.status === 503 && !seen503[k])
                    seen503[k] = { at: Date.now() - tDown, body: h.body.trim() };
            }
            await sleep(200);
        }
    })();
    /* A request while the database is away: answered (with an error) or
     * late, never lost silently; recorded only if it says so. */
    await sleep(2000);
    during.push(await S.aliceA.request({ type: 'say', text: 'restart dur1_0 on lab-01' }, 40000)
        .catch((e) => ({ type: 'timeout', text: e.message })));
    await restart;
    await poll;
    const tUp = Date.now();
    log(`3: PostgreSQL back after ${((tUp - tDown) / 1000).toFixed(1)} s; /healthz 503 seen: A ${JSON.stringify(seen503.A)},`
        + ` B ${JSON.stringify(seen503.B)}; a request meanwhile got: ${during[0].type} ${String(during[0].text || during[0].message || '').slice(0, 120)}`);
    assert(seen503.A && seen503.B, 'both serves reported the outage on /healthz (503)');
    assert(/store/i.test(seen503.A.body), `the 503 names the store: ${seen503.A.body}`);
    await waitFor(async () => (await healthz(S.serveA.port)).status === 200 && (await healthz(S.serveB.port)).status === 200,
        30000, 'both /healthz back to 200', 250);
    log(`3: /healthz 200 on both ${((Date.now() - tUp) / 1000).toFixed(1)} s after PostgreSQL was back`);

    /* Nothing decided or recorded before is lost. */
    const pendingAfter = JSON.parse(await cli('approvals', '--json')).map((a) => a.approval_id);
    for (const p of pending)
        assert(pendingAfter.includes(p.aid), `${p.aid} still pending after the restart`);
    const after = await auditLog();
    for (const e of before) {
        const same = after[e.seq - 1];
        assert(same && same.seq === e.seq && same.hash === e.hash, `audit entry ${e.seq} kept as it was`);
    }

    /* Pending approvals and queued jobs resume: decide the rest, and every
     * one of the 12 runs to completion, once. */
    for (const p of pending)
        assert((await decide(S.bobB, p.aid, 'approve')).status === 'recorded', 'approve after the restart');
    const all = [...running, ...pending];
    await waitFor(() => all.every((r) => S.aliceA.cards.get(r.aid)?.last?.execution?.state === 'completed'), 90000,
        'every execution of the restart scenario to complete', 250).catch((e) => {
        const st = all.map((r) => `${r.svc}:${S.aliceA.cards.get(r.aid)?.last?.execution?.state}`);
        throw new Error(`${e.message}: ${st.join(' ')}`);
    });
    /* A new request works, end to end. */
    const fresh = await ask(S.aliceA, 'restart fresh_0 on lab-02');
    assert((await decide(S.bobB, fresh, 'approve')).status === 'recorded', 'a decision after the restart');
    await waitFor(() => S.aliceA.cards.get(fresh)?.last?.execution?.state === 'completed', 30000, 'the new request to run');

    const { byExec } = indexAudit(await auditLog());
    const runs = standInRuns();
    for (const r of [...all, { svc: 'fresh_0', aid: fresh }]) {
        const id = S.aliceA.cards.get(r.aid).last.execution_id;
        const ee = byExec.get(id) || [];
        assert(count(ee, 'step_finished') === 1 && count(ee, 'execution_finished') === 1,
            `${r.svc} (${id}): one step_finished and one execution_finished: ${ee.map((e) => e.event).join(', ')}`);
        assert((runs.get(r.svc) || []).length === 1, `${r.svc}: the command ran once (${(runs.get(r.svc) || []).length})`);
        /* The store agrees with the audit log: no step left "running". */
        const st = await status(id);
        assert(st.state === 'completed' && st.steps.every((x) => x.state === 'completed'),
            `${r.svc} (${id}) in the store: ${st.state}, steps ${st.steps.map((x) => x.state).join(',')}`);
    }
    const v = await run(BATON, ['--store', STORE, 'audit', '--verify']);
    assert(/hash chain intact/.test(v.stdout), `audit --verify after the restart: ${v.stdout}`);
    log('3: every pending approval and queued job resumed; each of the 13 executions ran once; audit chain intact');
}

/* 5. Two serves on one Mattermost. */
async function scenarioChat() {
    const TOKEN = 'mm-scale-bot-token-1c2d';
    const BOT = newId(), CH = newId();
    const users = Object.fromEntries(USERS.map((u) => [mattermostId(u), u]));
    const alice = mattermostId('alice'), bob = mattermostId('bob');
    const mm = await startMattermost({ botToken: TOKEN, botUserId: BOT, botUsername: 'baton', users,
        channels: { [CH]: { name: 'ops' } } });
    const serves = [];
    try {
        for (const name of ['serve-c', 'serve-d']) {
            const port = await freePort();
            const cfg = writeConfig(`config-${name}`, {
                chat: `chat:\n  update_interval_ms: 200\n  mattermost:\n    url: ${mm.url}\n`
                    + `    callback_url: http://127.0.0.1:${port}/hooks/mattermost\n    channels: [${CH}]\n`
            });
            serves.push(await startServe(name, cfg, port, { MATTERMOST_TOKEN: TOKEN }));
        }
        await mm.waitFor(() => mm.connections === 2, 20000, 'both serves connected to Mattermost');
        const att = (post) => ((post.props || {}).attachments || [])[0] || { title: '', text: '', actions: [] };
        const answers = (root) => mm.posts.filter((p) => p.user_id === BOT && p.root_id === root.id);

        /* Reads and changes from two people: one answer each. */
        const posted = [];
        for (let i = 0; i < 24; i++) {
            const who = i % 2 ? bob : alice;
            const message = i % 3 === 0 ? `restart mm${i}_0 on ${HOSTS[i % HOSTS.length]}`
                : i % 3 === 1 ? 'how many assets do we have?' : 'list the linux servers in production';
            posted.push(mm.post({ user: who, channel: CH, message }));
        }
        await mm.waitFor(() => posted.every((p) => answers(p).length >= 1), 60000, 'an answer to every post');
        await sleep(3000); /* a second answer would come by now */
        const counts = posted.map((p) => answers(p).length);
        assert(counts.every((n) => n === 1), `every post answered exactly once: ${counts.join(',')}`);
        const byPort = {};
        for (const p of posted) {
            const a = att(answers(p)[0]);
            const url = (a.actions || [])[0]?.integration?.url;
            if (url) {
                const port = new URL(url).port;
                byPort[port] = (byPort[port] || 0) + 1;
            }
        }
        log(`5: 24 posts, 24 answers; cards posted per instance (by callback port): ${JSON.stringify(byPort)}`);

        /* A card by alice; bob double-clicks Approve, and the same click
         * reaches the other instance too (a retry through a load balancer). */
        const req = posted.find((p) => p.user_id === alice && /^restart/.test(p.message));
        const card = answers(req)[0];
        const aid = att(card).actions[0].integration.context.approval;
        const [c1, c2] = await Promise.all([mm.click({ user: bob, post_id: card.id, action_id: 'approve' }),
            mm.click({ user: bob, post_id: card.id, action_id: 'approve' })]);
        assert(c1.apiStatus === 200 && c2.apiStatus === 200, `clicks answered: ${c1.apiStatus} ${c2.apiStatus}`);
        const rec = mm.integrationRequests[mm.integrationRequests.length - 1];
        const other = serves.find((s) => !rec.url.includes(`:${s.port}/`));
        const replay = await fetch(`http://127.0.0.1:${other.port}/hooks/mattermost`, { method: 'POST',
            headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(rec.request) });
        assert(replay.status === 200, `the replayed click on the other instance: ${replay.status}`);
        await mm.waitFor(() => /Done/.test(att(mm.getPost(card.id)).title), 30000, 'the card shows the execution done');
        await sleep(1000);
        const ae = indexAudit(await auditLog()).byApproval.get(aid);
        assert(count(ae, 'approval_decided') === 1, `the click was applied once: ${ae.map((e) => e.event).join(', ')}`);
        assert(count(ae, 'approval_refused', (e) => e.detail.status === 'already') === 1,
            'the second click was "already"');
        assert(answers(req).length === 1, 'the card was updated in place, not posted again');
        const svc = /^restart (\S+)/.exec(req.message)[1];
        assert((standInRuns().get(svc) || []).length === 1, `${svc} ran once`);
        log('5: double click + replay on the other instance: one decision, one run, one card');
    } catch (e) {
        console.log(mm.describe());
        for (const s of serves)
            console.log(`--- ${s.name} ---\n${s.log()}`);
        throw e;
    } finally {
        for (const s of serves) {
            const r = await s.stop();
            assert(r.code === 0, `${s.name} exited ${JSON.stringify(r)} after SIGTERM`);
        }
        await mm.close();
    }
}

/* 2. kill -9 of a worker mid-step, and a job that keeps failing. */
async function scenarioKill() {
    /* Workers with a 3 s lease. */
    for (const w of [S.w1, S.w2]) {
        const r = await w.stop();
        assert(r.code === 0, `${w.name} exited ${JSON.stringify(r)} after SIGTERM`);
    }
    const cfg3 = writeConfig('config-lease3', { leaseS: 3 });
    const w3 = await startWorker('worker-c', cfg3), w4 = await startWorker('worker-d', cfg3);
    const workers = [w3, w4];

    /* 2a: a 6 s step; its worker is killed while the step runs. */
    const aid = await ask(S.aliceA, 'restart slow_6 on lab-01');
    await decide(S.bobB, aid, 'approve');
    const id = await waitFor(() => S.aliceA.cards.get(aid)?.last?.execution_id, 10000, 'the execution id');
    const st = await waitFor(async () => {
        const s = await status(id);
        return s.state === 'running' && s.steps[0]?.state === 'running' && standInRuns().has('slow_6') ? s : null;
    }, 20000, 'the step to run', 100);
    const victim = workers.find((w) => w.pid === st.owner.pid);
    assert(victim, `the owner ${JSON.stringify(st.owner)} is one of the workers`);
    const survivor = workers.find((w) => w !== victim);
    await sleep(500);
    victim.kill('SIGKILL');
    const tKill = Date.now();
    await victim.exited;
    log(`2: killed ${victim.name} (pid ${victim.pid}, host ${st.owner.host}) while its step ran`);
    const end = await waitFor(async () => {
        const s = await status(id);
        return s.state !== 'running' ? s : null;
    }, 20000, 'the execution to be taken over', 200);
    const took = Date.now() - tKill;
    assert(end.state === 'interrupted', `the execution is interrupted, not re-run: ${end.state}`);
    assert(end.steps[0].state === 'interrupted' && /will not be run again/.test(JSON.stringify(end.steps[0].result)),
        `the step is reported interrupted: ${JSON.stringify(end.steps[0]).slice(0, 400)}`);
    const ee = indexAudit(await auditLog()).byExec.get(id);
    const intr = ee.find((e) => e.event === 'execution_interrupted');
    assert(intr, `execution_interrupted on record: ${ee.map((e) => e.event)}`);
    if (useNamespaces) {
        /* Another host: only the lease can tell it is gone. */
        assert(/stopped responding \(its lease of 3 s ran out\)/.test(intr.detail.reason)
            && intr.detail.reason.includes(`${victim.host}:${victim.pid}:`),
        `taken over through the lease, naming the dead worker: ${intr.detail.reason}`);
        assert(intr.actor === 'baton-worker', `by a worker: ${intr.actor}`);
        assert(took >= 1500, `not before the lease ran out (${took} ms after the kill)`);
    }
    const jobs = await jobsOf(id);
    assert(jobs.length === 1 && jobs[0].state === 'dead' && jobs[0].attempt === 2,
        `the job is dead with its 2 attempts counted: ${JSON.stringify(jobs)}`);
    await sleep(7000); /* long enough for a re-run to show */
    const runs = standInRuns().get('slow_6');
    assert(runs.length === 1, `the interrupted step was never run again (${runs.length} runs)`);
    assert(count(indexAudit(await auditLog()).byExec.get(id), 'execution_started') === 1, 'started once');
    /* The requester is told, at her next sign-in. */
    const again = await Client.open('alice-A2', S.serveA.port, S.aliceToken);
    again.close();
    assert(again.notices.some((n) => n.includes(id.slice(0, 8)) && /interrupted/.test(n)),
        `alice is told: ${JSON.stringify(again.notices)}`);
    log(`2: taken over ${took} ms after the kill: ${intr.detail.reason}; step interrupted, not re-run; job dead after`
        + ` attempt ${jobs[0].attempt}; alice notified`);

    /* 2b: a job that keeps failing before its step starts (its execution's
     * row is locked, so every write times out after 5 s; its first worker
     * is also killed meanwhile) is given up after job_attempts (2). */
    const w5 = await startWorker('worker-e', cfg3);
    workers.push(w5);
    const live = [survivor, w5];
    for (const w of live)
        w.kill('SIGSTOP');
    let locker = null;
    try {
        const aid2 = await ask(S.aliceA, 'restart stuck_0 on lab-02');
        await decide(S.bobB, aid2, 'approve');
        const id2 = await waitFor(() => S.aliceA.cards.get(aid2)?.last?.execution_id, 10000, 'the execution id');
        locker = spawn(PSQL, ['-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-d', STORE], { stdio: ['pipe', 'pipe', 'pipe'] });
        let out = '';
        locker.stdout.on('data', (d) => {
            out += d.toString();
        });
        locker.stdin.write(`BEGIN;\nSELECT 'locked' FROM executions WHERE execution_id = '${id2}' FOR UPDATE;\n`);
        await waitFor(() => out.includes('locked'), 10000, 'the row lock');
        for (const w of live)
            w.kill('SIGCONT');
        const claimed = await waitFor(async () => {
            const j = (await jobsOf(id2))[0];
            return j && j.state === 'running' && j.lockedBy ? j : null;
        }, 15000, 'a worker to claim the job', 50);
        const first = live.find((w) => claimed.lockedBy.includes(`:${w.pid}:`));
        assert(first, `claimed by a live worker: ${claimed.lockedBy}`);
        await sleep(700);
        first.kill('SIGKILL');
        await first.exited;
        const second = await waitFor(async () => {
            const j = (await jobsOf(id2))[0];
            return j.state === 'available' && j.attempt === 2 ? j : null;
        }, 30000, 'the job taken over and failed a second time', 50);
        locker.stdin.write('COMMIT;\n\\q\n');
        const deadJob = await waitFor(async () => {
            const j = (await jobsOf(id2))[0];
            return j.state === 'dead' ? j : null;
        }, 20000, 'the job to be given up', 200);
        const s2 = await waitFor(async () => {
            const s = await status(id2);
            return s.state === 'cancelled' ? s : null;
        }, 10000, 'the execution cancelled', 200);
        const e2 = indexAudit(await auditLog()).byExec.get(id2);
        const canc = e2.find((e) => e.event === 'execution_cancelled');
        assert(canc && /gave up after 2 attempts/.test(canc.detail.reason), `cancelled after its attempts: ${JSON.stringify(canc)}`);
        assert(count(e2, 'execution_started') === 0 && !standInRuns().has('stuck_0'), 'its command never ran');
        assert(s2.steps.every((s) => s.state === 'cancelled' || s.state === 'pending'), `steps: ${JSON.stringify(s2.steps)}`);
        log(`2: a job failing before its step (worker killed, then store timeouts): attempt 2 failed with`
            + ` "${second.lastError.slice(0, 100)}"; then dead ("${deadJob.lastError}"), execution cancelled, nothing ran`);
    } finally {
        for (const w of live)
            w.kill('SIGCONT');
        if (locker && locker.exitCode === null)
            locker.kill('SIGTERM');
    }
    for (const w of workers.filter((x) => x.alive)) {
        const r = await w.stop();
        assert(r.code === 0, `${w.name} exited ${JSON.stringify(r)} after SIGTERM`);
    }
}

/* ---- main --------------------------------------------------------------------------------- */

async function main() {
    useNamespaces = spawnSync('unshare', ['--uts', 'true']).status === 0;
    log(`store ${STORE}; workers on hosts of their own: ${useNamespaces}; dir ${DIR}`);
    CFG = writeConfig('config');
    const m = await run(BATON, ['--store', STORE, 'migrate']);
    log(`migrate: ${m.stdout.trim()}`);
    const [pa, pb] = [await freePort(), await freePort()];
    [S.serveA, S.serveB] = await Promise.all([startServe('serve-a', CFG, pa), startServe('serve-b', CFG, pb)]);
    [S.w1, S.w2] = await Promise.all([startWorker('worker-a', CFG), startWorker('worker-b', CFG)]);
    S.aliceToken = await token('alice');
    const bobToken = await token('bob');
    S.aliceA = await Client.open('alice-A', pa, S.aliceToken);
    S.bobA = await Client.open('bob-A', pa, bobToken);
    S.bobB = await Client.open('bob-B', pb, bobToken);

    const steps = [['1 (200 approvals, 2 serves, 2 workers)', scenarioApprovals],
        ['4 (asset locks across workers)', scenarioAssetLocks],
        ['3 (PostgreSQL restarted mid-run)', scenarioRestart],
        ['5 (two serves on one Mattermost)', scenarioChat],
        ['2 (kill -9 of a worker, dead letter)', scenarioKill]];
    for (const [name, fn] of steps) {
        const t = Date.now();
        await fn();
        log(`PASS scenario ${name} in ${((Date.now() - t) / 1000).toFixed(1)} s`);
    }
    const drops = [S.aliceA, S.bobA, S.bobB].map((c) => [c.name, c.drops.length]).filter(([, n]) => n);
    for (const c of [S.aliceA, S.bobA, S.bobB])
        c.close();
    for (const s of [S.serveA, S.serveB]) {
        const r = await s.stop();
        assert(r.code === 0, `${s.name} exited ${JSON.stringify(r)} after SIGTERM`);
    }
    /* Checked last, so every scenario still runs: baton must not close a
     * console that reads everything it is sent (bot/server.c closes a
     * connection with more than OUTQ_MAX messages waiting, and one card
     * refresh can push more than that at once). */
    assert(drops.length === 0, `baton closed console connections that kept up: ${JSON.stringify(drops)}`
        + ' (serve log: "outgoing queue full; closing")');
}

let failed = false;
const watchdog = setTimeout(() => {
    console.error(`FAIL pg_scale: still running after ${WATCHDOG_MS / 1000} s`);
    failed = true;
    finish(1);
}, WATCHDOG_MS);

let finishing = false;
async function finish(code) {
    if (finishing)
        return;
    finishing = true;
    for (const c of [S.aliceA, S.bobA, S.bobB])
        c?.close();
    if (code)
        for (const p of procs)
            console.log(`--- ${p.name} (pid ${p.pid}) ---\n${p.log()}`);
    await stopAll();
    clearTimeout(watchdog);
    if (process.env.BATON_SCALE_KEEP === '1' || code)
        console.log(`kept ${DIR}`);
    else
        fs.rmSync(DIR, { recursive: true, force: true });
    process.exit(code);
}

for (const sig of ['SIGINT', 'SIGTERM'])
    process.on(sig, () => {
        console.error(`FAIL pg_scale: ${sig}`);
        finish(1);
    });

main().then(() => {
    log('PASS pg_scale');
    return finish(failed ? 1 : 0);
}, (e) => {
    console.error(`FAIL pg_scale: ${e.stack || e.message}`);
    return finish(1);
});
