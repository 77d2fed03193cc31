/*
 * wait.mjs - what every Node test of baton's shares for waiting: a sleep,
 * a race of a promise against a deadline, and a free loopback port.
 */
import net from 'node:net';

export function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
}

/* promise, or fallback() after ms; the timer never outlives the race
 * (a pending timer would keep node running after the test). */
export async function within(promise, ms, fallback) {
    let timer;
    const late = new Promise((resolve) => {
        timer = setTimeout(() => resolve(fallback()), ms);
    });
    try {
        return await Promise.race([promise, late]);
    } finally {
        clearTimeout(timer);
    }
}

/* A free loopback port: bind port 0, read it, close. */
export function freePort() {
    return new Promise((resolve, reject) => {
        const srv = net.createServer();
        srv.unref();
        srv.on('error', reject);
        srv.listen(0, '127.0.0.1', () => {
            const { port } = srv.address();
            srv.close(() => resolve(port));
        });
    });
}
