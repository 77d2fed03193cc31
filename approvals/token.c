/*
 * token.c - signed decision tokens: what a button carries so that a click
 * can be checked without trusting the front-end that relayed it.
 * approvals_int.h has the format; here is why it looks like that.
 *
 *   - HMAC-SHA256, not a bare hash: only someone holding the key can make a
 *     token, and the MAC is compared with CRYPTO_memcmp so the time taken
 *     says nothing about how many bytes matched.
 *   - The key is not the secret itself but HMAC(secret, a fixed label): a
 *     $BATON_SECRET shared with another part of baton (console sessions, say)
 *     never signs two kinds of thing with the same key.
 *   - What is signed: the approval id (a token is for one approval), the step
 *     (-1 the plan, N the release of step N), the decision (an "approve"
 *     token cannot be turned into a "deny"), the plan hash (a token is for
 *     the plan as it was shown: if the approval were bound to another plan it
 *     would not verify) and the expiry (an old token dies with its approval).
 *     The fields are NUL-separated after a version label, so no two different
 *     field lists give the same bytes (an id cannot contain NUL).
 *   - What is carried: everything but the plan hash, which the verifier takes
 *     from the stored approval. Base64url for the id (any UTF-8 id stays URL-
 *     and JSON-safe), decimal numbers, '.' between fields: the token can sit
 *     in a Slack button value, a URL or a JSON string without escaping.
 *   - Parsing is strict (canonical base64url only, exact field count, numbers
 *     without junk), so a changed character cannot decode to the same fields
 *     and the same MAC and still pass.
 *   - The token does not name a user. Whoever clicks is the user, as the
 *     front-end authenticated them; the dialogue checks that user. Replays are
 *     caught by the dialogue from the decisions already stored, not here.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "approvals/approvals_int.h"
#include "bot/util.h"

#define TOKEN_VERSION "bt1"
#define MAC_LABEL "baton approval token v1"
#define KEY_LABEL "baton approval token key v1"
#define SECRET_MIN 32

static const char b64url_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* Base64url without padding of in[0..n) appended to b. */
static enum bt_err b64url_put(bt_buf *b, const unsigned char *in, size_t n)
{
    enum bt_err e = BT_OK;
    for (size_t i = 0; i < n && e == BT_OK; i += 3) {
        unsigned v = (unsigned)in[i] << 16;
        if (i + 1 < n)
            v |= (unsigned)in[i + 1] << 8;
        if (i + 2 < n)
            v |= in[i + 2];
        char q[4] = {b64url_alphabet[(v >> 18) & 63], b64url_alphabet[(v >> 12) & 63],
                     b64url_alphabet[(v >> 6) & 63], b64url_alphabet[v & 63]};
        size_t out = n - i >= 3 ? 4 : n - i + 1;
        e = bt_buf_append(b, q, out);
    }
    return e;
}

static int b64url_value(char c)
{
    const char *p = c ? strchr(b64url_alphabet, c) : NULL;
    return p ? (int)(p - b64url_alphabet) : -1;
}

/* Decode s[0..n) into out (at most cap bytes); the decoded length, or -1
 * when s is not canonical unpadded base64url (a lone trailing character, a
 * character outside the alphabet, or unused low bits that are not zero: two
 * spellings of the same bytes would let an altered token pass). */
static long b64url_get(const char *s, size_t n, unsigned char *out, size_t cap)
{
    if (n % 4 == 1)
        return -1;
    size_t len = n / 4 * 3 + (n % 4 ? n % 4 - 1 : 0);
    if (len > cap)
        return -1;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 4) {
        unsigned v = 0;
        size_t chunk = n - i >= 4 ? 4 : n - i;
        for (size_t k = 0; k < 4; k++) {
            int d = k < chunk ? b64url_value(s[i + k]) : 0;
            if (d < 0)
                return -1;
            v = v << 6 | (unsigned)d;
        }
        if (chunk == 2 && (v & 0xffff))
            return -1;
        if (chunk == 3 && (v & 0xff))
            return -1;
        out[o++] = (unsigned char)(v >> 16);
        if (chunk >= 3)
            out[o++] = (unsigned char)(v >> 8);
        if (chunk == 4)
            out[o++] = (unsigned char)v;
    }
    return (long)o;
}

static bool is_hex64(const char *s)
{
    if (!s)
        return false;
    size_t i = 0;
    for (; s[i]; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return i == 64;
}

/* The MAC of one token's fields: see approvals_int.h. */
static bool token_mac(const unsigned char key[BT_APPROVALS__KEY_LEN], const char *approval_id,
                      int step, const char *decision, const char *plan_hash, int64_t expires_ms,
                      unsigned char mac[32])
{
    char step_s[16], exp_s[24];
    bt_fmt(step_s, sizeof step_s, "%d", step);
    bt_fmt(exp_s, sizeof exp_s, "%lld", (long long)expires_ms);
    const char *parts[] = {MAC_LABEL, approval_id, step_s, decision, plan_hash, exp_s};
    bt_buf b = BT_BUF_INIT(2048);
    bool ok = true;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0] && ok; i++)
        ok = (i == 0 || bt_buf_append(&b, "", 1) == BT_OK) && bt_buf_puts(&b, parts[i]) == BT_OK;
    unsigned int maclen = 0;
    ok = ok &&
         HMAC(EVP_sha256(), key, BT_APPROVALS__KEY_LEN, (const unsigned char *)b.data, b.len, mac,
              &maclen) != NULL &&
         maclen == 32;
    bt_buf_free(&b);
    return ok;
}

/* bt_approvals__token_mint: see approvals_int.h. */
char *bt_approvals__token_mint(const unsigned char key[BT_APPROVALS__KEY_LEN],
                               const char *approval_id, int step, const char *decision,
                               const char *plan_hash, int64_t expires_ms)
{
    if (!approval_id || !*approval_id || strnlen(approval_id, 256) > 255 || step < -1 ||
        step > BT_APPROVALS__STEP_MAX || !decision ||
        (strcmp(decision, "approve") != 0 && strcmp(decision, "deny") != 0) ||
        !is_hex64(plan_hash) || expires_ms < 0)
        return NULL;
    unsigned char mac[32];
    if (!token_mac(key, approval_id, step, decision, plan_hash, expires_ms, mac))
        return NULL;
    bt_buf b = BT_BUF_INIT(BT_APPROVALS__TOKEN_MAX);
    enum bt_err e = bt_buf_puts(&b, TOKEN_VERSION ".");
    if (e == BT_OK)
        e = b64url_put(&b, (const unsigned char *)approval_id, strlen(approval_id));
    if (e == BT_OK)
        e = bt_buf_printf(&b, ".%d.%c.%lld.", step, decision[0], (long long)expires_ms);
    if (e == BT_OK)
        e = b64url_put(&b, mac, sizeof mac);
    OPENSSL_cleanse(mac, sizeof mac);
    if (e != BT_OK) {
        bt_buf_free(&b);
        return NULL;
    }
    return bt_buf_steal(&b);
}

/* A decimal field: an optional '-' then 1..19 digits, no leading zeros
 * (so "07" and "7" are not two spellings of one token), within [min, max]. */
static bool parse_num(const char *s, size_t n, long min, long max, long *out)
{
    char buf[24];
    if (n == 0 || n >= sizeof buf)
        return false;
    memcpy(buf, s, n);
    buf[n] = '\0';
    const char *digits = buf[0] == '-' ? buf + 1 : buf;
    if (!*digits || (digits[0] == '0' && digits[1]) || (buf[0] == '-' && digits[0] == '0'))
        return false;
    for (const char *c = digits; *c; c++)
        if (*c < '0' || *c > '9')
            return false;
    return bt_parse_long(buf, min, max, out);
}

/* bt_approvals__token_parse: see approvals_int.h. */
bool bt_approvals__token_parse(const char *token, struct bt_approvals__token *t)
{
    memset(t, 0, sizeof *t);
    if (!token)
        return false;
    size_t len = strnlen(token, BT_APPROVALS__TOKEN_MAX + 1);
    if (len > BT_APPROVALS__TOKEN_MAX)
        return false;
    /* Exactly six '.'-separated fields. */
    const char *field[6];
    size_t flen[6];
    size_t nf = 0;
    const char *start = token;
    for (const char *c = token;; c++) {
        if (*c == '.' || *c == '\0') {
            if (nf == 6)
                return false;
            field[nf] = start;
            flen[nf] = (size_t)(c - start);
            nf++;
            start = c + 1;
            if (*c == '\0')
                break;
        }
    }
    if (nf != 6 || flen[0] != strlen(TOKEN_VERSION) ||
        memcmp(field[0], TOKEN_VERSION, flen[0]) != 0)
        return false;
    long idlen =
        b64url_get(field[1], flen[1], (unsigned char *)t->approval_id, sizeof t->approval_id - 1);
    if (idlen <= 0 || memchr(t->approval_id, '\0', (size_t)idlen) ||
        !bt_utf8_valid(t->approval_id, (size_t)idlen))
        return false;
    t->approval_id[idlen] = '\0';
    long step, expires;
    if (!parse_num(field[2], flen[2], -1, BT_APPROVALS__STEP_MAX, &step) ||
        !parse_num(field[4], flen[4], 0, LONG_MAX, &expires))
        return false;
    t->step = (int)step;
    t->expires_ms = expires;
    if (flen[3] != 1 || (field[3][0] != 'a' && field[3][0] != 'd'))
        return false;
    t->decision = field[3][0] == 'a' ? "approve" : "deny";
    return b64url_get(field[5], flen[5], t->mac, sizeof t->mac) == (long)sizeof t->mac;
}

/* bt_approvals__token_verify: see approvals_int.h. */
bool bt_approvals__token_verify(const unsigned char key[BT_APPROVALS__KEY_LEN],
                                const struct bt_approvals__token *t, const char *plan_hash)
{
    unsigned char mac[32];
    if (!t || !t->decision || !is_hex64(plan_hash) ||
        !token_mac(key, t->approval_id, t->step, t->decision, plan_hash, t->expires_ms, mac))
        return false;
    bool ok = CRYPTO_memcmp(mac, t->mac, sizeof mac) == 0;
    OPENSSL_cleanse(mac, sizeof mac);
    return ok;
}

/* K = HMAC-SHA256(secret, KEY_LABEL). */
static enum bt_err derive_key(const char *secret, size_t n,
                              unsigned char key[BT_APPROVALS__KEY_LEN], char *err, size_t errlen)
{
    unsigned int keylen = 0;
    if (!HMAC(EVP_sha256(), secret, (int)n, (const unsigned char *)KEY_LABEL, strlen(KEY_LABEL),
              key, &keylen) ||
        keylen != BT_APPROVALS__KEY_LEN) {
        bt_fmt(err, errlen, "approvals: cannot derive the token key (HMAC failed)");
        return BT_EINVAL;
    }
    return BT_OK;
}

/* bt_approvals__key_load: see approvals_int.h. The generated secret is 32
 * random bytes as 64 hex digits; setting_ensure keeps the first one written,
 * so two processes starting at once on a new store end up with the same. */
enum bt_err bt_approvals__key_load(bt_store *st, unsigned char key[BT_APPROVALS__KEY_LEN],
                                   char *err, size_t errlen)
{
    const char *env = getenv("BATON_SECRET");
    if (env) {
        size_t n = strlen(env);
        if (n < SECRET_MIN) {
            bt_fmt(err, errlen,
                   "approvals: BATON_SECRET is %zu bytes; it must be at least %d (or unset it to "
                   "use a key generated and kept in the store)",
                   n, SECRET_MIN);
            return BT_ECONFIG;
        }
        return derive_key(env, n, key, err, errlen);
    }
    unsigned char raw[32];
    char hex[65];
    if (RAND_bytes(raw, sizeof raw) != 1) {
        bt_fmt(err, errlen, "approvals: no randomness available for the token key");
        return BT_EIO;
    }
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof raw; i++) {
        hex[2 * i] = digits[raw[i] >> 4];
        hex[2 * i + 1] = digits[raw[i] & 15];
    }
    hex[64] = '\0';
    OPENSSL_cleanse(raw, sizeof raw);
    char *stored = NULL;
    enum bt_err e =
        bt_store_setting_ensure(st, BT_APPROVALS__SECRET_SETTING, hex, &stored, err, errlen);
    OPENSSL_cleanse(hex, sizeof hex);
    if (e != BT_OK)
        return e;
    size_t n = strlen(stored);
    if (n < SECRET_MIN) {
        bt_fmt(err, errlen, "approvals: the token secret kept in the store is damaged (%zu bytes)",
               n);
        e = BT_ECORRUPT;
    } else {
        e = derive_key(stored, n, key, err, errlen);
    }
    OPENSSL_cleanse(stored, n);
    free(stored);
    return e;
}
