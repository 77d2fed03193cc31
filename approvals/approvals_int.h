/*
 * approvals_int.h - what approvals.c and token.c share inside approvals/.
 * Never included from another folder.
 *
 * A decision token (see token.c for the why of each part):
 *
 *   bt1.<approval id, base64url>.<step>.<a|d>.<expires_ms>.<MAC, base64url>
 *
 *   MAC = HMAC-SHA256(K, "baton approval token v1" 0x00 approval_id 0x00
 *                        step 0x00 decision 0x00 plan_hash 0x00 expires_ms)
 *   K   = HMAC-SHA256(secret, "baton approval token key v1")
 *
 * step and expires_ms are decimal, decision is the word ("approve" or
 * "deny"), plan_hash the approval's requirement.plan_hash (64 hex digits).
 * The plan hash is signed but not carried: the verifier takes it from the
 * stored approval, so a token only verifies against the plan it was made for.
 */
#ifndef BT_APPROVALS_INT_H
#define BT_APPROVALS_INT_H

#include <stdbool.h>
#include <stdint.h>

#include "bot/store/store.h"

#define BT_APPROVALS__KEY_LEN 32
/* The longest token bt_approvals__token_mint makes (approvals.h promises
 * 512 bytes); longer input is refused before it is parsed. */
#define BT_APPROVALS__TOKEN_MAX 512
/* Steps of a plan are numbered 0..BT_APPROVALS__STEP_MAX. */
#define BT_APPROVALS__STEP_MAX 9999
/* Where the generated secret is kept when $BATON_SECRET is not set. */
#define BT_APPROVALS__SECRET_SETTING "approvals.token_secret"

/* A token's fields after bt_approvals__token_parse (not yet verified). */
struct bt_approvals__token {
    char approval_id[256];
    int step;             /* -1 .. BT_APPROVALS__STEP_MAX */
    const char *decision; /* "approve" | "deny" (static strings) */
    int64_t expires_ms;
    unsigned char mac[32];
};

/* The token key: derived from $BATON_SECRET (at least 32 bytes; shorter is
 * BT_ECONFIG) or from a random secret generated once and kept in the store
 * (bt_store_setting_ensure, so every process sharing the store agrees). The
 * secret never leaves this function. */
enum bt_err bt_approvals__key_load(bt_store *st, unsigned char key[BT_APPROVALS__KEY_LEN],
                                   char *err, size_t errlen);

/* A new token string (at most BT_APPROVALS__TOKEN_MAX bytes), or NULL when
 * an argument is out of range (approval id empty or over 255 bytes, step out
 * of range, decision not approve/deny, plan_hash not 64 hex digits,
 * expires_ms negative). */
char *bt_approvals__token_mint(const unsigned char key[BT_APPROVALS__KEY_LEN],
                               const char *approval_id, int step, const char *decision,
                               const char *plan_hash, int64_t expires_ms);

/* Split and decode a token without checking its MAC. False when it is not
 * exactly in the format above (strict: canonical base64url, no extra
 * fields, numbers in range), so that one changed character never parses to
 * the same fields. */
bool bt_approvals__token_parse(const char *token, struct bt_approvals__token *t);

/* True when t's MAC is the one key gives for its fields and plan_hash
 * (compared in constant time). */
bool bt_approvals__token_verify(const unsigned char key[BT_APPROVALS__KEY_LEN],
                                const struct bt_approvals__token *t, const char *plan_hash);

#endif
