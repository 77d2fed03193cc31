/*
 * lib.mjs - what every browser test shares: a throw-away baton (its own
 * configuration, store and loopback port), console tokens, a headless
 * Chromium driven by playwright-core, screenshots, and a teardown that runs
 * even when the test fails.
 *
 * Inputs come from the environment (tests/e2e/CMakeLists.txt sets them):
 *   BATON_BIN          the baton binary under test
 *   BATON_SOURCE_DIR   the source tree (its config/ is copied and edited)
 *   BATON_E2E_DIR      where `npm ci` installed playwright-core
 *   BATON_E2E_SHOTS    where screenshots go (<scenario>-<n>.png)
 *   BATON_E2E_KEEP=1   keep the temporary directory (for debugging)
 */
import { spawn, execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { freePort, sleep, within } from '../lib/wait.mjs';

const env = (name) => {
    const v = process.env[name];
    if (!v)
        throw new Error(`${name} is not set (run the browser tests through ctest)`);
    return v;
};

export const BATON = env('BATON_BIN');
const SOURCE = env('BATON_SOURCE_DIR');
const SHOTS = env('BATON_E2E_SHOTS');
const require = createRequire(path.join(env('BATON_E2E_DIR'), 'package.json'));
const { chromium } = require('playwright-core');

export const CHROMIUM = process.env.BATON_CHROMIUM || '/usr/bin/chromium';
const ROLES = { alice: 'operator', bob: 'approver', carol: 'approver', dave: 'viewer', erin: 'admin' };

/* Default time for one wait; the test's own timeout (CTest's) is the
 * outer bound. */
export const WAIT_MS = 20000;

/* promise, or fallback() after ms; the timer never outlives the race
 * (a pending timer would keep node running after the test). */
/* A program that stands in for systemctl, apt-get, pg_dump and dropdb:
 * it sleeps, then succeeds (baton runs it as argv, never through a shell;
 * the shebang makes it executable by execve). */
function writeStandIn(file, seconds) {
    fs.writeFileSync(file, `#!/bin/sh\n# baton e2e stand-in: "$@"\nsleep ${seconds}\necho "done: $0 $*"\nexit 0\n`);
    fs.chmodSync(file, 0o755);
}

/* Copy config/ into dir and point the local runner's allow-list entries
 * for the commands the scenarios use at the stand-ins. */
function writeConfig(dir, stepSeconds) {
    const cfg = path.join(dir, 'config');
    fs.cpSync(path.join(SOURCE, 'config'), cfg, { recursive: true });
    const bin = path.join(dir, 'bin');
    fs.mkdirSync(bin);
    let yaml = fs.readFileSync(path.join(cfg, 'baton.yaml'), 'utf8');
    for (const cmd of ['systemctl', 'apt-get', 'pg_dump', 'dropdb']) {
        const standIn = path.join(bin, cmd);
        writeStandIn(standIn, stepSeconds[cmd] ?? stepSeconds.default ?? 1);
        const re = new RegExp(`^(\\s+${cmd}:)\\s*\\S+\\s*$`, 'm');
        if (!re.test(yaml))
            throw new Error(`config/baton.yaml has no connectors.local.allow.${cmd} entry to replace`);
        yaml = yaml.replace(re, `$1 ${standIn}`);
    }
    /* Info logs make a failure's baton.log useful. */
    yaml = yaml.replace(/^(\s*level:)\s*warn\b/m, '$1 info');
    fs.writeFileSync(path.join(cfg, 'baton.yaml'), yaml);
    return cfg;
}

/*
 * One scenario's world. Usage:
 *   const w = await World.start('level1', {steps: {systemctl: 1}});
 *   try { ... } finally { await w.stop(); }
 */
export class World {
    static async start(scenario, opts = {}) {
        const w = new World(scenario);
        try {
            await w.init(opts);
        } catch (e) {
            await w.stop({ failed: true });
            throw e;
        }
        return w;
    }

    constructor(scenario) {
        this.scenario = scenario;
        this.dir = fs.mkdtempSync(path.join(os.tmpdir(), `baton-e2e-${scenario}-`));
        this.shotNo = 0;
        this.pages = [];
        this.problems = [];   /* console errors and page errors, per page */
        this.baton = null;
        this.browser = null;
        this.tokens = {};
    }

    async init(opts) {
        this.cfg = writeConfig(this.dir, opts.steps || {});
        this.store = path.join(this.dir, 'baton.db');
        this.port = await freePort();
        this.base = `http://127.0.0.1:${this.port}`;
        this.log = fs.openSync(path.join(this.dir, 'baton.log'), 'w');
        this.baton = spawn(BATON, ['--config', this.cfg, '--store', this.store, 'serve',
            '--listen', `127.0.0.1:${this.port}`], { stdio: ['ignore', this.log, this.log] });
        this.exited = new Promise((resolve) => {
            this.baton.on('exit', (code, signal) => resolve({ code, signal }));
        });
        await this.waitHealthy();
        /* Tokens are made while the daemon runs, as an operator would: a
         * second baton process on the same store must not disturb it (it
         * once did: the store's open()+close() of the file dropped the
         * daemon's SQLite locks and the token process deleted the WAL). */
        for (const user of Object.keys(ROLES))
            this.tokens[user] = this.token(user);
        fs.mkdirSync(SHOTS, { recursive: true });
        for (const f of fs.readdirSync(SHOTS))
            if (f.startsWith(`${this.scenario}-`) && f.endsWith('.png'))
                fs.rmSync(path.join(SHOTS, f));
        this.browser = await chromium.launch({
            executablePath: CHROMIUM,
            headless: true,
            /* playwright gives every launch a fresh, empty profile
             * (--user-data-dir in a temporary directory) and removes it on close. */
            args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                '--disable-background-networking', '--disable-component-update',
                '--disable-sync', '--disable-dev-shm-usage'],
            timeout: 60000
        });
    }

    async waitHealthy() {
        const deadline = Date.now() + 30000;
        let last = '';
        while (Date.now() < deadline) {
            if (this.baton.exitCode !== null)
                throw new Error(`baton serve exited with ${this.baton.exitCode}:\n${this.batonLog()}`);
            try {
                const r = await fetch(`${this.base}/healthz`, { signal: AbortSignal.timeout(2000) });
                if (r.ok)
                    return;
                last = `HTTP ${r.status}`;
            } catch (e) {
                last = e.message;
            }
            await sleep(100);
        }
        throw new Error(`baton did not answer /healthz within 30 s (${last}):\n${this.batonLog()}`);
    }

    token(user) {
        const out = execFileSync(BATON, ['--config', this.cfg, '--store', this.store, 'token', user],
            { encoding: 'utf8', timeout: 30000, stdio: ['ignore', 'pipe', 'pipe'] });
        const tok = out.trim().split('\n').pop().trim();
        if (!/^\S{16,}$/.test(tok))
            throw new Error(`baton token ${user} printed no token: ${out}`);
        return tok;
    }

    batonLog() {
        try {
            const text = fs.readFileSync(path.join(this.dir, 'baton.log'), 'utf8');
            return text.length > 20000 ? '…' + text.slice(-20000) : text;
        } catch (e) {
            return '(no log)';
        }
    }

    /* A fresh browser context signed in as user through the #token= link. */
    async open(user, { signIn = true } = {}) {
        const context = await this.browser.newContext({
            viewport: { width: 1280, height: 800 },
            deviceScaleFactor: 1,
            locale: 'en-GB',
            timezoneId: 'UTC'
        });
        const page = await context.newPage();
        page.setDefaultTimeout(WAIT_MS);
        page.baton = { user, problems: [] };
        page.on('console', (m) => {
            if (m.type() === 'error')
                page.baton.problems.push(`console: ${m.text()}`);
        });
        page.on('pageerror', (e) => page.baton.problems.push(`page error: ${e.message}`));
        this.pages.push(page);
        if (signIn) {
            await page.goto(`${this.base}/#token=${encodeURIComponent(this.tokens[user])}`);
            await page.locator('[data-testid=who-user]').filter({ hasText: user })
                .waitFor({ state: 'visible' });
        } else {
            await page.goto(`${this.base}/`);
        }
        return page;
    }

    /* Save a screenshot as <scenario>-<n>.png and return its path. */
    async shot(page, what) {
        this.shotNo++;
        const file = path.join(SHOTS, `${this.scenario}-${this.shotNo}.png`);
        await page.screenshot({ path: file, timeout: WAIT_MS });
        if (what)
            console.log(`screenshot ${file}: ${what}`);
        return file;
    }

    /* Every console error and uncaught exception seen on the pages, less
     * those matching allow (e.g. the WebSocket failures a reconnect test
     * causes on purpose). A CSP violation shows up here. */
    problemsSeen(allow = []) {
        const out = [];
        for (const p of this.pages)
            for (const msg of p.baton.problems)
                if (!allow.some((re) => re.test(msg)))
                    out.push(`${p.baton.user}: ${msg}`);
        return out;
    }

    /* Close the browser, stop baton with SIGTERM (it must exit 0), remove
     * the temporary directory. Throws when baton did not exit cleanly. */
    async stop({ failed = false } = {}) {
        const errors = [];
        if (this.browser) {
            try {
                await within(this.browser.close(), 15000, () => {
                    errors.push('the browser did not close within 15 s');
                });
            } catch (e) {
                errors.push(`closing the browser: ${e.message}`);
            }
            this.browser = null;
        }
        if (this.baton && this.baton.exitCode === null && this.baton.signalCode === null) {
            this.baton.kill('SIGTERM');
            const res = await within(this.exited, 40000, () => null);
            if (!res) {
                this.baton.kill('SIGKILL');
                await this.exited;
                errors.push('baton did not exit within 40 s of SIGTERM');
            } else if (res.code !== 0) {
                errors.push(`baton exited with ${res.code ?? res.signal} after SIGTERM`);
            }
        } else if (this.baton) {
            errors.push(`baton had already exited (${this.baton.exitCode ?? this.baton.signalCode})`);
        }
        if (this.log !== undefined)
            fs.closeSync(this.log);
        if (errors.length || failed)
            console.log(`--- baton.log (${this.scenario}) ---\n${this.batonLog()}`);
        if (process.env.BATON_E2E_KEEP === '1')
            console.log(`kept ${this.dir}`);
        else
            fs.rmSync(this.dir, { recursive: true, force: true });
        if (errors.length)
            throw new Error(errors.join('; '));
    }
}

/*
 * Run body(world) as one scenario: start, run, and always stop. A failure
 * saves a last screenshot of every open page first.
 */
export async function scenario(name, opts, body) {
    const w = await World.start(name, opts);
    let failure = null;
    try {
        await body(w);
    } catch (e) {
        failure = e;
        for (const p of w.pages) {
            try {
                const file = path.join(SHOTS, `${name}-failed-${p.baton.user}.png`);
                await p.screenshot({ path: file, timeout: 5000 });
                console.log(`failure screenshot: ${file}`);
            } catch (e2) { /* the page may be gone */ }
        }
    }
    try {
        await w.stop({ failed: !!failure });
    } catch (e) {
        failure = failure || e;
    }
    if (failure)
        throw failure;
}

/* ---- page helpers ---- */

/* Type a request and send it with Enter; returns the locator of its reply
 * (the last reply on the page once it is no longer busy). */
export async function say(page, text) {
    const before = await page.locator('[data-testid=reply]').count();
    await page.locator('[data-testid=say-input]').fill(text);
    await page.locator('[data-testid=say-input]').press('Enter');
    const reply = page.locator('[data-testid=reply]').nth(before);
    await reply.waitFor({ state: 'visible' });
    await page.waitForFunction((i) => {
        const r = document.querySelectorAll('[data-testid=reply]')[i];
        return r && !r.hasAttribute('aria-busy');
    }, before, { timeout: WAIT_MS });
    return reply;
}

/* The card in reply, and its approval id. */
export async function cardIn(reply) {
    const card = reply.locator('article.card');
    await card.waitFor({ state: 'visible' });
    const testid = await card.getAttribute('data-testid');
    return { card, id: testid.replace(/^card-/, '') };
}

export function card(page, id) {
    return page.locator(`[data-testid="card-${id}"]`);
}

/* Wait until the card's data-<attr> (state, exec) has one of values. */
export async function waitCard(page, id, attr, values, timeout = WAIT_MS) {
    const want = Array.isArray(values) ? values : [values];
    try {
        await page.waitForFunction(([sel, a, w]) => {
            const c = document.querySelector(sel);
            return c && w.includes(c.dataset[a]);
        }, [`[data-testid="card-${id}"]`, attr, want], { timeout });
    } catch (e) {
        const now = await card(page, id).getAttribute(`data-${attr}`).catch(() => '(no card)');
        throw new Error(`${page.baton.user}: card ${id} ${attr} is ${now}, waited ${timeout} ms ` +
            `for ${want.join('|')}`);
    }
}

/* The progress bar's values. */
export async function progress(page, id) {
    const p = card(page, id).locator('[data-testid=progress]');
    return {
        done: Number(await p.getAttribute('data-done')),
        total: Number(await p.getAttribute('data-total')),
        pct: Number(await p.getAttribute('aria-valuenow')),
        state: await p.getAttribute('data-state')
    };
}

/* Wait until step n of the card is in one of states. */
export async function waitStep(page, id, n, states, timeout = WAIT_MS) {
    try {
        await page.waitForFunction(([sel, want]) => {
            const s = document.querySelector(sel);
            return s && want.includes(s.dataset.state);
        }, [`[data-testid="card-${id}"] [data-testid="step-${n}"]`, states], { timeout });
    } catch (e) {
        const c = card(page, id);
        const now = await c.locator(`[data-testid=step-${n}]`).getAttribute('data-state')
            .catch(() => '(none)');
        throw new Error(`${page.baton.user}: step ${n} is ${now}, waited ${timeout} ms for ` +
            `${states.join('|')} (card ${await c.getAttribute('data-state')}, execution ` +
            `${await c.getAttribute('data-exec')})`);
    }
}

export async function stepStates(page, id) {
    return card(page, id).locator('li.step').evaluateAll((els) => els.map((e) => e.dataset.state));
}

export function assert(cond, message) {
    if (!cond)
        throw new Error(message);
}
