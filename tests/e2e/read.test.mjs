/*
 * read: questions answered at once. A list of assets renders as a table,
 * a count as text, a request baton cannot handle offers suggestions that
 * fill the input. Also: the sign-in form, a bad token, and the token being
 * taken out of the address bar.
 */
import { test } from 'node:test';
import { scenario, say, assert, WAIT_MS } from './lib.mjs';

test('read: tables, text answers, suggestions, sign-in', { timeout: 170000 }, async () => {
    await scenario('read', {}, async (w) => {
        const page = await w.open('alice');
        assert(!page.url().includes('token'), `the token is still in the address bar: ${page.url()}`);
        assert(await page.locator('[data-testid=who-role]').textContent() === 'operator',
            'alice is shown as an operator');
        await w.shot(page, 'signed in, empty conversation');

        const list = await say(page, 'list all linux servers');
        const table = list.locator('[data-testid=table]');
        await table.waitFor({ state: 'visible' });
        const rows = await table.locator('tbody tr').count();
        assert(rows >= 10, `the asset table has ${rows} rows`);
        const heads = await table.locator('thead th').allTextContents();
        for (const h of ['Name', 'IP address', 'Environment'])
            assert(heads.includes(h), `the table has a ${h} column: ${heads.join(', ')}`);
        const names = await table.locator('tbody th').allTextContents();
        assert(names.includes('localhost') && names.includes('web-prd-01'),
            `the table lists localhost and web-prd-01: ${names.join(', ')}`);
        await w.shot(page, 'asset table');

        const count = await say(page, 'how many assets do we have?');
        assert(await count.getAttribute('data-kind') === 'answer', 'a count is an answer');
        assert(await count.locator('table').count() === 0, 'a count is text, not a table');
        const text = await count.textContent();
        assert(/You have \d+ assets/.test(text), `the count says how many: ${text}`);

        const disk = await say(page, 'check disk space on localhost');
        assert(await disk.getAttribute('data-kind') === 'answer', `disk space: ${await disk.textContent()}`);
        assert(await disk.locator('[data-testid=output]').count() === 1,
            'command output is shown as a monospace block');

        const unknown = await say(page, 'make me a sandwich');
        assert(await unknown.getAttribute('data-kind') === 'unknown', 'an unknown request');
        const chips = unknown.locator('[data-testid=suggestion]');
        assert(await chips.count() >= 1, 'an unknown request offers suggestions');
        const first = await chips.first().textContent();
        await chips.first().click();
        assert(await page.locator('[data-testid=say-input]').inputValue() === first,
            'a suggestion fills the input');
        await page.locator('[data-testid=say-input]').fill('');

        const clarify = await say(page, 'restart nginx');
        assert(await clarify.getAttribute('data-kind') === 'clarify', 'a question comes back');

        /* Strings from baton are text, never markup. */
        const odd = await say(page, '<img src=x onerror=alert(1)> <b>bold</b>');
        assert(await page.locator('[data-testid=log] img, [data-testid=log] b').count() === 0,
            'markup in a request or an answer is shown as text');
        assert((await odd.textContent()).length > 0, 'the odd request got an answer');
        await w.shot(page, 'count, unknown with suggestions, question');

        /* The history panel lists the requests; a click asks for the audit trail. */
        await page.locator('[data-testid=history-refresh]').click();
        await page.locator('[data-testid=history-item]').first().waitFor({ state: 'visible' });
        const hist = await page.locator('[data-testid=history-item]').allTextContents();
        assert(hist.some((h) => h.includes('list all linux servers')),
            `the history lists the requests: ${hist.join(' | ')}`);

        /* dave the viewer: signed in with the form this time. */
        const dave = await w.open('dave', { signIn: false });
        await dave.locator('[data-testid=token-input]').waitFor({ state: 'visible' });
        await dave.locator('[data-testid=token-input]').fill('bt_not-a-real-token-0000000000');
        await dave.locator('[data-testid=sign-in]').click();
        const err = dave.locator('[data-testid=signin-error]');
        await err.waitFor({ state: 'visible' });
        assert(/not (valid|accepted)/.test(await err.textContent()), 'a bad token says so');
        await w.shot(dave, 'bad token');
        await dave.locator('[data-testid=token-input]').fill(w.tokens.dave);
        await dave.locator('[data-testid=token-input]').press('Enter');
        await dave.locator('[data-testid=who-user]').filter({ hasText: 'dave' })
            .waitFor({ state: 'visible', timeout: WAIT_MS });
        const stored = await dave.evaluate(() => sessionStorage.getItem('baton.token'));
        assert(stored === w.tokens.dave, 'the token is kept in sessionStorage');
        await dave.reload();
        await dave.locator('[data-testid=who-user]').filter({ hasText: 'dave' })
            .waitFor({ state: 'visible' });

        const problems = w.problemsSeen([/401|bad_token/]);
        assert(problems.length === 0, `errors on the page:\n${problems.join('\n')}`);
    });
});
