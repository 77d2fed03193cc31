/*
 * tls.test.mjs - Slack's Socket Mode URL is wss://: baton must speak TLS to
 * it and verify the certificate. A Web API stand-in hands out a wss:// URL
 * served with a certificate from a throw-away CA:
 *   - trusted (SSL_CERT_FILE names the CA, as OpenSSL's default paths
 *     would name a real one): baton connects and sees hello;
 *   - untrusted (the same server, baton not told of the CA): baton refuses
 *     the connection, says why, and keeps trying with backoff.
 * Certificates are made with the openssl command in a temporary directory.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';

import { Baton, assert, freePort, run, sleep } from './lib.mjs';

const require = createRequire(path.join(process.env.BATON_CHAT_DIR || '.', 'package.json'));
const { WebSocketServer } = require('ws');

function makeCerts(dir) {
    const ssl = (...args) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe', timeout: 30000 });
    ssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '1',
        '-subj', '/CN=baton test CA');
    ssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'key.pem', '-out', 'srv.csr', '-subj', '/CN=127.0.0.1');
    fs.writeFileSync(path.join(dir, 'ext.cnf'), 'subjectAltName=IP:127.0.0.1\n');
    ssl('x509', '-req', '-in', 'srv.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out',
        'cert.pem', '-days', '1', '-extfile', 'ext.cnf');
}

/* The Web API part (plain http on loopback, as the tests allow) and a
 * wss:// Socket Mode endpoint that says hello. */
async function startServers(dir) {
    const wssPort = await freePort();
    const apiPort = await freePort();
    const state = { hellos: 0, tlsErrors: [] };
    const tls = https.createServer({ key: fs.readFileSync(path.join(dir, 'key.pem')),
        cert: fs.readFileSync(path.join(dir, 'cert.pem')) });
    tls.on('tlsClientError', (e) => state.tlsErrors.push(e.message));
    const wss = new WebSocketServer({ server: tls });
    wss.on('connection', (ws) => {
        state.hellos++;
        ws.send(JSON.stringify({ type: 'hello', num_connections: 1 }));
    });
    const api = http.createServer((req, res) => {
        req.resume();
        req.on('end', () => {
            res.setHeader('content-type', 'application/json');
            res.end(JSON.stringify(req.url.endsWith('/auth.test') ? { ok: true, user_id: 'U0BATON' }
                : { ok: true, url: `wss://127.0.0.1:${wssPort}/link/?ticket=t` }));
        });
    });
    await new Promise((r) => tls.listen(wssPort, '127.0.0.1', r));
    await new Promise((r) => api.listen(apiPort, '127.0.0.1', r));
    state.apiUrl = `http://127.0.0.1:${apiPort}/api/`;
    state.close = () => {
        for (const c of wss.clients)
            c.terminate();
        wss.close();
        tls.close();
        api.close();
    };
    return state;
}

async function until(pred, ms, what) {
    const deadline = Date.now() + ms;
    while (!pred()) {
        if (Date.now() > deadline)
            throw new Error(`timed out waiting for ${what}`);
        await sleep(100);
    }
}

run('tls', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'baton-tls-'));
    let srv = null;
    let baton = null;
    try {
        makeCerts(dir);
        srv = await startServers(dir);
        const chat = `chat:\n  slack:\n    api_url: ${srv.apiUrl}\n`;
        const env = { SLACK_APP_TOKEN: 'xapp-1-test', SLACK_BOT_TOKEN: 'xoxb-test' };

        /* Untrusted: refused, with the reason in the log, and retried. */
        baton = await Baton.start('tls-untrusted', { chat, env });
        await until(() => srv.tlsErrors.length >= 2, 20000, 'two refused TLS handshakes');
        assert(srv.hellos === 0, 'no WebSocket was opened over an unverified certificate');
        assert(/SSL|certificate/i.test(baton.log()), `the log says why: ${baton.log()}`);
        await baton.stop();
        baton = null;

        /* Trusted: connected, and Slack's hello is understood. */
        baton = await Baton.start('tls-trusted', { chat,
            env: { ...env, SSL_CERT_FILE: path.join(dir, 'ca.pem') } });
        await until(() => srv.hellos >= 1 && /Socket Mode connected/.test(baton.log()), 20000,
            'a verified wss:// connection');
        const metrics = await baton.metrics();
        assert(/baton_chat_connected\{surface="slack"\} 1/.test(metrics), 'metrics say connected');
    } catch (e) {
        if (baton)
            console.log(`--- baton.log ---\n${baton.log()}`);
        throw e;
    } finally {
        if (baton)
            await baton.stop();
        if (srv)
            srv.close();
        fs.rmSync(dir, { recursive: true, force: true });
    }
});
