/*
 * lib.mjs - what the chat end-to-end tests share: a throw-away `baton serve`
 * (its own copy of config/ with a `chat:` section, its own store and loopback
 * port, stand-ins for the commands plans run), the platform identities of
 * the demo users, and a teardown that runs even when the test fails.
 *
 * Inputs (tests/chat/CMakeLists.txt sets them):
 *   BATON_BIN          the baton binary under test
 *   BATON_SOURCE_DIR   the source tree (its config/ is copied and edited)
 *   BATON_CHAT_DIR     where `npm ci` installed the test's packages
 *   BATON_CHAT_KEEP=1  keep the temporary directory (for debugging)
 */
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { freePort, sleep, within } from '../lib/wait.mjs';

export { freePort, sleep };

const env = (name) => {
    const v = process.env[name];
    if (!v)
        throw new Error(`${name} is not set (run the chat tests through ctest)`);
    return v;
};

export const BATON = env('BATON_BIN');
const SOURCE = env('BATON_SOURCE_DIR');

/* The demo users and who they are on each platform. */
export const USERS = ['alice', 'bob', 'carol', 'dave', 'erin'];
export const slackId = (user) => `U${user.toUpperCase()}`;
export const mattermostId = (user) => `${user}${'0'.repeat(26)}`.slice(0, 26);

export function assert(cond, message) {
    if (!cond)
        throw new Error(`assertion failed: ${message}`);
}

/* Copy config/ into dir: stand-ins for the commands the plans run (each
 * sleeps `seconds`, then succeeds), platform identities for the demo users,
 * and chatYaml appended as the `chat:` section. */
function writeConfig(dir, chatYaml, seconds) {
    const cfg = path.join(dir, 'config');
    fs.cpSync(path.join(SOURCE, 'config'), cfg, { recursive: true });
    const bin = path.join(dir, 'bin');
    fs.mkdirSync(bin);
    let yaml = fs.readFileSync(path.join(cfg, 'baton.yaml'), 'utf8');
    for (const cmd of ['systemctl', 'apt-get', 'pg_dump', 'dropdb']) {
        const standIn = path.join(bin, cmd);
        fs.writeFileSync(standIn, `#!/bin/sh\nsleep ${seconds}\necho "done: $0 $*"\nexit 0\n`);
        fs.chmodSync(standIn, 0o755);
        const re = new RegExp(`^(\\s+${cmd}:)\\s*\\S+\\s*$`, 'm');
        if (!re.test(yaml))
            throw new Error(`config/baton.yaml has no connectors.local.allow.${cmd} entry`);
        yaml = yaml.replace(re, `$1 ${standIn}`);
    }
    for (const user of USERS) {
        const re = new RegExp(`identities: \\{cli: ${user}, console: ${user}\\}`);
        if (!re.test(yaml))
            throw new Error(`config/baton.yaml: no identities line for ${user}`);
        yaml = yaml.replace(re, `identities: {cli: ${user}, console: ${user}, slack: ${slackId(user)}, `
            + `mattermost: ${mattermostId(user)}}`);
    }
    yaml = yaml.replace(/^(\s*level:)\s*warn\b/m, '$1 info');
    yaml += `\n${chatYaml}\n`;
    fs.writeFileSync(path.join(cfg, 'baton.yaml'), yaml);
    return cfg;
}

/*
 * One baton for one test:
 *   const b = await Baton.start('slack', {chat: 'chat:\n  slack: ...', env: {...}});
 *   try { ... } finally { await b.stop(); }
 */
export class Baton {
    static async start(name, opts) {
        const b = new Baton(name);
        try {
            await b.init(opts);
        } catch (e) {
            await b.stop({ failed: true });
            throw e;
        }
        return b;
    }

    constructor(name) {
        this.name = name;
        this.dir = fs.mkdtempSync(path.join(os.tmpdir(), `baton-chat-${name}-`));
        this.proc = null;
    }

    /* chat: the `chat:` section, or a function of baton's port that makes
     * it (Mattermost's callback_url names the port); port: a port chosen
     * by the caller (else a free one). */
    async init({ chat, env: extra = {}, stepSeconds = 1, port }) {
        this.port = port || await freePort();
        this.cfg = writeConfig(this.dir, typeof chat === 'function' ? chat(this.port) : chat,
            stepSeconds);
        this.store = path.join(this.dir, 'baton.db');
        this.base = `http://127.0.0.1:${this.port}`;
        this.logFd = fs.openSync(path.join(this.dir, 'baton.log'), 'w');
        this.proc = spawn(BATON, ['--config', this.cfg, '--store', this.store, 'serve', '--listen',
            `127.0.0.1:${this.port}`], { stdio: ['ignore', this.logFd, this.logFd],
            env: { ...process.env, ...extra } });
        this.exited = new Promise((resolve) => {
            this.proc.on('exit', (code, signal) => resolve({ code, signal }));
        });
        const deadline = Date.now() + 30000;
        for (;;) {
            if (this.proc.exitCode !== null)
                throw new Error(`baton serve exited with ${this.proc.exitCode}:\n${this.log()}`);
            try {
                const r = await fetch(`${this.base}/healthz`, { signal: AbortSignal.timeout(2000) });
                if (r.ok)
                    return;
            } catch (e) {
                /* not up yet */
            }
            if (Date.now() > deadline)
                throw new Error(`baton did not answer /healthz within 30 s:\n${this.log()}`);
            await sleep(100);
        }
    }

    /* Run a baton CLI command on the same configuration and store. */
    cli(...args) {
        return execFileSync(BATON, ['--config', this.cfg, '--store', this.store, ...args],
            { encoding: 'utf8', timeout: 60000, stdio: ['ignore', 'pipe', 'pipe'] });
    }

    /* The audit log as objects (`baton audit --json` prints one a line). */
    audit() {
        return this.cli('audit', '--json').split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));
    }

    async metrics() {
        const r = await fetch(`${this.base}/metrics`, { signal: AbortSignal.timeout(5000) });
        return r.text();
    }

    log() {
        try {
            const text = fs.readFileSync(path.join(this.dir, 'baton.log'), 'utf8');
            return text.length > 20000 ? '…' + text.slice(-20000) : text;
        } catch (e) {
            return '(no log)';
        }
    }

    /* SIGTERM (baton must exit 0), then remove the directory. */
    async stop({ failed = false } = {}) {
        const errors = [];
        if (this.proc && this.proc.exitCode === null && this.proc.signalCode === null) {
            this.proc.kill('SIGTERM');
            const res = await within(this.exited, 40000, () => null);
            if (!res) {
                this.proc.kill('SIGKILL');
                await this.exited;
                errors.push('baton did not exit within 40 s of SIGTERM');
            } else if (res.code !== 0) {
                errors.push(`baton exited with ${res.code ?? res.signal} after SIGTERM`);
            }
        }
        if (this.logFd !== undefined)
            fs.closeSync(this.logFd);
        if (errors.length || failed)
            console.log(`--- baton.log (${this.name}) ---\n${this.log()}`);
        if (process.env.BATON_CHAT_KEEP === '1')
            console.log(`kept ${this.dir}`);
        else
            fs.rmSync(this.dir, { recursive: true, force: true });
        if (errors.length)
            throw new Error(errors.join('; '));
    }
}

/* Run body() with a clear pass/fail line and a non-zero exit on failure. */
export async function run(name, body) {
    const t0 = Date.now();
    try {
        await body();
        console.log(`PASS ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
        process.exit(0);
    } catch (e) {
        console.error(`FAIL ${name}: ${e.stack || e.message}`);
        process.exit(1);
    }
}
